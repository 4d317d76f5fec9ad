"""Synthetic event streams shared by the integration tests."""

from __future__ import annotations

import pandas as pd

from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import Group, grouped_panel

# Daily log-return volatility per group; group A's assets trend up 4% a day from `shift_step`.
GROUPS = (
    Group(vol=0.003, prefix="A", attributes={"group": "A"}),
    Group(vol=0.01, prefix="B", attributes={"group": "B"}),
    Group(vol=0.02, prefix="C", attributes={"group": "C"}),
)


def regime_change(
    steps: int, *, t0_ms: int, shift_step: int, assets_per_group: int = 6, seed: int = 0
) -> list[AssetEvent]:
    """Three groups of assets with different volatility; from `shift_step` group A trends up
    4% a day (a regime change the drift detector of A's cluster must see)."""
    return grouped_panel(
        GROUPS,
        assets_per_group,
        steps,
        seed=seed,
        t0_ms=t0_ms,
        shuffle=False,
        shift_group=0,
        shift_at=shift_step,
        shift=0.04,
    ).events


def to_long_table(events: list[AssetEvent]) -> pd.DataFrame:
    """The events as a long table (asset_id, ts, value, features, attributes)."""
    return pd.DataFrame(
        [
            {"asset_id": e.asset_id, "ts": e.ts_ms, "value": e.value, **e.features, **e.attributes}
            for e in events
        ]
    )
