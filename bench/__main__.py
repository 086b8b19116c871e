"""Run every ``bench/bench_*.py`` (or those named on the command line) and print figures.

Usage: ``python -m bench [NAME ...]`` where NAME is e.g. ``codec`` for ``bench_codec``;
``python -m bench NAME --option ...`` hands the options to that one benchmark (e.g.
``python -m bench soak --turns 1000 --faults 120``). Each module has a ``main()`` that
prints its own lines (taking ``argv`` when it has options).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    if len(argv) > 1 and argv[1].startswith("-"):
        print(f"== {argv[0]}", flush=True)
        importlib.import_module(f"bench.bench_{argv[0]}").main(argv[1:])
        return 0
    names = argv or sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))
    failed = 0
    for name in names:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"bench.bench_{name}").main()
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            failed += 1
            print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
