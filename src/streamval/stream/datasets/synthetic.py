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
    volume: float = 1.0  # mean of the dynamic feature (`volume` unless the panel names another)
    attributes: Mapping[str, Attribute] = field(default_factory=dict)
    prefix: str | None = None  # asset ids are `{prefix}{i}`; default `g{index of the group}-`
    feature_sd: float = 0.2  # standard deviation of the dynamic feature around its mean


# Quiet random walk; trending and volatile; mean-reverting. Sector and tier identify the group.
THREE_GROUPS = (
    Group(vol=0.004, volume=1.0, attributes={"sector": "bank", "tier": 0.0}),
    Group(vol=0.02, drift=0.003, volume=2.0, attributes={"sector": "tech", "tier": 1.0}),
    Group(vol=0.01, reversion=0.5, volume=3.0, attributes={"sector": "energy", "tier": 2.0}),
)


# Harder: groups that differ in a categorical segment, the level of a noisy `score` feature,
# volatility 1% / 2% / 5% a day and dynamics (drift up, mean reversion, drift down), with levels
# 5..3,000 and a score spread as wide as the gaps between its levels (clustering tests; use
# `feature="score"`).
HARD_THREE_GROUPS = (
    Group(vol=0.01, drift=0.002, volume=0.0, feature_sd=1.0, attributes={"segment": "retail"}),
    Group(vol=0.02, reversion=0.3, volume=1.0, feature_sd=1.0, attributes={"segment": "sme"}),
    Group(vol=0.05, drift=-0.004, volume=2.0, feature_sd=1.0, attributes={"segment": "corp"}),
)


@dataclass(frozen=True)
class Panel:
    """The events of a synthetic panel in step order, and each asset's true group."""

    events: list[AssetEvent]
    truth: dict[str, int]
    n_steps: int

    def steps(self) -> Iterator[list[AssetEvent]]:
        """The events one step (event time) at a time (steps without events are skipped)."""
        start = 0
        for i in range(1, len(self.events) + 1):
            if i == len(self.events) or self.events[i].ts_ms != self.events[start].ts_ms:
                yield self.events[start:i]
                start = i


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
    feature: str = "volume",
    late_share: float = 0.0,
    late_from: int = 0,
    noise_attributes: int = 0,
) -> Panel:
    """Every asset once per step, `steps` steps from `t0_ms`; see the module docstring.

    `attribute_noise` adds N(0, noise) to numeric attributes on every event; `shuffle` orders
    each step's events at random (else by asset); `feature` names the dynamic feature. A share
    `late_share` of each group's assets (its last ones) first appears at step `late_from`.
    `noise_attributes` adds that many static numeric attributes `noise{j}` ~ N(0, 1) per asset,
    unrelated to the groups.
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
    n_late = round(late_share * n_per_group)
    first_step = np.where(np.arange(len(ids)) % n_per_group >= n_per_group - n_late, late_from, 0)
    noise = rng.normal(0.0, 1.0, (len(ids), noise_attributes))
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
            if t < first_step[k]:
                continue
            group = groups[group_of[k]]
            attrs: dict[str, Attribute] = {f"noise{j}": float(x) for j, x in enumerate(noise[k])}
            if attributes:
                for name, value in group.attributes.items():
                    noisy = isinstance(value, float) and attribute_noise > 0
                    attrs[name] = value + float(rng.normal(0, attribute_noise)) if noisy else value
            x = float(rng.normal(group.volume, group.feature_sd))
            events.append(
                AssetEvent(ids[k], t0_ms + t * step_ms, float(np.exp(logv[k])), {feature: x}, attrs)
            )
    return Panel(events, dict(zip(ids, group_of.tolist(), strict=True)), steps)
