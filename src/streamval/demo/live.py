"""The demo's live view: one row per cluster, read from the service's Prometheus registry.

The service refreshes its registry from the engine's own snapshots every
`consumer.metrics_interval_s` (the same numbers it publishes on the metrics topic) and counts
published valuations and drift alarms per cluster as it goes. Reading the registry is
thread-safe, whereas the engine itself is busy learning on the service thread; so the view never
touches the engine.

In a terminal the rows are a rich `Live` table redrawn a few times a second; elsewhere (CI logs,
pipes) `plain_table` renders the same rows as fixed-width text, printed now and then.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from rich.table import Table

__all__ = ["ClusterRow", "Progress", "cluster_rows", "plain_table", "rich_table"]


@dataclass(frozen=True)
class ClusterRow:
    """What the live table shows for one cluster."""

    cluster: str
    valued: int
    mae_rolling: float | None
    lr: float | None
    alarms: int
    assets: int | None


@dataclass(frozen=True)
class Progress:
    """Where the demo is: events replayed and valued out of the total."""

    total: int
    replayed: int
    valued: int
    metrics_url: str | None


def cluster_rows(registry: CollectorRegistry) -> list[ClusterRow]:
    """One row per cluster seen in the registry, sorted by cluster id."""
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for family in registry.collect():
        for sample in family.samples:
            cluster = sample.labels.get("cluster")
            if cluster is None:
                continue
            name = sample.name
            if name == "streamval_cluster_mae" and sample.labels.get("window") != "rolling":
                continue
            if name == "streamval_drift_alarms_total":
                # Labelled by detector too: add them up per cluster.
                values[cluster][name] = values[cluster].get(name, 0.0) + sample.value
            else:
                values[cluster][name] = sample.value
    rows = []
    for cluster in sorted(values, key=_cluster_key):
        v = values[cluster]
        rows.append(
            ClusterRow(
                cluster=cluster,
                valued=int(v.get("streamval_valuations_published_total", 0)),
                mae_rolling=v.get("streamval_cluster_mae"),
                lr=v.get("streamval_cluster_learning_rate"),
                alarms=int(v.get("streamval_drift_alarms_total", 0)),
                assets=_int_or_none(v.get("streamval_cluster_assets")),
            )
        )
    return rows


def rich_table(rows: list[ClusterRow], progress: Progress) -> Table:
    """The rich table for `Live`: a row per cluster, progress in the caption."""
    table = Table(
        title="streamval demo: valuations per cluster",
        caption=_caption(progress),
        caption_justify="left",
    )
    for header in _HEADERS:
        table.add_column(header, justify="left" if header == "cluster" else "right")
    for row in rows:
        cells = _cells(row)
        if row.alarms:
            cells[4] = f"[bold red]{cells[4]}[/]"
        table.add_row(*cells)
    return table


def plain_table(rows: list[ClusterRow], progress: Progress) -> str:
    """The same table as fixed-width text, for output that is not a terminal."""
    lines = [" ".join(f"{h:>{w}}" for h, w in zip(_HEADERS, _WIDTHS, strict=True))]
    for row in rows:
        cells = _cells(row)
        lines.append(" ".join(f"{c:>{w}}" for c, w in zip(cells, _WIDTHS, strict=True)))
    lines.append(_caption(progress))
    return "\n".join(lines)


_HEADERS = ("cluster", "events valued", "MAE (rolling)", "learning rate", "drift alarms", "assets")
_WIDTHS = (7, 13, 13, 13, 12, 6)


def _cells(row: ClusterRow) -> list[str]:
    return [
        row.cluster,
        f"{row.valued:,}",
        "-" if row.mae_rolling is None else f"{row.mae_rolling:,.1f}",
        "-" if row.lr is None else f"{row.lr:.2e}",
        str(row.alarms),
        "-" if row.assets is None else str(row.assets),
    ]


def _caption(p: Progress) -> str:
    where = f"   metrics: {p.metrics_url}/metrics" if p.metrics_url else ""
    return f"replayed {p.replayed:,}/{p.total:,}   valued {p.valued:,}/{p.total:,}{where}"


def _cluster_key(cluster: str) -> tuple[int, str]:
    return (int(cluster), "") if cluster.isdigit() else (1 << 30, cluster)


def _int_or_none(x: float | None) -> int | None:
    return None if x is None else int(x)
