"""The test suite's runtime as CI runs it: fresh session fixtures, wall and CPU seconds, slowest tests.

    python benchmarks/suite_runtime.py [--workers 2] [--out benchmarks/results/suite_runtime.json]

Runs `python -m pytest -q -n WORKERS --dist loadfile tests` (`--workers 0`: one process, no xdist) from the
repository root with LINEUP_TEST_CACHE unset, so the world, base and stage-1 adapter are built as on a fresh
clone. CPU seconds are user + system of pytest and everything it started; on a shared machine compare those,
wall time depends on the other jobs (the load average before and after is recorded). Prints a table and
writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (0: one process)")
    ap.add_argument("--tests", nargs="+", default=["tests"], help="test paths (default: the whole suite)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "suite_runtime.json")
    args = ap.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if k != "LINEUP_TEST_CACHE"}
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    parallel = ["-n", str(args.workers), "--dist", "loadfile"] if args.workers else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", *parallel, *args.tests, "--durations=15", "-p", "no:cacheprovider"]
    load_before = os.getloadavg()
    start, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall, cpu1 = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout + proc.stderr
    summary = next((line.strip("= ") for line in reversed(out.splitlines()) if " passed" in line), "no summary")
    slowest = [{"seconds": float(m[1]), "phase": m[2], "test": m[3]}
               for m in re.finditer(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)", out, re.MULTILINE)]
    result = {"command": " ".join(["python", "-m", "pytest", *cmd[3:]]), "returncode": proc.returncode,
              "summary": summary,
              "failed": [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))], "wall_s": round(wall, 1),
              "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
              "cores": os.cpu_count(), "omp_num_threads": env["OMP_NUM_THREADS"],
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "slowest": slowest}
    table = Table(title=f"test suite: {summary}")
    for col in ("wall s", "CPU s", "cores", "load before → after"):
        table.add_column(col, justify="right")
    table.add_row(f"{result['wall_s']:.0f}", f"{result['cpu_s']:.0f}", str(result["cores"]),
                  f"{load_before[0]:.1f} → {result['load_average_after'][0]:.1f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
