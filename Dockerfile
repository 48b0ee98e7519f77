# syntax=docker/dockerfile:1
#
# AetherStream consumer image: Python 3.11 supervisor + KCL 3.5.3 MultiLangDaemon (Java 21).
#
# Base images are pinned by tag here. The release pipeline must pin them by digest
# (FROM image:tag@sha256:...) when it cuts an image, so a rebuild cannot change them silently.
#
# Run it read-only; the only writable paths are /tmp and the metrics directory:
#   docker run --read-only \
#     --tmpfs /tmp:rw,noexec,nosuid,size=64m \
#     --tmpfs /run/aetherstream:rw,noexec,nosuid,size=64m,uid=10001,gid=10001 \
#     -p 9400:9400 IMAGE
# /run/aetherstream/metrics is PROMETHEUS_MULTIPROC_DIR (one mmap file per shard process);
# /tmp holds the rendered KCL .properties and the JVM's hsperfdata. ECS mounts task volumes
# on both paths (deploy/ecs/template.yaml).

ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# ---------------------------------------------------------------------------------------------
# Stage 1: the KCL multilang jars, resolved by Maven with checksum verification, then compared
# with the sha256 list committed in docker/kcl/jars.sha256.
FROM maven:3.9.11-eclipse-temurin-21 AS kcl-resolve
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /kcl
COPY docker/kcl/pom.xml pom.xml
# --strict-checksums fails the build on any checksum mismatch instead of warning.
# The count check catches a silently partial copy (86 = dependencies in pom.xml).
WORKDIR /kcl/target/jars
RUN mvn --batch-mode --no-transfer-progress --strict-checksums -f /kcl/pom.xml \
        dependency:copy-dependencies \
    && test "$(find . -name '*.jar' | wc -l)" -eq 86 \
    && { echo "# sha256 of the KCL jars docker/kcl/pom.xml resolves; see docker/kcl/README.md"; \
         sha256sum -- *.jar; } > /kcl/jars.sha256

# Refresh the committed list (after a pom change, on a machine that reaches Maven Central):
#   docker build --target kcl-jars-sha256 --output type=local,dest=docker/kcl .
FROM scratch AS kcl-jars-sha256
COPY --from=kcl-resolve /kcl/jars.sha256 /jars.sha256

# Maven's checksums guard the download; this list guards the jars themselves: a changed or
# re-published jar, or a pom edit without a reviewed list, fails here. Every jar must be
# listed, and every listed jar must be there with that hash.
FROM kcl-resolve AS kcl-jars
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY docker/kcl/jars.sha256 /kcl/expected.sha256
RUN { grep -Ev '^(#|$)' /kcl/expected.sha256 || true; } > /tmp/expected.sha256 \
    && listed=$(wc -l < /tmp/expected.sha256) \
    && { [ "$listed" -eq "$(find . -name '*.jar' | wc -l)" ] \
         || { echo "docker/kcl/jars.sha256 lists $listed jars, Maven resolved" \
                   "$(find . -name '*.jar' | wc -l): refresh it (docker/kcl/README.md)" >&2; \
              exit 1; }; } \
    && sha256sum --strict --quiet -c /tmp/expected.sha256

# ---------------------------------------------------------------------------------------------
# Stage 2: a virtualenv with amazon-kclpy (holding the jars) and the consumer package.
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# Every Python dependency, and the build tools, from the hashed lock (make lock). --no-deps:
# pip installs exactly these files and resolves nothing; the builds below use
# --no-build-isolation --no-index, so no unhashed build backend is ever fetched.
COPY requirements.lock /build/requirements.lock
RUN pip install --require-hashes --no-deps -r /build/requirements.lock

