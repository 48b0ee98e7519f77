#!/usr/bin/env bash
# Deploys deploy/ecs/template.yaml with TaskMemory computed from the memory budget.
#
# CloudFormation cannot multiply, so sizing.py sets TaskMemory in a copy of the parameters
# file (JavaHeapMiB + 256 + MaxLeasesPerTask x ProcessorMemoryMiB + 128, rounded up to a
# Fargate size for TaskCpu) and stops on a budget or MinTaskCount that cannot work.
#
# usage: deploy/ecs/deploy.sh STACK_NAME PARAMS.json [extra `aws cloudformation deploy` args]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
stack=${1:?usage: deploy.sh STACK_NAME PARAMS.json}
params=${2:?usage: deploy.sh STACK_NAME PARAMS.json}
shift 2
sized=$(mktemp)
trap 'rm -f "$sized"' EXIT
python3 "$here/sizing.py" "$params" -o "$sized"
aws cloudformation deploy --stack-name "$stack" \
  --template-file "$here/template.yaml" \
  --parameter-overrides "file://$sized" \
  --capabilities CAPABILITY_IAM "$@"
