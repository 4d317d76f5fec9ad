"""`streamval backtest`: offline accuracy report of the engine against baselines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamval.commands._common import Subparsers, add_command, settings_from_args

DESCRIPTION = """\
Run the engine and the baselines offline over a data set and write a Markdown report with PNG
plots into --out. The engine is the same `Engine` the consumer runs (settings from --config,
STREAMVAL_* and --set engine.*). Methods: persistence, HC+LSTM, single LSTM, HC+linear,
KMeans+LSTM, HC+LSTM with a fixed lr, income (DCF, credit only), market (comparables), KNN
analogues and LSTM-KNN fusion (late and stacking). See docs/backtest.md.

datasets:
  credit         the paper-design credit book: the four tables (methods, clustering grid,
                 LSTM grid, month-18 shock), paper protocol (train/validation/test customers)
  sp500          the S&P 500 2015-2020 panel (needs --data-dir), streaming protocol, errors vs
                 persistence overall, per sector and around real shocks
  all            both (what `python -m benchmarks.run` does)
  PATH           a long table (asset_id, ts, value, features, attributes; CSV or Parquet), or
                 with --wide a wide price table (Date + one column per asset), streaming protocol

online mode (--online): the standard online protocol through the same Engine, any table:
  prequential (predict, then learn), one Engine.process call per event time, one step ahead,
  the first --warmup share of the steps valued but not scored and the z-units fitted on it;
  MSE, MAE, MASE against persistence, EWMA and (--season N) seasonal naive, overall, per asset
  and over the --window steps after each listed event (--events CSV); interval coverage; drift
  alarms against the listed events; run time. Writes <name>.md/.json/.png into --out.
  --dataset: sp500_2015_2020 | exchange_rate | ett_h1 | credit | all (the four; under
  --data-dir, the shared data folder, or STREAMVAL_SHARED_DATA) | PATH (long table, --wide
  prices, --channels: every column an asset, the others' previous values its features)

examples:
  streamval backtest --quick --out /tmp/report
  streamval backtest --online --dataset ett_h1 --data-dir ../shared/data --season 24 --out r/
  streamval backtest --online --dataset all --data-dir ../shared/data --max-assets 60 --out r/
  streamval backtest --dataset sp500 --data-dir ../shared/data/sp500_2015_2020 --out report/
"""


def register(sub: Subparsers) -> None:
    parser = add_command(
        sub,
        "backtest",
        help="offline accuracy report of the engine against baselines",
        description=DESCRIPTION,
    )
    parser.add_argument("--dataset", default="credit", help="credit | sp500 | all | PATH")
    parser.add_argument("--data-dir", type=Path, help="the sp500_2015_2020 folder")
    parser.add_argument("--out", type=Path, default=Path("backtest-report"), help="report folder")
    parser.add_argument("--quick", action="store_true", help="small books and grids (CI)")
    parser.add_argument("--wide", action="store_true", help="PATH is a wide price table")
    parser.add_argument("--group-attribute", default="sector", help="peer group attribute")
    parser.add_argument("--customers", type=int, help="credit book size (default 5000)")
    parser.add_argument("--max-assets", type=int, help="real panel: assets spread over sectors")
    parser.add_argument("--jobs", type=int, default=1, help="processes for the grids")
    parser.add_argument(
        "--frozen", action="store_true", help="paper protocol: no learning on the test split"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    online = parser.add_argument_group("online mode")
    online.add_argument("--online", action="store_true", help="the online (prequential) protocol")
    online.add_argument("--warmup", type=float, default=0.2, help="share of steps not scored")
    online.add_argument("--season", type=int, default=0, help="seasonal-naive period; 0 = off")
    online.add_argument("--ewma-alpha", type=float, default=0.3, help="EWMA baseline's alpha")
    online.add_argument(
        "--events", type=Path, action="append", default=[], help="CSV of dated events (repeatable)"
    )
    online.add_argument("--window", type=int, default=20, help="steps scored after each event")
    online.add_argument("--alarm-within", type=int, default=5, help="steps: an alarm is a hit")
    online.add_argument(
        "--channels", action="store_true", help="PATH: columns are assets, others' lags features"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.online:
        from streamval.commands.backtest_online import run_online_command

        return run_online_command(args)
    from streamval.backtest import BacktestConfig, run_backtest

    settings = settings_from_args(args)
    config = BacktestConfig(
        dataset=args.dataset,
        out=args.out,
        data_dir=args.data_dir,
        quick=args.quick,
        wide=args.wide,
        group_attribute=args.group_attribute,
        jobs=args.jobs,
        learn_on_test=not args.frozen,
        max_assets=args.max_assets,
        customers=args.customers,
        progress=not args.no_progress,
    )
    if "engine" in settings.model_fields_set or args.config or args.set:
        config.credit.engine = settings.engine
        config.panel.engine = settings.engine
    report = run_backtest(config)
    print(report)
    print(f"report written to {report}", file=sys.stderr)
    return 0
