"""Run every benchmark (or the ones named), then regenerate BENCHMARKS.md.

    python bench/run_all.py                 # all
    python bench/run_all.py speedup restart # some
    python bench/run_all.py --quick         # fewer samples, smaller scale
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ALL = ["speedup", "dispatch", "restart", "idle", "claude_overhead", "scale", "flow"]
QUICK = {"dispatch": ["--tasks", "300", "--roundtrips", "500"], "restart": ["--samples", "5"],
         "idle": ["--window", "3"], "claude_overhead": ["--runs", "3"],
         "scale": ["--children", "32", "--queue", "20000", "--drain", "2000"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=" ".join(ALL))
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    unknown = set(a.names) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {ALL}")
    failed = []
    for name in a.names or ALL:
        print(f"\n=== bench/{name}.py ===", flush=True)
        extra = QUICK.get(name, []) if a.quick else []
        if subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *extra], check=False).returncode != 0:
            failed.append(name)
    subprocess.run([sys.executable, str(BENCH / "report.py")], check=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
