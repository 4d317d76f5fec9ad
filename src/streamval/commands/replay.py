"""`streamval replay`: produce historical or generated events into Kafka, maybe with a shock."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from streamval.commands._common import Subparsers, add_command, settings_from_args
from streamval.errors import ConfigError, DataError
from streamval.stream.contract.schema import parse_timestamp
from streamval.stream.replay.markers import (
    FED_CSV,
    MARKET_SHOCKS,
    Marker,
    fed_changes,
    fed_csv_in,
)
from streamval.stream.replay.scenarios import describe_library, load_scenario, parse_shock_arg

# The data readers (pandas) and the Kafka client load when the command runs, not for --help.
if TYPE_CHECKING:
    from streamval.monitoring.server import MetricsServer
    from streamval.stream.datasets import EventTable
    from streamval.stream.replay.producer import ReplayReport

log = logging.getLogger(__name__)

DESCRIPTION = """\
Produce events into the input topic (asset-events; key = asset_id), in event-time order across
assets, from one source:

  --dataset credit              the built-in credit portfolio (5,000 customers x 24 months; the
                                paper's design, policy tightening at month 18); --customers N
                                scales it down
  --dataset sp500 --data-dir D  S&P 500 daily prices 2015-2020 (D = the sp500_2015_2020 folder)
  --long FILE                   a long table (CSV or Parquet): asset_id, ts, value, features...
  --wide FILE                   a wide price table: a date column, one price column per asset;
                                --attributes-file adds attributes (e.g. sectors.csv)

Pacing: as fast as possible (default), --rate N events/s, or --speed X (event time runs X times
faster: 86400 = one day of history per second). --from/--to select a period (inclusive).

Shocks: --scenario FILE.toml (see docs/scenarios.md) or --shock NAME[@AT] from the library, AT a
date, a step index (the month for the credit book) or a percentage of the period:
{library}

--markers publishes real events (built-in market shocks; Fed rate changes from a CSV given as
the option's value, or in a data folder given as the value (DIR/policy/fed_target_changes.csv),
or beside --data-dir) on the metrics topic when the stream reaches them. A data folder without
the CSV is not an error: the built-in market shocks are published alone, with a warning.

examples:
  streamval replay --dataset credit --customers 500 --speed 2592000
  streamval replay --dataset sp500 --data-dir ../shared/data/sp500_2015_2020 \\
      --from 2020-01-01 --to 2020-06-30 --speed 86400 --markers
  streamval replay --long events.csv --shock market-crash@2020-03-16 --rate 1000
"""


def register(sub: Subparsers) -> None:
    library = "\n".join(f"  {line}" for line in describe_library())
    parser = add_command(
        sub,
        "replay",
        help="produce historical or generated events into Kafka, optionally with a shock",
        description=DESCRIPTION.format(library=library),
    )
    source = parser.add_argument_group("source (choose one)")
    one = source.add_mutually_exclusive_group(required=True)
    one.add_argument("--dataset", choices=["credit", "sp500"], help="a built-in dataset")
    one.add_argument("--long", metavar="FILE", type=Path, help="long table (CSV or Parquet)")
    one.add_argument("--wide", metavar="FILE", type=Path, help="wide price table (CSV or Parquet)")
    source.add_argument("--data-dir", metavar="DIR", type=Path, help="folder of --dataset sp500")
    source.add_argument("--customers", type=int, metavar="N", help="--dataset credit: customers")
    source.add_argument("--seed", type=int, help="--dataset credit: generator seed")
    source.add_argument("--assets", metavar="A,B,...", help="only these assets (e.g. tickers)")
    source.add_argument("--asset-col", default="asset_id", help="--long: asset id column")
    source.add_argument("--ts-col", default="ts", help="--long: event time column")
    source.add_argument("--value-col", default="value", help="--long: value column ('' = none)")
    source.add_argument("--features", metavar="A,B,...", help="--long: feature columns")
    source.add_argument("--attributes", metavar="A,B,...", help="--long: attribute columns")
    source.add_argument("--date-col", default="Date", help="--wide: date column")
    source.add_argument(
        "--attributes-file",
        metavar="FILE",
        type=Path,
        help="--wide: one row per asset, key column first, attributes after",
    )
    source.add_argument(
        "--volume-file", metavar="FILE", type=Path, help="--wide: volumes, same shape as the prices"
    )
    pacing = parser.add_argument_group("pacing and period")
    pace = pacing.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="N", help="events per second")
    pace.add_argument("--speed", type=float, metavar="X", help="event-time speed-up factor")
    pacing.add_argument("--from", dest="start", metavar="DATE", help="first event time (inclusive)")
    pacing.add_argument("--to", dest="end", metavar="DATE", help="last event time (inclusive)")
    shocks = parser.add_argument_group("shocks and markers")
    shock = shocks.add_mutually_exclusive_group()
    shock.add_argument("--scenario", metavar="FILE", type=Path, help="scenario TOML file")
    shock.add_argument("--shock", metavar="NAME[@AT]", help="a library scenario")
    shocks.add_argument(
        "--markers",
        nargs="?",
        const="",
        metavar="FED_CSV",
        help="publish real-event markers on the metrics topic",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve replay metrics (events produced, markers) for Prometheus on monitoring.host",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=15.0,
        metavar="S",
        help="with --metrics-port: keep serving S seconds after the end for a last scrape",
    )
    parser.set_defaults(func=run)


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _day_bound(text: str, *, end: bool) -> int:
    """Epoch ms of a --from/--to value; a bare date as --to means the whole day."""
    try:
        ms = parse_timestamp(text)
    except Exception:
        raise ConfigError(
            f"--{'to' if end else 'from'}: not a date or RFC 3339 time: {text!r}"
        ) from None
    bare_day = len(text.strip()) == 10
    return ms + 86_400_000 - 1 if end and bare_day else ms


def load_source(args: argparse.Namespace) -> EventTable:
    """The table the arguments name, before period selection and shocks."""
    from streamval.stream.datasets import (
        CreditPortfolioParams,
        generate,
        load_sp500,
        read_long_table,
        read_wide_prices,
    )

    assets = _names(args.assets)
    if args.dataset == "credit":
        params = (
            CreditPortfolioParams() if args.seed is None else CreditPortfolioParams(seed=args.seed)
        )
        table = generate(params, n_customers=args.customers).table
        if assets:
            table = table.with_frame(table.frame[table.frame["asset_id"].isin(assets)])
        return table
    if args.dataset == "sp500":
        if args.data_dir is None:
            raise ConfigError("--dataset sp500 needs --data-dir (the sp500_2015_2020 folder)")
        return load_sp500(args.data_dir, tickers=assets)
    if args.long is not None:
        table = read_long_table(
            args.long,
            asset_col=args.asset_col,
            ts_col=args.ts_col,
            value_col=args.value_col or None,
            features=_names(args.features),
            attributes=_names(args.attributes),
        )
        if assets:
            table = table.with_frame(table.frame[table.frame["asset_id"].isin(assets)])
        return table
    return read_wide_prices(
        args.wide,
        date_col=args.date_col,
        assets=assets,
        attributes_path=args.attributes_file,
        volume_path=args.volume_file,
    )


def load_markers(args: argparse.Namespace) -> list[Marker]:
    """Built-in market shocks plus Fed changes from the given or a neighbouring CSV."""
    if args.markers is None:
        return []
    markers = list(MARKET_SHOCKS)
    fed: Path | None = Path(args.markers) if args.markers else None
    if fed is not None and fed.is_dir():
        folder, fed = fed, fed_csv_in(fed)
        if fed is None:
            log.warning(
                "no Fed rate changes in the data folder: built-in market shocks only",
                extra={"expected": str(folder / "policy" / FED_CSV)},
            )
    if fed is None and args.data_dir is not None:
        fed = fed_csv_in(args.data_dir.parent)
    if fed is not None:
        markers.extend(fed_changes(fed))
    return sorted(markers)


def _fmt(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def summary(report: ReplayReport, topic: str) -> str:
    """The end-of-replay summary line."""
    return (
        f"replayed {report.events} events of {report.assets} assets into {topic!r}, "
        f"{report.markers} markers, event time {_fmt(report.first_ts_ms)} .. "
        f"{_fmt(report.last_ts_ms)}, {report.seconds:.2f} s, {report.rate:,.0f} events/s"
    )


def run(args: argparse.Namespace) -> int:
    from streamval.monitoring.metrics import ReplayMetrics
    from streamval.monitoring.server import MetricsServer
    from streamval.stream.kafka.broker import resolve_bootstrap
    from streamval.stream.replay.producer import replay

    settings = settings_from_args(args)
    table = load_source(args)
    start = _day_bound(args.start, end=False) if args.start else None
    end = _day_bound(args.end, end=True) if args.end else None
    if args.scenario is not None:
        table = load_scenario(args.scenario).apply(table)
    elif args.shock:
        table = parse_shock_arg(args.shock).apply(table)
    table = table.between(start, end)
    if len(table) == 0:
        raise DataError("no events to replay in the selected period")
    settings = settings.with_bootstrap(resolve_bootstrap(settings))
    server: MetricsServer | None = None
    on_progress: Callable[[int], None] | None = None
    on_marker: Callable[[Marker], None] | None = None
    if args.metrics_port is not None:
        metrics = ReplayMetrics()
        server = MetricsServer(
            metrics.registry, settings.monitoring.host, args.metrics_port
        ).start()
        sent_so_far = [0]

        def on_progress(sent: int) -> None:
            metrics.produced(sent - sent_so_far[0])
            sent_so_far[0] = sent

        def on_marker(marker: Marker) -> None:
            metrics.marker(marker.name, marker.kind, marker.ts_ms)

    try:
        report = replay(
            settings,
            table,
            rate=args.rate,
            speed=args.speed,
            markers=load_markers(args),
            on_progress=on_progress,
            on_marker=on_marker,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
        print(summary(report, settings.topics.input))
        if server is not None and args.linger > 0:
            time.sleep(args.linger)
    finally:
        if server is not None:
            server.stop()
    return 0