# The official amazon-kclpy sdist, pinned by sha256. Its setup.py downloads every jar in its
# pom.xml unless amazon_kclpy/jars/ already holds it, so copying the Maven-verified jars in
# first makes the install offline and keeps the jar versions ours (scripts/install-kclpy.sh
# does the same for the 2.x dev install).
ARG KCLPY_VERSION=3.2.0
ARG KCLPY_SHA256=62e81cc84714c920fe6aa5d61837b298fe7e01f6326dcb564b12ab8e6c4aca4e
RUN pip download --no-deps --no-binary=:all: "amazon-kclpy==${KCLPY_VERSION}" -d /build/dl \
    && echo "${KCLPY_SHA256}  /build/dl/amazon_kclpy-${KCLPY_VERSION}.tar.gz" | sha256sum -c - \
    && tar -xzf "/build/dl/amazon_kclpy-${KCLPY_VERSION}.tar.gz" -C /build \
    && mv "/build/amazon_kclpy-${KCLPY_VERSION}" /build/kclpy
COPY --from=kcl-jars /kcl/target/jars/ /build/kclpy/amazon_kclpy/jars/
RUN pip install --no-deps --no-build-isolation --no-index /build/kclpy \
    && python -c "import amazon_kclpy, pathlib, sys; \
d = pathlib.Path(amazon_kclpy.__file__).parent / 'jars'; \
n = len(list(d.glob('*.jar'))); \
sys.exit(0 if n == 86 else f'expected 86 KCL jars, found {n}')"

COPY pyproject.toml /build/app/pyproject.toml
COPY consumer /build/app/consumer
# unchecked-hash: the .pyc stay valid whatever mtimes the COPY into the runtime stage gives
# the sources; the read-only runtime could not rewrite stale ones.
# The build tools leave the venv before it is copied; pip check then proves the --no-deps
# installs complete (every requirement of every installed distribution is there).
RUN pip install --no-deps --no-build-isolation --no-index /build/app \
    && pip uninstall --yes pytest-runner setuptools \
    && pip check \
    && python -m compileall -q --invalidation-mode unchecked-hash /opt/venv

# ---------------------------------------------------------------------------------------------
# Stage 3: runtime. Python 3.11 + a headless JRE 21 + tini, running as an unprivileged user.
FROM ${PYTHON_IMAGE} AS runtime

# DL3008 (unpinned apt versions) is ignored on purpose: Debian stable removes superseded
# versions from its mirror on every security update, so an exact pin breaks the build within
# weeks. The base image tag (and the release digest pin) fixes the distribution release;
# within it we want the security updates.
# The man1 directory: openjdk's postinst registers man pages and fails where slim images
# have removed the directory.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-21-jre-headless tini \
    && rm -rf /var/lib/apt/lists/* \
    && java -version

RUN groupadd --system --gid 10001 aether \
    && useradd --system --uid 10001 --gid aether --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin aether \
    && install -d -o aether -g aether -m 0750 /run/aetherstream /run/aetherstream/metrics
# Declared volumes: ECS (Fargate bind mounts) copies these directories' contents and
# ownership into the task's scratch volumes, so uid 10001 can write there under a read-only
# root; a plain `docker run --read-only` gets writable anonymous volumes the same way.
VOLUME ["/tmp", "/run/aetherstream"]

COPY --from=build /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only; bytecode was compiled at build.
# The JVM's heap is set by the supervisor (kcl.java_heap_mb); its temp files go to /tmp.
# METRICS_HOST 0.0.0.0: the scraper is on another host. Who reaches the port is the network's
# call (on ECS the stack's security group) plus, optionally, metrics.bearer_token/basic_auth.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    PROMETHEUS_MULTIPROC_DIR=/run/aetherstream/metrics \
    AETHERSTREAM_METRICS_MULTIPROC_DIR=/run/aetherstream/metrics \
    AETHERSTREAM_RUN_DIR=/tmp/aetherstream \
    AETHERSTREAM_METRICS_HOST=0.0.0.0 \
    AETHERSTREAM_METRICS_PORT=9400

USER 10001:10001
WORKDIR /tmp
EXPOSE 9400

# Python's urllib, not curl: one binary less in the image. Non-2xx raises, so exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=4)"]

# tini reaps the zombies the KCL daemon's children leave and forwards SIGTERM to the
# supervisor only. Not `tini -g`: the supervisor itself signals the java process (not its
# group), so each shard processor gets shutdown_requested and can flush and checkpoint.
ENTRYPOINT ["/usr/bin/tini", "--", "aetherstream"]
CMD ["run"]
