"""Regenerate the accuracy report in docs/results/: `python -m benchmarks.run [--quick]`.

Full: the credit book's four tables (5,000 customers, full grids on a 1,000-customer grid book)
and the S&P 500 panel (60 stocks spread over the sectors, 2015-2020), about 20 minutes on two
cores. Quick (`--quick`, for CI): small books, grid subsets and 12 stocks, a few minutes. The
data directory is `../shared/data/sp500_2015_2020` beside the clone unless STREAMVAL_SHARED_DATA
names the `data` folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from streamval.backtest import BacktestConfig, run_backtest

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the grids")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    shared = Path(os.environ.get("STREAMVAL_SHARED_DATA", REPO.parent / "shared" / "data"))
    t0 = time.perf_counter()
    report = run_backtest(
        BacktestConfig(
            dataset="all",
            out=args.out,
            data_dir=shared / "sp500_2015_2020",
            quick=args.quick,
            jobs=args.jobs,
            progress=not args.no_progress,
        )
    )
    print(f"{report} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
