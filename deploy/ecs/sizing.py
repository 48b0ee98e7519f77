#!/usr/bin/env python3
"""TaskMemory for deploy/ecs/template.yaml, from the per-processor memory budget.

CloudFormation cannot multiply, so the deploy step computes it (deploy/ecs/deploy.sh):

    budget = JavaHeapMiB + 256 (JVM overhead) + MaxLeasesPerTask x ProcessorMemoryMiB
             + 128 (supervisor)

and TaskMemory is the smallest memory size Fargate offers for TaskCpu that holds the budget.
It refuses a budget no size for TaskCpu holds, and a MinTaskCount whose tasks together may not
lease every shard (MaxLeasesPerTask caps each task: KCL maxLeasesForWorker).

usage: sizing.py PARAMS.json [-o OUT.json]   the parameters file with TaskMemory set
       sizing.py --table                     the sizing table of deploy/ecs/README.md
Stdlib only: it runs wherever the AWS CLI does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

JVM_OVERHEAD_MIB = 256
SUPERVISOR_MIB = 128
# Fargate's task sizes (Linux): memory MiB offered per TaskCpu value of the template.
FARGATE_MEMORY_MIB: dict[str, tuple[int, ...]] = {
    "512": tuple(range(1024, 4096 + 1, 1024)),
    "1024": tuple(range(2048, 8192 + 1, 1024)),
    "2048": tuple(range(4096, 16384 + 1, 1024)),
    "4096": tuple(range(8192, 30720 + 1, 1024)),
}
# The README table: (MaxLeasesPerTask, ProcessorMemoryMiB), JVM heap at the template default.
TABLE_ROWS = ((2, 256), (4, 256), (8, 256), (16, 256), (4, 512), (8, 512))
DEFAULT_HEAP_MIB = 512


class SizingError(ValueError):
    """The parameters cannot be met; the message says which and what would."""


@dataclass(frozen=True)
class Budget:
    heap_mib: int
    max_leases: int
    processor_mib: int

    @property
    def total_mib(self) -> int:
        return (self.heap_mib + JVM_OVERHEAD_MIB + self.max_leases * self.processor_mib
                + SUPERVISOR_MIB)

    def task_memory_mib(self, cpu: str) -> int:
        sizes = FARGATE_MEMORY_MIB.get(cpu)
        if sizes is None:
            raise SizingError(f"TaskCpu {cpu}: expected one of {', '.join(FARGATE_MEMORY_MIB)}")
        fitting = [m for m in sizes if m >= self.total_mib]
        if not fitting:
            cpus = [c for c in FARGATE_MEMORY_MIB if self.fits(c)]
            raise SizingError(
                f"{self.total_mib} MiB budget exceeds TaskCpu {cpu}'s largest size "
                f"({sizes[-1]} MiB): lower MaxLeasesPerTask or ProcessorMemoryMiB, or use "
                f"TaskCpu {' or '.join(cpus) or '(none fits)'}")
        return fitting[0]

    def fits(self, cpu: str) -> bool:
        return FARGATE_MEMORY_MIB[cpu][-1] >= self.total_mib


def _values(params: Sequence[dict[str, str]]) -> dict[str, str]:
    return {p["ParameterKey"]: p["ParameterValue"] for p in params}


def size_params(params: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The parameters with TaskMemory set from the budget; raises SizingError."""
    values = _values(params)
    try:
        budget = Budget(int(values.get("JavaHeapMiB", DEFAULT_HEAP_MIB)),
                        int(values.get("MaxLeasesPerTask", 8)),
                        int(values.get("ProcessorMemoryMiB", 256)))
        shards, min_tasks = int(values["ShardCount"]), int(values.get("MinTaskCount", 1))
    except (KeyError, ValueError) as exc:
        raise SizingError(f"parameters file: {exc}") from exc
    needed = math.ceil(shards / budget.max_leases)
    if min_tasks < needed:
        raise SizingError(
            f"MinTaskCount {min_tasks} x MaxLeasesPerTask {budget.max_leases} < ShardCount "
            f"{shards}: some shards would have no worker; MinTaskCount must be >= {needed}")
    memory = str(budget.task_memory_mib(values.get("TaskCpu", "1024")))
    out = [dict(p) for p in params if p["ParameterKey"] != "TaskMemory"]
    return [*out, {"ParameterKey": "TaskMemory", "ParameterValue": memory}]


def table(cpu: str = "1024") -> str:
    """The README's sizing table (markdown)."""
    lines = [f"| shards per task (`MaxLeasesPerTask`) | `ProcessorMemoryMiB` | budget MiB "
             f"| `TaskMemory` at `TaskCpu` {cpu} | `TaskCpu` values that fit |",
             "| --- | --- | --- | --- | --- |"]
    for leases, processor in TABLE_ROWS:
        budget = Budget(DEFAULT_HEAP_MIB, leases, processor)
        fits = ", ".join(c for c in FARGATE_MEMORY_MIB if budget.fits(c))
        lines.append(f"| {leases} | {processor} | {budget.total_mib} "
                     f"| {budget.task_memory_mib(cpu)} | {fits} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="?", help="CloudFormation parameters file (JSON)")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--table", action="store_true", help="print the README table")
    args = parser.parse_args(argv)
    if args.table:
        sys.stdout.write(table() + "\n")
        return 0
    if not args.params:
        parser.error("a parameters file, or --table")
    try:
        with open(args.params) as f:
            params: Any = json.load(f)
        sized = size_params(params)
    except (OSError, json.JSONDecodeError, SizingError) as exc:
        sys.stderr.write(f"sizing: {exc}\n")
        return 2
    text = "[\n" + ",\n".join("  " + json.dumps(p) for p in sized) + "\n]\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    values = _values(sized)
    sys.stderr.write(f"sizing: TaskMemory {values['TaskMemory']} MiB for "
                     f"{values.get('MaxLeasesPerTask', 8)} leases x "
                     f"{values.get('ProcessorMemoryMiB', 256)} MiB at TaskCpu "
                     f"{values.get('TaskCpu', '1024')}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
