"""How the expression library was chosen: one derive, temp_c = (temp_f - 32) * 5 / 9, over
100,000 dict records, once per library (one run, so read it as ratios; the machine is shared).

Not part of the product: it imports libraries the project does not depend on. Run it in a
throwaway venv:
    python -m venv /tmp/x && /tmp/x/bin/pip install simpleeval==1.0.8 cel-python==0.5.0 \
        common-expression-language==0.10.0 jmespath==1.1.0
    /tmp/x/bin/python examples/transform/expr_bench.py
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Any

N = 100_000
random.seed(1)
RECORDS = [{"device_id": f"d{i % 100}", "metric": "temp", "temp_f": random.uniform(-20, 120),
            "ts": 1_700_000_000_000 + i, "site": "s1", "fw": "1.2.3", "n": i} for i in range(N)]


def run(name: str, fn: Callable[[], list[Any]], n: int = N) -> None:
    start = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - start
    sys.stdout.write(f"{name:48s} {dt * 1e3:8.1f} ms {n / dt:10.0f} records/s  "
                     f"out[7]={float(out[7]):.4f}\n")


def main() -> None:
    run("python lambda (no sandbox; the floor)",
        lambda: [(r["temp_f"] - 32) * 5 / 9 for r in RECORDS])

    from simpleeval import SimpleEval  # type: ignore[import-not-found]

    ev = SimpleEval()
    tree = ev.parse("(temp_f - 32) * 5 / 9")

    def simpleeval_run() -> list[Any]:
        out = []
        for r in RECORDS:
            ev.names = r
            out.append(ev.eval("", previously_parsed=tree))
        return out

    run("simpleeval 1.0.8, parsed once", simpleeval_run)

    import cel  # type: ignore[import-not-found]

    prog = cel.compile("(temp_f - 32.0) * 5.0 / 9.0")
    run("common-expression-language 0.10.0, whole record",
        lambda: [prog.execute(r) for r in RECORDS])
    names = prog.variables()
    run("common-expression-language 0.10.0, used fields",
        lambda: [prog.execute({k: r[k] for k in names}) for r in RECORDS])

    import celpy  # type: ignore[import-not-found]

    env = celpy.Environment()
    cprog = env.program(env.compile("(temp_f - 32.0) * 5.0 / 9.0"))
    run("cel-python 0.5.0 (pure Python), used fields",
        lambda: [cprog.evaluate({"temp_f": celpy.celtypes.DoubleType(r["temp_f"])})
                 for r in RECORDS])

    import jmespath  # type: ignore[import-not-found]

    try:
        jmespath.compile("(temp_f - `32`) * `5`")
    except jmespath.exceptions.ParseError as exc:
        sys.stdout.write(f"jmespath 1.1.0: no arithmetic in the JMESPath spec: "
                         f"{type(exc).__name__}\n")


if __name__ == "__main__":
    main()
