#!/usr/bin/env bash
# Run a command while N processes (default 1) burn a CPU core each beside it, then stop them.
# Used to check that the e2e failure suite holds on a loaded machine:
#   scripts/cpu-burn.sh [-n N] -- COMMAND [ARGS...]
# The burners run at normal priority (a real competitor), are killed by their own PIDs when
# the command ends (or this script is interrupted), and the command's exit status is returned.
set -euo pipefail

burners=1
if [[ "${1:-}" == "-n" ]]; then
  burners="$2"
  shift 2
fi
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then
  echo "usage: $0 [-n N] -- COMMAND [ARGS...]" >&2
  exit 2
fi

pids=()
stop_burners() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop_burners EXIT INT TERM

for _ in $(seq "$burners"); do
  bash -c 'while :; do :; done' &
  pids+=("$!")
done
echo "cpu-burn: ${burners} burner(s) running (pids ${pids[*]})" >&2

status=0
"$@" || status=$?
exit "$status"
