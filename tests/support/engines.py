"""A stand-in engine whose state is data, for testing the service's checkpoint and failure paths.

`DataEngine` values each event at its asset's last value (persistence) behind the same
`OrderGuard` as the real engine, so late and duplicate events, and whether a restored state
matches the offsets it was checkpointed with, show in its outputs. Its `state_dict()` is a
contract state tree (contracts.md section 1). It can be told to fail: `fail_assets` makes the
events of those assets come back in `BatchResult.failed`, `crash_assets` makes `process` raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamval.errors import CheckpointError
from streamval.stream.contract.ordering import Order, OrderGuard
from streamval.stream.contract.outputs import BatchResult, ClusterSnapshot, ErrorStats, Valuation
from streamval.stream.contract.schema import AssetEvent


@dataclass
class Result(BatchResult):
    """`BatchResult` with `failed` (contracts.md section 2), until the engine branch adds it."""

    failed: list[tuple[int, str]] = field(default_factory=list)


class DataEngine:
    """Persistence valuation with a data-only state; see the module docstring."""

    def __init__(
        self, *, fail_assets: Sequence[str] = (), crash_assets: Sequence[str] = ()
    ) -> None:
        self.fail_assets = set(fail_assets)
        self.crash_assets = set(crash_assets)
        self.guard = OrderGuard()
        self.last: dict[str, float] = {}
        self.events = 0
        self.expired_assets = 0
        self.closed = False

    def process(self, events: Sequence[AssetEvent]) -> BatchResult:
        if any(e.asset_id in self.crash_assets for e in events):
            raise RuntimeError("commit phase failed")
        result = Result()
        failed = result.failed
        for index, event in enumerate(events):
            if event.asset_id in self.fail_assets:
                failed.append((index, f"OverflowError: asset {event.asset_id}"))
                continue
            order = self.guard.observe(event.asset_id, event.ts_ms)
            if order is Order.DUPLICATE:
                result.duplicates.append(index)
                continue
            if order is Order.LATE:
                result.late.append(index)
                continue
            last_value = self.last.get(event.asset_id)
            result.valuations.append(
                Valuation(
                    asset_id=event.asset_id,
                    ts_ms=event.ts_ms,
                    valuation=0.0 if last_value is None else last_value,
                    cluster=0,
                    model_version=self.events,
                    warming=last_value is None,
                    adapting=False,
                    lr=0.0,
                    value=event.value,
                )
            )
            if event.value is not None:
                self.last[event.asset_id] = event.value
            self.events += 1
        return result

    def snapshot(self) -> list[ClusterSnapshot]:
        none = ErrorStats(0, None, None, None)
        return [ClusterSnapshot(0, 0, len(self.last), none, none, 0, 0.0, 0, self.events)]

    def state_dict(self) -> dict[str, Any]:
        ids = sorted(self.last)
        return {
            "version": 1,
            "guard": self.guard.state_dict(),
            "ids": ids,
            "last": np.array([self.last[a] for a in ids], dtype=np.float64),
            "events": self.events,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise CheckpointError(f"DataEngine state version {state.get('version')!r}")
        self.guard.load_state_dict(state["guard"])
        self.last = dict(zip(state["ids"], np.asarray(state["last"]).tolist(), strict=True))
        self.events = int(state["events"])

    def close(self) -> None:
        self.closed = True
