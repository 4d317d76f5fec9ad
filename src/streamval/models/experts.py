"""What a cluster serves: an online combination of experts' scale-free changes.

Experts: 0 persistence (change 0), 1 the cluster's stable model, 2 a fast learner while one lives
(a copy of the stable model started on a shock alarm, trained on fresh samples only at a higher
lr; `models/trainer.py`), 3 the pooled model once there is one (one network trained on every
cluster's samples, `engine.pooled_expert`: a cluster's own model knows its assets, the pooled one
has seen three times the data; which serves a cluster better is learned here, per cluster).
Served change = sum_k w_k f_k over the served experts. The weights are
exponential weights on each expert's own loss (hedge): after each event-time step of the cluster

    w_k <- w_k * exp(-eta * mean Huber_delta(y - f_k))      over the step's labelled events
    w   <- (1 - share) * w / sum(w) + share * prior

with y clipped at +-`loss_clip` units (one wild value cannot swing the weights), a small Huber
delta (MASE is an MAE ratio), and a fixed share towards a prior (1 - `prior` persistence,
`prior` split over the learned experts; also the initial weights) so a weight that fell can come
back. With
`persistence=False` expert 0 is never live: without a fast learner the stable model is served
exactly. Measured (docs/results/drift.md): before the gate (below) persistence in the mix
lowered the worst sp500 shock window's MASE and FX's overall MASE; with it, it helps ETT a
little and costs the credit book, whose mix starts learning only when its model starts valuing
(month 12); the default prior 0.5 is the compromise.

The gate: the combination is served only while the t-statistic of its mean squared-error gain
over persistence per step (EW mean and variance, weight `gate_alpha`; y clipped at `loss_clip`)
is above `gate_tstat`; otherwise persistence (change 0) is served, while every expert is still
scored, so the gate reopens when the evidence returns. Where a model has no signal (daily
equities) no weighting keeps every short window at or below persistence's error; the gate does.
The long-run evidence describes the regime before a shock, so the gate also opens while a
served fast learner's own gain over persistence since its alarm (equal weights) has a
t-statistic above `gate_tstat`. `gate_tstat` = 0 serves the combination always.

A fast learner must win to be served. It starts in shadow (predicted, scored, weighted, not
served). After `shadow_steps` steps it is served once its per-step loss minus the served loss
has a t-statistic below `min_tstat` (it then enters at `init_weight`); in shadow it is retired as
soon as that mean difference is positive. Served, it is retired when the EW ratio of its loss to
the stable model's reaches 1. After `max_steps` steps it is folded into the stable model (its
whole-life loss ratio below `fold_ratio`) or retired; with `can_fold=False` (a pooled network,
`engine.pooling` other than "cluster", which one cluster's copy must not overwrite) it is
always retired. The mix reports these as `events`; the engine applies them to the trainer.

>>> mix = ExpertMix(prior=0.1)
>>> mix.served_weights().round(2).tolist()  # untrained: 0.9 persistence, 0.1 model
[0.9, 0.1, 0.0, 0.0]
>>> for t in range(20):  # the model is right, persistence is not
...     _ = mix.observe(t, 1.0, (0.0, 1.0, 0.0, 0.0), 0.1)
>>> mix.served_weights().round(2).tolist()
[0.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from streamval.models.base import Estimator
from streamval.models.state import as_array

FloatArray = NDArray[np.float64]
FastState = Literal["none", "shadow", "served"]
EXPERTS = ("persistence", "stable", "fast", "pooled")
_EXPERTS = len(EXPERTS)


def huber(r: float, delta: float) -> float:
    a = abs(r)
    return 0.5 * r * r if a <= delta else delta * (a - 0.5 * delta)


class ExpertMix(Estimator):
    """Per-cluster weights of persistence, the stable model and a fast learner (module doc)."""

    settings_names = {
        "persistence": "persistence_expert",
        "eta": "combiner_eta",
        "share": "combiner_share",
        "prior": "combiner_prior",
        "delta": "combiner_delta",
        "shadow_steps": "fast_shadow_steps",
        "min_tstat": "fast_min_tstat",
        "init_weight": "fast_init_weight",
        "max_steps": "fast_max_steps",
        "fold_ratio": "fast_fold_ratio",
        "gate_tstat": "combiner_gate_tstat",
        "gate_alpha": "combiner_gate_alpha",
    }

    def __init__(
        self,
        *,
        persistence: bool = True,
        eta: float = 10.0,
        share: float = 0.001,
        prior: float = 0.5,
        delta: float = 0.25,
        loss_clip: float = 5.0,
        shadow_steps: int = 5,
        min_tstat: float = -2.0,
        init_weight: float = 0.1,
        max_steps: int = 60,
        fold_ratio: float = 0.9,
        loss_horizon: int = 5,
        can_fold: bool = True,
        gate_tstat: float = 3.0,
        gate_alpha: float = 0.005,
    ) -> None:
        self.persistence = persistence
        self.eta = eta
        self.share = share
        self.prior = prior
        self.delta = delta
        self.loss_clip = loss_clip
        self.shadow_steps = shadow_steps
        self.min_tstat = min_tstat
        self.init_weight = init_weight
        self.max_steps = max_steps
        self.fold_ratio = fold_ratio
        self.loss_horizon = loss_horizon
        self.can_fold = can_fold
        self.gate_tstat = gate_tstat
        self.gate_alpha = gate_alpha
        self._reset()

    def _reset(self) -> None:
        self._live = np.array([self.persistence, True, False, False])
        self._w = self._target()
        self._shadow = False
        self._key: int | None = None
        self._loss = np.zeros(_EXPERTS + 1)  # per expert, then the served combination
        self._n = 0
        self._age = 0
        self._diffs: list[float] = []
        self._ratio = 1.0
        self._cum = [0.0, 0.0]  # whole-life losses of fast and stable
        self._gain = 0.0  # the open step's sum of y^2 - (y - combination)^2
        self._fast_gain = 0.0  # the same of the fast learner's change
        self._moved = False  # whether the open step's combination was ever off persistence
        self._evidence = [0.0, 0.0, 0.0]  # EW mean and variance of the step gains, steps seen
        self._recent = [0.0, 0.0, 0.0]  # sum, sum of squares, count of the gains since the alarm
        self.started = 0
        self.served = 0
        self.folded = 0
        self.retired = 0

    def _target(self) -> FloatArray:
        """The fixed-share prior over the live experts."""
        live = self._live
        learned = int(live[1:].sum())
        t = np.zeros(_EXPERTS)
        if live[0]:
            t[0] = 1.0 - self.prior
            t[1:] = np.where(live[1:], self.prior / learned, 0.0)
        else:
            t[1:] = np.where(live[1:], 1.0 / learned, 0.0)
        return t

    # -- serving ------------------------------------------------------------------------------

    @property
    def fast(self) -> FastState:
        if not self._live[2]:
            return "none"
        return "shadow" if self._shadow else "served"

    def served_weights(self) -> FloatArray:
        """Weights of the served experts (a shadow fast learner gets 0), summing to 1."""
        w = self._w.copy()
        if self._shadow:
            w[2] = 0.0
        out: FloatArray = w / w.sum()
        return out

    def weights(self) -> FloatArray:
        """The raw weights, a shadow fast learner's included."""
        return self._w.copy()

    @property
    def pooled(self) -> bool:
        """Whether the pooled model is one of the experts."""
        return bool(self._live[3])

    def combine(self, stable: float, fast: float, pooled: float = 0.0) -> float:
        """The experts' combination (the change served while the gate is open)."""
        w = self.served_weights()
        out = w[1] * stable + (w[2] * fast if w[2] > 0.0 else 0.0)
        return float(out + (w[3] * pooled if w[3] > 0.0 else 0.0))

    def serve(self, stable: float, fast: float, pooled: float = 0.0) -> float:
        """The served change: the combination while the gate is open, else 0 (persistence)."""
        return self.combine(stable, fast, pooled) if self.gate_open else 0.0

    @property
    def gate_tvalue(self) -> float:
        """The t-statistic of the combination's mean squared-error gain over persistence per
        step (EW, `gate_alpha`); 0 before two steps."""
        mean, var, n = self._evidence
        if n < 2:
            return 0.0
        n_eff = min(n, (2.0 - self.gate_alpha) / self.gate_alpha)
        return mean / math.sqrt(max(var, 1e-18) / n_eff)

    @property
    def recent_tvalue(self) -> float:
        """The same t-statistic over the steps since the fast learner's alarm alone (equal
        weights); 0 before two such steps or without a fast learner."""
        total, squares, n = self._recent
        if n < 2 or not self._live[2]:
            return 0.0
        mean = total / n
        var = max(squares / n - mean * mean, 0.0) * n / (n - 1.0)
        return mean / math.sqrt(max(var, 1e-18) / n)

    @property
    def gate_open(self) -> bool:
        """Whether the learned change is served: its gain over persistence is significant
        (always, with `gate_tstat` = 0), over the long run or, while a fast learner that won its
        shadow test is served, over the steps since its alarm."""
        if self.gate_tstat <= 0.0 or self.gate_tvalue > self.gate_tstat:
            return True
        return self.fast == "served" and self.recent_tvalue > self.gate_tstat

    # -- learning -----------------------------------------------------------------------------

    def observe(
        self, step: int, y: float, changes: tuple[float, float, float, float], served: float
    ) -> str | None:
        """`advance(step)`, then `add` a labelled event (one-thread use and tests)."""
        event = self.advance(step)
        self.add(y, changes, served)
        return event

    def advance(self, step: int) -> str | None:
        """A model-valued event of step `step`: if it opens a new step, the previous one's update
        runs first; returns what happened to the fast learner ("served", "retired", "folded")."""
        event = None
        if step != self._key:
            if self._key is not None and self._n:
                event = self._close()
            self._key = step
            self._loss[:] = 0.0
            self._gain = 0.0
            self._fast_gain = 0.0
            self._moved = False
            self._n = 0
        return event

    def add(self, y: float, changes: tuple[float, float, float, float], served: float) -> None:
        """A labelled event of the open step: its scale-free target, the experts' changes
        (persistence, stable, fast, pooled; a change of an expert not live is ignored) and the
        served change."""
        yc = min(max(y, -self.loss_clip), self.loss_clip) if math.isfinite(y) else 0.0
        d = self.delta
        for k in range(_EXPERTS):
            self._loss[k] += huber(yc - changes[k], d)
        self._loss[_EXPERTS] += huber(yc - served, d)
        self._gain += yc * yc - min((yc - served) ** 2, self.loss_clip**2)
        if self._live[2]:
            self._fast_gain += yc * yc - min((yc - changes[2]) ** 2, self.loss_clip**2)
        self._moved = self._moved or served != 0.0
        self._n += 1

    def _close(self) -> str | None:
        loss = self._loss / self._n
        if self._moved:  # a step whose combination was persistence's says nothing of the model
            self._weigh_evidence(self._gain / self._n)
        if self._live[2]:
            gain = self._fast_gain / self._n
            r = self._recent
            self._recent = [r[0] + gain, r[1] + gain * gain, r[2] + 1.0]
        live = self._live
        logw = np.log(np.maximum(self._w, 1e-300)) - self.eta * loss[:_EXPERTS]
        logw = np.where(live, logw, -np.inf)
        logw -= logw[live].max()
        w = np.where(live, np.exp(logw), 0.0)
        w /= w.sum()
        self._w = (1.0 - self.share) * w + self.share * self._target()
        if not live[2]:
            return None
        return self._judge(float(loss[2]), float(loss[1]), float(loss[_EXPERTS]))

    def _weigh_evidence(self, gain: float) -> None:
        """EW mean and variance (West's incremental form) of the per-step gains."""
        mean, var, n = self._evidence
        if n == 0:
            self._evidence = [gain, 0.0, 1.0]
            return
        a = max(self.gate_alpha, 1.0 / (n + 1.0))  # an equal-weight mean until 1/n < alpha
        diff = gain - mean
        mean += a * diff
        var = (1.0 - a) * (var + a * diff * diff)
        self._evidence = [mean, var, n + 1.0]

    def _judge(self, lf: float, ls: float, lv: float) -> str | None:
        """The fast learner's step: served once it wins its shadow test, retired when losing."""
        self._age += 1
        self._cum[0] += lf
        self._cum[1] += ls
        self._diffs.append(lf - lv)
        a = 1.0 / min(self._age, self.loss_horizon)
        self._ratio += a * (lf / max(ls, 1e-12) - self._ratio)
        event = None
        if self._shadow:
            d = np.asarray(self._diffs)
            if self._age >= self.shadow_steps and len(d) > 1 and d.std() > 0:
                tstat = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
                if tstat < self.min_tstat:
                    self._shadow = False
                    self._w *= 1.0 - self.init_weight
                    self._w[2] = self.init_weight
                    self.served += 1
                    event = "served"
            losing = self._shadow and self._age >= self.shadow_steps and float(d.mean()) > 0
        else:
            losing = self._ratio >= 1.0
        if losing or self._age >= self.max_steps:
            whole = self._cum[0] / max(self._cum[1], 1e-12)
            fold = self.can_fold and not losing and not self._shadow and whole < self.fold_ratio
            self.end_fast(fold)
            return "folded" if fold else "retired"
        return event

    def start_fast(self) -> bool:
        """A shock alarm: a fast learner joins in shadow (False if one lives already)."""
        if self._live[2]:
            return False
        self._live[2] = True
        self._shadow = True
        self._w = self._w * (1.0 - self.init_weight)
        self._w[2] = self.init_weight
        self._age = 0
        self._diffs = []
        self._ratio = 1.0
        self._cum = [0.0, 0.0]
        self._recent = [0.0, 0.0, 0.0]
        self.started += 1
        return True

    def join_pooled(self) -> bool:
        """The pooled model joins (False if it is in already) at the stable model's weight: at
        its start both are copies of the same model."""
        if self._live[3]:
            return False
        self._live[3] = True
        self._w[3] = self._w[1]
        self._w /= self._w.sum()
        return True

    def end_fast(self, fold: bool) -> None:
        """The fast learner leaves: its weight goes to the stable model if folded into it."""
        if not self._live[2]:
            return
        if fold:
            self._w[1] += self._w[2]
            self.folded += 1
        else:
            self.retired += 1
        self._w[2] = 0.0
        self._live[2] = False
        self._shadow = False
        self._w /= self._w.sum()

    # -- copies and state ---------------------------------------------------------------------

    def copy(self) -> ExpertMix:
        out = ExpertMix.__new__(ExpertMix)
        out.__dict__.update(self.__dict__)
        out._live = self._live.copy()
        out._w = self._w.copy()
        out._loss = self._loss.copy()
        out._diffs = list(self._diffs)
        out._cum = list(self._cum)
        out._evidence = list(self._evidence)
        out._recent = list(self._recent)
        return out

    def fork(self) -> ExpertMix:
        """A new cluster's mix: this one's weights without a fast learner, no open step."""
        out = self.copy()
        out._key, out._n = None, 0
        out._loss[:] = 0.0
        out._gain = out._fast_gain = 0.0
        out._moved = False
        if out._live[2]:
            out._w[2] = 0.0
            out._live[2] = False
            out._shadow = False
            out._w /= out._w.sum()
        out.started = out.served = out.folded = out.retired = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "w": self._w.copy(),
            "live": [bool(x) for x in self._live],
            "shadow": self._shadow,
            "key": self._key,
            "loss": self._loss.copy(),
            "n": self._n,
            "age": self._age,
            "diffs": np.asarray(self._diffs, dtype=np.float64),
            "ratio": self._ratio,
            "cum": list(self._cum),
            "gain": self._gain,
            "fast_gain": self._fast_gain,
            "moved": self._moved,
            "evidence": list(self._evidence),
            "recent": list(self._recent),
            "counts": [self.started, self.served, self.folded, self.retired],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset()
        w = as_array(state["w"], np.float64).reshape(-1)
        loss = as_array(state["loss"], np.float64).reshape(-1)
        live = [bool(x) for x in state["live"]]
        if len(w) == _EXPERTS - 1 and len(loss) == _EXPERTS and len(live) == _EXPERTS - 1:
            # a mix saved before the pooled expert existed: it has not joined
            w, live = np.append(w, 0.0), [*live, False]
            loss = np.insert(loss, _EXPERTS - 1, 0.0)
        if len(w) != _EXPERTS or len(loss) != _EXPERTS + 1 or len(live) != _EXPERTS:
            raise ValueError(f"expert mix: {len(w)} weights for {_EXPERTS} experts")
        self._w = w.copy()
        self._live = np.array(live)
        self._shadow = bool(state["shadow"])
        self._key = None if state["key"] is None else int(state["key"])
        self._loss = loss.copy()
        self._n = int(state["n"])
        self._age = int(state["age"])
        self._diffs = as_array(state["diffs"], np.float64).reshape(-1).tolist()
        self._ratio = float(state["ratio"])
        self._cum = [float(x) for x in state["cum"]]
        self._gain = float(state.get("gain", 0.0))
        self._fast_gain = float(state.get("fast_gain", 0.0))
        self._moved = bool(state.get("moved", False))
        self._evidence = [float(x) for x in state.get("evidence", [0.0, 0.0, 0.0])]
        self._recent = [float(x) for x in state.get("recent", [0.0, 0.0, 0.0])]
        self.started, self.served, self.folded, self.retired = (int(x) for x in state["counts"])
