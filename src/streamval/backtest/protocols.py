"""The two backtest protocols. Both only call `Valuer.process`, exactly as the consumer does.

Streaming (prequential): the event stream in event-time order, cut into batches of
`batch_size` events; every event is valued before its value is revealed to the method, which
then learns from it (`Engine.process` semantics). Nothing else.

Paper: the customers of the train split are streamed through the method (that is its
training: one prequential pass, learning from every labelled event), then the validation
customers (learning continues; the LSTM-KNN fusion collects the outcomes that choose its
weights here), then the test customers, which are scored. On the test split learning either
continues (default: what runs online, each test event is still valued before its value is
used) or is frozen (`learn_on_test=False`: the method values the test events without learning
from them). Each split is streamed in event-time order; splits are disjoint sets of assets, so
the engine's per-asset order guard accepts every event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from tqdm import tqdm

from streamval.backtest.fusion import LSTMKNNFusion
from streamval.models.baselines import Valuer
from streamval.stream.contract.outputs import Valuation
from streamval.stream.contract.schema import AssetEvent

# Report names of the fusion's components (one run of the fusion values all four).
FUSION_OUTPUTS = {
    "lstm": "HC+LSTM",
    "knn": "KNN analogues",
    "late": "LSTM-KNN late fusion",
    "stack": "LSTM-KNN stacking",
}


@dataclass
class Run:
    """What one method (or one fusion run's components) produced over a protocol.

    `frames[name]` has one row per valuation: phase, asset_id, ts, value, valuation, warming,
    cluster, lr, adapting, pos (position in its phase's stream). `alarms` has one row per drift
    alarm: phase, ts, cluster, pos (stream position at the end of the batch that raised it).
    `seconds[phase]` is the wall time of each phase.
    """

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    alarms: pd.DataFrame = field(default_factory=pd.DataFrame)
    seconds: dict[str, float] = field(default_factory=dict)


def _outputs(valuer: Valuer, valuations: list[Valuation]) -> dict[str, list[Valuation]]:
    if isinstance(valuer, LSTMKNNFusion):
        return {FUSION_OUTPUTS[k]: v for k, v in valuer.components.items()}
    return {valuer.name: valuations}


def stream(
    valuer: Valuer,
    events: Sequence[AssetEvent],
    *,
    phase: str,
    batch_size: int = 64,
    learn: bool = True,
    progress: bool = True,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, float]:
    """Prequential pass of `valuer` over `events` in batches; the valuations, alarms and seconds."""
    rows: dict[str, list[tuple[object, ...]]] = {}
    alarms: list[tuple[object, ...]] = []
    t0 = time.perf_counter()
    bar = tqdm(
        total=len(events),
        desc=f"{valuer.name} [{phase}]",
        unit="ev",
        disable=not progress,
        leave=False,
        mininterval=2.0,
    )
    position = 0
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        result = valuer.process(batch, learn=learn)
        for name, valuations in _outputs(valuer, result.valuations).items():
            out = rows.setdefault(name, [])
            for i, v in enumerate(valuations):
                out.append(
                    (
                        phase,
                        v.asset_id,
                        v.ts_ms,
                        v.value,
                        v.valuation,
                        v.warming,
                        v.cluster,
                        v.lr,
                        v.adapting,
                        position + i,
                    )
                )
        position += len(result.valuations)
        for alarm in result.drift:
            alarms.append((phase, alarm.ts_ms, alarm.cluster, position))
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - t0
    columns = [
        "phase",
        "asset_id",
        "ts",
        "value",
        "valuation",
        "warming",
        "cluster",
        "lr",
        "adapting",
        "pos",
    ]
    frames = {name: pd.DataFrame(r, columns=columns) for name, r in rows.items()}
    return frames, pd.DataFrame(alarms, columns=["phase", "ts", "cluster", "pos"]), seconds


def _merge(run: Run, phase: str, out: tuple[dict[str, pd.DataFrame], pd.DataFrame, float]) -> None:
    frames, alarms, seconds = out
    for name, frame in frames.items():
        run.frames[name] = (
            pd.concat([run.frames[name], frame], ignore_index=True) if name in run.frames else frame
        )
    run.alarms = alarms if run.alarms.empty else pd.concat([run.alarms, alarms], ignore_index=True)
    run.seconds[phase] = seconds


def paper_protocol(
    valuer: Valuer,
    splits: Iterable[tuple[str, Sequence[AssetEvent]]],
    *,
    batch_size: int = 64,
    learn_on_test: bool = True,
    progress: bool = True,
) -> Run:
    """Stream the splits ("train", "validation", "test", in that order) through `valuer`."""
    run = Run()
    for phase, events in splits:
        if isinstance(valuer, LSTMKNNFusion):
            if phase == "validation":
                valuer.reset_weights()
            elif phase == "test":
                valuer.freeze_weights()
        learn = learn_on_test or phase != "test"
        _merge(
            run,
            phase,
            stream(
                valuer, events, phase=phase, batch_size=batch_size, learn=learn, progress=progress
            ),
        )
    return run


def streaming_protocol(
    valuer: Valuer, events: Sequence[AssetEvent], *, batch_size: int = 64, progress: bool = True
) -> Run:
    """One prequential pass over the whole stream (phase "stream")."""
    run = Run()
    _merge(
        run,
        "stream",
        stream(valuer, events, phase="stream", batch_size=batch_size, progress=progress),
    )
    return run
