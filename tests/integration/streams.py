"""Synthetic event streams shared by the integration tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from streamval.stream.schema import AssetEvent

DAY_MS = 86_400_000
GROUPS = {"A": 0.003, "B": 0.01, "C": 0.02}  # daily log-return volatility per group


def regime_change(
    steps: int, *, t0_ms: int, shift_step: int, assets_per_group: int = 6, seed: int = 0
) -> list[AssetEvent]:
    """Three groups of assets with different volatility; from `shift_step` group A trends up
    4% a day (a regime change the drift detector of A's cluster must see)."""
    rng = np.random.default_rng(seed)
    values = {f"{g}{i}": 50.0 * (i + 1) for g in GROUPS for i in range(assets_per_group)}
    out = []
    for step in range(steps):
        for asset, value in values.items():
            g = asset[0]
            trend = 0.04 if g == "A" and step >= shift_step else 0.0
            values[asset] = new = value * float(np.exp(trend + rng.normal(0.0, GROUPS[g])))
            out.append(
                AssetEvent(
                    asset,
                    t0_ms + step * DAY_MS,
                    new,
                    {"x": float(rng.normal())},
                    {"group": g},
                )
            )
    return out


def to_long_table(events: list[AssetEvent]) -> pd.DataFrame:
    """The events as a long table (asset_id, ts, value, features, attributes)."""
    return pd.DataFrame(
        [
            {"asset_id": e.asset_id, "ts": e.ts_ms, "value": e.value, **e.features, **e.attributes}
            for e in events
        ]
    )
