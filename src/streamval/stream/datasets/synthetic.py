"""Synthetic panels of assets in groups with known dynamics: the streams tests and benchmarks use.

Each `Group` sets the daily log return of its assets (drift, volatility, mean reversion toward
the starting level), the mean of a `volume` feature and static attributes. Levels start between
5 and 3,000, so a model must be scale-free to pool them. A `shift` added to one group's log
return from step `shift_at` on is a regime change (a crash, a tightening) in that group only.

>>> panel = grouped_panel(THREE_GROUPS, n_per_group=2, steps=3)
>>> len(panel.events), sorted(set(panel.truth.values()))
(18, [0, 1, 2])
>>> [len(step) for step in panel.steps()]
[6, 6, 6]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamval.stream.contract.schema import AssetEvent, Attribute

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Group:
    """One group of a synthetic panel."""

    vol: float  # standard deviation of the daily log return
    drift: float = 0.0  # mean daily log return
    reversion: float = 0.0  # share of the log deviation from the start that reverts each step
    volume: float = 1.0  # mean of the `volume` feature (standard deviation 0.2)
    attributes: Mapping[str, Attribute] = field(default_factory=dict)
    prefix: str | None = None  # asset ids are `{prefix}{i}`; default `g{index of the group}-`


# Quiet random walk; trending and volatile; mean-reverting. Sector and tier identify the group.
THREE_GROUPS = (
    Group(vol=0.004, volume=1.0, attributes={"sector": "bank", "tier": 0.0}),
    Group(vol=0.02, drift=0.003, volume=2.0, attributes={"sector": "tech", "tier": 1.0}),
    Group(vol=0.01, reversion=0.5, volume=3.0, attributes={"sector": "energy", "tier": 2.0}),
)


@dataclass(frozen=True)
class Panel:
    """The events of a synthetic panel in step order, and each asset's true group."""

    events: list[AssetEvent]
    truth: dict[str, int]
    n_steps: int

    def steps(self) -> Iterator[list[AssetEvent]]:
        """The events one step (event time) at a time."""
        per_step = len(self.events) // self.n_steps if self.n_steps else 0
        for i in range(self.n_steps):
            yield self.events[i * per_step : (i + 1) * per_step]


def grouped_panel(
    groups: Sequence[Group],
    n_per_group: int,
    steps: int,
    *,
    seed: int = 0,
    t0_ms: int = DAY_MS,
    step_ms: int = DAY_MS,
    attributes: bool = True,
    attribute_noise: float = 0.0,
    shuffle: bool = True,
    shift_group: int | None = None,
    shift_at: int = 0,
    shift: float = 0.0,
) -> Panel:
    """Every asset once per step, `steps` steps from `t0_ms`; see the module docstring.

    `attribute_noise` adds N(0, noise) to numeric attributes on every event; `shuffle` orders
    each step's events at random (else by asset).
    """
    rng = np.random.default_rng(seed)
    ids = [
        f"{group.prefix or f'g{g}-'}{i}"
        for g, group in enumerate(groups)
        for i in range(n_per_group)
    ]
    group_of = np.repeat(np.arange(len(groups)), n_per_group)
    logv = np.log(rng.uniform(5, 3000, len(ids)))
    start = logv.copy()
    events: list[AssetEvent] = []
    for t in range(steps):
        r = np.zeros(len(ids))
        for g, group in enumerate(groups):  # one draw per group, in group order
            shocks = rng.normal(group.drift, group.vol, len(ids))
            r = np.where(group_of == g, -group.reversion * (logv - start) + shocks, r)
        if shift_group is not None and t >= shift_at:
            r = r + np.where(group_of == shift_group, shift, 0.0)
        logv = logv + r
        order = rng.permutation(len(ids)) if shuffle else range(len(ids))
        for k in order:
            group = groups[group_of[k]]
            attrs: dict[str, Attribute] = {}
            if attributes:
                for name, value in group.attributes.items():
                    noisy = isinstance(value, float) and attribute_noise > 0
                    attrs[name] = value + float(rng.normal(0, attribute_noise)) if noisy else value
            volume = float(rng.normal(group.volume, 0.2))
            events.append(
                AssetEvent(
                    ids[k], t0_ms + t * step_ms, float(np.exp(logv[k])), {"volume": volume}, attrs
                )
            )
    return Panel(events, dict(zip(ids, group_of.tolist(), strict=True)), steps)
