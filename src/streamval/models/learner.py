"""Per-cluster online learner: a small torch sequence model on scale-free windows.

Inputs and target are scale-free, so a 10 USD and a 3,000 USD asset share one model:

    window value channel   (v_lag(s) - v_last) / scale_asset        s = the last seq_len events
    window feature slots   dynamic features, standardised with running per-feature statistics
    target                 (v_t - v_last) / scale_asset              the residual over persistence

`scale_asset` is the asset's running mean absolute value (the engine keeps it). Inside the learner
the value channel and the target are further divided by the cluster's running RMS of the target,
so the network works with numbers of order 1. The output layer starts at zero: an untrained
model predicts a change of exactly 0, i.e. persistence.

Learning happens in `learn()` only, in micro-batches: the newest not-yet-trained ("fresh")
samples plus a uniform replay sample of older ones from a reservoir (algorithm R over every sample
seen). One update consumes `batch_size * (1 - replay_fraction)` fresh samples, with replayed ones
making up the rest of `batch_size`; while a drift boost lasts the schedule's smaller replay share
shrinks the replay part (the update rate stays the same). `learn()` takes at most `max_updates`
steps, so the work per call is bounded; under overload the oldest fresh samples fall out of the
fresh queue (`buffer_size`) and are learned only via replay.
Normalisation statistics also update in `learn()`, so predictions between two `learn()` calls
use one fixed model.

Cells: ``"lstm"`` / ``"gru"`` (stacked layers of sizes `hidden`, paper: [100, 50]) and
``"linear"`` (a linear model on the flattened window with an L2 penalty, ridge-like).

>>> import numpy as np
>>> learner = SequenceLearner(n_features=0, seq_len=4, hidden=[8], batch_size=8, seed=1)
>>> windows = np.zeros((2, 4, 1))
>>> learner.predict(windows).tolist()  # untrained: persistence
[0.0, 0.0]
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from streamval.models.base import Estimator

FloatArray = NDArray[np.float64]
Cell = Literal["lstm", "gru", "linear"]

# Normalised inputs and targets are clipped to this many cluster RMS units: one wild tick (a
# 10x price error upstream) must not blow up the weights; real shocks of that size are rare.
_CLIP = 10.0
# Horizon (samples) of the running RMS of the target: long, so a shock moves it slowly.
_SCALE_HORIZON = 2000
_GRAD_CLIP = 1.0
# Samples are stored as float32; raw feature values beyond this magnitude are saturated.
_STORE_LIMIT = 1e30


class LearningSchedule(Protocol):
    """What the learner needs from a learning-rate policy (see `streamval.models.drift`)."""

    @property
    def lr(self) -> float: ...

    @property
    def replay_fraction(self) -> float: ...

    def on_update(self) -> None: ...


class ConstantSchedule:
    """Fixed lr and replay share (no drift adaptation)."""

    def __init__(self, lr: float, replay_fraction: float = 0.5) -> None:
        self.lr = lr
        self.replay_fraction = replay_fraction

    def on_update(self) -> None:
        """Nothing decays."""


class _RecurrentNet(nn.Module):
    def __init__(self, cell: Literal["lstm", "gru"], n_inputs: int, hidden: Sequence[int]) -> None:
        super().__init__()
        sizes = [n_inputs, *hidden]
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.layers = nn.ModuleList(
            rnn(sizes[i], sizes[i + 1], batch_first=True) for i in range(len(hidden))
        )
        self.head = nn.Linear(sizes[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers:
            h, _ = layer(h)
        out: torch.Tensor = self.head(h[:, -1]).squeeze(-1)
        return out


class _LinearNet(nn.Module):
    def __init__(self, n_inputs: int, seq_len: int) -> None:
        super().__init__()
        self.head = nn.Linear(n_inputs * seq_len, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(x.flatten(1)).squeeze(-1)
        return out


class SequenceLearner(Estimator):
    """One cluster's model: predicts the scale-free change of an asset from its window.

    Settings are the constructor arguments; learned state (network, optimizer, statistics,
    buffers, RNG) is created by `_reset()` and round-trips through `state_dict()`.
    """

    settings_names = {"n_features": "max_features"}

    def __init__(
        self,
        n_features: int,
        *,
        seq_len: int = 12,
        cell: Cell = "lstm",
        hidden: Sequence[int] = (100, 50),
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ridge_alpha: float = 1e-3,
        batch_size: int = 64,
        buffer_size: int = 2048,
        replay_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        if cell != "linear" and not hidden:
            raise ValueError("a recurrent cell needs at least one hidden layer")
        self.n_features = n_features
        self.seq_len = seq_len
        self.cell: Cell = cell
        self.hidden = list(hidden)
        self.lr = lr
        self.weight_decay = weight_decay
        self.ridge_alpha = ridge_alpha
        self.batch_size = batch_size
        self.buffer_size = buffer_size
        self.replay_fraction = replay_fraction
        self.seed = seed
        self._reset()

    @property
    def n_inputs(self) -> int:
        return 1 + self.n_features

    def _reset(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self._net: nn.Module
        # Module constructors draw from torch's global RNG: fork it so the engine leaves it as it
        # was, then initialise from our own generator (PyTorch's default ranges).
        with torch.random.fork_rng(devices=[]):
            if self.cell == "linear":
                self._net = _LinearNet(self.n_inputs, self.seq_len)
            else:
                self._net = _RecurrentNet(self.cell, self.n_inputs, self.hidden)
        with torch.no_grad():
            gates = 4 if self.cell == "lstm" else 3
            for name, param in self._net.named_parameters():
                if name.startswith("head"):
                    param.zero_()  # untrained model = persistence
                else:
                    bound = 1.0 / math.sqrt(param.shape[0] // gates)
                    nn.init.uniform_(param, -bound, bound, generator=generator)
        self._opt = torch.optim.Adam(
            self._net.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        self._rng = np.random.default_rng(self.seed)
        # Normalisation statistics.
        self._n_target = 0
        self._target_ms = 0.0
        self._feat_n = np.zeros(self.n_features)
        self._feat_mean = np.zeros(self.n_features)
        self._feat_m2 = np.zeros(self.n_features)
        # Samples: queued since the last learn(), fresh (not yet trained on), reservoir (replay).
        self._pending: list[tuple[NDArray[np.float32], float]] = []
        self._fresh: deque[tuple[NDArray[np.float32], float]] = deque(maxlen=self.buffer_size)
        self._res_x = np.zeros((self.buffer_size, self.seq_len, self.n_inputs), dtype=np.float32)
        self._res_y = np.zeros(self.buffer_size, dtype=np.float32)
        self._res_size = 0
        self._seen = 0
        self._updates = 0
        self._own_updates = 0

    # -- normalisation ------------------------------------------------------------------------

    @property
    def target_scale(self) -> float:
        """Running RMS of the scale-free target (1 before any sample)."""
        return math.sqrt(self._target_ms) if self._n_target and self._target_ms > 0 else 1.0

    def _normalise(self, windows: NDArray[np.floating[Any]]) -> torch.Tensor:
        x = np.array(windows, dtype=np.float64)
        x[..., 0] /= self.target_scale
        if self.n_features:
            std = np.sqrt(self._feat_m2 / np.maximum(self._feat_n - 1, 1))
            std = np.where(std > 0, std, 1.0)
            x[..., 1:] = (x[..., 1:] - self._feat_mean) / std
        x = np.nan_to_num(x, nan=0.0, posinf=_CLIP, neginf=-_CLIP)
        np.clip(x, -_CLIP, _CLIP, out=x)
        return torch.from_numpy(x.astype(np.float32))

    def _observe(self, windows: NDArray[np.float32], targets: list[float]) -> None:
        """Update the normalisation statistics with new samples (features merged at once)."""
        for target in targets:
            self._n_target += 1
            alpha = max(1.0 / self._n_target, 1.0 / _SCALE_HORIZON)
            self._target_ms += alpha * (target * target - self._target_ms)
        if not self.n_features or not len(windows):
            return
        last = windows[:, -1, 1:].astype(np.float64)
        seen = ~np.isnan(last)
        n_b = seen.sum(axis=0).astype(np.float64)
        filled = np.where(seen, last, 0.0)
        mean_b = filled.sum(axis=0) / np.maximum(n_b, 1.0)
        m2_b = (np.where(seen, last - mean_b, 0.0) ** 2).sum(axis=0)
        n = self._feat_n + n_b
        delta = mean_b - self._feat_mean
        safe_n = np.maximum(n, 1.0)
        # Chan et al.'s merge of two (count, mean, M2) summaries.
        self._feat_mean = self._feat_mean + delta * n_b / safe_n
        self._feat_m2 = self._feat_m2 + m2_b + delta**2 * self._feat_n * n_b / safe_n
        self._feat_n = n

    # -- prediction and learning --------------------------------------------------------------

    def predict(self, windows: NDArray[np.floating[Any]]) -> FloatArray:
        """Predicted scale-free changes for windows of shape (n, seq_len, 1 + n_features)."""
        if len(windows) == 0:
            return np.zeros(0)
        x = self._normalise(windows)
        with torch.inference_mode():
            out = self._net(x).double().numpy()
        out = np.clip(np.nan_to_num(out, nan=0.0), -_CLIP, _CLIP)
        return np.asarray(out * self.target_scale, dtype=np.float64)

    def add(self, window: NDArray[np.floating[Any]], target: float) -> None:
        """Queue one labelled sample; it is used from the next `learn()` on."""
        stored = np.clip(np.asarray(window, dtype=np.float64), -_STORE_LIMIT, _STORE_LIMIT).astype(
            np.float32
        )
        self._pending.append((stored, float(target)))

    def _reservoir_add(self, window: NDArray[np.float32], target: float) -> None:
        if self._res_size < self.buffer_size:
            slot = self._res_size
            self._res_size += 1
        else:
            slot = int(self._rng.integers(0, self._seen + 1))
        if slot < self.buffer_size:
            self._res_x[slot] = window
            self._res_y[slot] = target
        self._seen += 1

    def learn(self, max_updates: int, schedule: LearningSchedule | None = None) -> int:
        """Absorb queued samples, take at most `max_updates` optimizer steps; return how many."""
        schedule = schedule or ConstantSchedule(self.lr, self.replay_fraction)
        if self._pending:
            self._observe(np.stack([w for w, _ in self._pending]), [t for _, t in self._pending])
        for window, target in self._pending:
            self._reservoir_add(window, target)
            self._fresh.append((window, target))
        self._pending = []
        steps = 0
        n_fresh = self.fresh_per_update
        share = schedule.replay_fraction
        wanted = (
            self.batch_size - n_fresh if share >= 1.0 else round(n_fresh * share / (1.0 - share))
        )
        n_replay = min(wanted, self._res_size)
        while steps < max_updates:
            if len(self._fresh) < n_fresh:
                break
            batch = [self._fresh.pop() for _ in range(n_fresh)]  # newest first
            xs = [w for w, _ in batch]
            ys = [t for _, t in batch]
            if n_replay:
                idx = self._rng.choice(self._res_size, size=n_replay, replace=False)
                xs.extend(self._res_x[idx])
                ys.extend(self._res_y[idx].tolist())
            self._step(np.stack(xs), np.asarray(ys), schedule.lr)
            schedule.on_update()
            steps += 1
        return steps

    def _step(self, windows: NDArray[np.float32], targets: FloatArray, lr: float) -> None:
        x = self._normalise(windows)
        y = torch.from_numpy(np.clip(targets / self.target_scale, -_CLIP, _CLIP).astype(np.float32))
        for group in self._opt.param_groups:
            group["lr"] = lr
        self._net.train()
        self._opt.zero_grad(set_to_none=True)
        loss = torch.mean((self._net(x) - y) ** 2)
        if self.cell == "linear" and self.ridge_alpha > 0:
            loss = loss + self.ridge_alpha * sum(
                (p**2).sum() for n, p in self._net.named_parameters() if n.endswith("weight")
            )
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(self._net.parameters(), _GRAD_CLIP)
        self._opt.step()
        self._net.eval()
        self._updates += 1
        self._own_updates += 1

    @property
    def fresh_per_update(self) -> int:
        """New samples one update consumes: `batch_size * (1 - replay_fraction)`, at least 1."""
        return max(1, round(self.batch_size * (1.0 - self.replay_fraction)))

    def reset_moments(self) -> None:
        """Zero Adam's first moments (momentum): after a drift alarm they point the old way.

        The second moments are kept: they set the step size, and re-estimating them from scratch
        made re-adaptation slower in our level-shift tests.
        """
        for state in self._opt.state.values():
            if "exp_avg" in state:
                state["exp_avg"].zero_()

    @property
    def updates(self) -> int:
        """Optimizer steps this model has taken, including those of the model it was copied from."""
        return self._updates

    @property
    def own_updates(self) -> int:
        """Optimizer steps taken since this learner was created or forked."""
        return self._own_updates

    @property
    def samples_seen(self) -> int:
        return self._seen

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        fresh = list(self._fresh)
        pending = list(self._pending)
        return {
            "net": {k: v.detach().clone() for k, v in self._net.state_dict().items()},
            "opt": copy.deepcopy(self._opt.state_dict()),
            "rng": self._rng.bit_generator.state,
            "n_target": self._n_target,
            "target_ms": self._target_ms,
            "feat": torch.from_numpy(
                np.stack([self._feat_n, self._feat_mean, self._feat_m2]).copy()
            ),
            "pending_x": _stack([w for w, _ in pending], self.seq_len, self.n_inputs),
            "pending_y": [t for _, t in pending],
            "fresh_x": _stack([w for w, _ in fresh], self.seq_len, self.n_inputs),
            "fresh_y": [t for _, t in fresh],
            "res_x": torch.from_numpy(self._res_x[: self._res_size].copy()),
            "res_y": torch.from_numpy(self._res_y[: self._res_size].copy()),
            "seen": self._seen,
            "updates": self._updates,
            "own_updates": self._own_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._net.load_state_dict(state["net"])
        self._opt.load_state_dict(copy.deepcopy(state["opt"]))
        self._rng.bit_generator.state = state["rng"]
        self._n_target = int(state["n_target"])
        self._target_ms = float(state["target_ms"])
        feat = state["feat"].numpy().astype(np.float64)
        self._feat_n, self._feat_mean, self._feat_m2 = (
            feat[0].copy(),
            feat[1].copy(),
            feat[2].copy(),
        )
        self._pending = list(
            zip(state["pending_x"].numpy().copy(), map(float, state["pending_y"]), strict=True)
        )
        self._fresh = deque(
            zip(state["fresh_x"].numpy().copy(), map(float, state["fresh_y"]), strict=True),
            maxlen=self.buffer_size,
        )
        res_x, res_y = state["res_x"].numpy(), state["res_y"].numpy()
        self._res_size = len(res_y)
        self._res_x[: self._res_size] = res_x
        self._res_y[: self._res_size] = res_y
        self._seen = int(state["seen"])
        self._updates = int(state["updates"])
        self._own_updates = int(state["own_updates"])

    def fork(self, seed: int) -> SequenceLearner:
        """A deep copy of the model, optimizer and statistics, with empty buffers and its own RNG.

        Used to start a new cluster from its nearest existing cluster (transfer).
        """
        child = self.clone(seed=seed)
        child._net.load_state_dict(
            {k: v.detach().clone() for k, v in self._net.state_dict().items()}
        )
        child._opt.load_state_dict(copy.deepcopy(self._opt.state_dict()))
        child._n_target, child._target_ms = self._n_target, self._target_ms
        child._feat_n, child._feat_mean, child._feat_m2 = (
            self._feat_n.copy(),
            self._feat_mean.copy(),
            self._feat_m2.copy(),
        )
        child._updates = self._updates
        return child


def _stack(windows: list[NDArray[np.float32]], seq_len: int, n_inputs: int) -> torch.Tensor:
    if not windows:
        return torch.zeros((0, seq_len, n_inputs), dtype=torch.float32)
    return torch.from_numpy(np.stack(windows).astype(np.float32))
