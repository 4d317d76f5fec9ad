"""Per-cluster model: a small torch sequence model on scale-free windows, trained and served.

Inputs and target are scale-free, so a 10 USD and a 3,000 USD asset share one model:

    window value channel   (v_lag(s) - v_last) / scale_asset        s = the last seq_len events
    window feature slots   dynamic features, standardised with running per-feature statistics
    target                 (v_t - v_last) / scale_asset              the residual over persistence

`scale_asset` is the asset's unit (the engine keeps it: a robust mean |change|). Inside the model
the value channel and the target are further divided by the cluster's running RMS of the target
(`Normaliser`), so the network works with numbers of order 1. The output layer starts at zero:
an untrained model predicts a change of exactly 0, i.e. persistence. Training is robust to bad
values: targets are winsorised at `target_winsor` units before anything sees them (normaliser,
loss, reservoir) and the loss is Huber with threshold `huber_delta` units (`loss="mse"`: squared).

Two copies of each cluster's model, as a learner and a valuer would hold them:

    SequenceLearner    the training copy: network, Adam, normaliser, replay reservoir, RNG.
                       `step(fresh windows, targets, lr, replay share)` is one optimizer update
                       on `batch_size` fresh samples plus replayed ones (a uniform sample of
                       older samples from a reservoir, algorithm R over every trained sample);
                       the normaliser absorbs the fresh samples first. `snapshot()` publishes.
    ModelSnapshot      what a learner publishes: a version (optimizer updates so far) and the
                       network and normaliser as numbers. Immutable: a serving copy loads it.
    Predictor          the serving copy: loads snapshots, predicts; owned by the valuing side.

A snapshot is the unit a future scale-out would move between processes. Its networks:
`"main"` (the network) and, under `pooling="shared"`, `"heads"` (every cluster's head).

Pooling (`engine.pooling`) decides what a learner is shared by:

    cluster    one learner per cluster (the paper); `cluster` arguments are ignored
    global     one learner for every cluster, nothing per cluster
    shared     one learner for every cluster, plus a per-cluster residual output head: the
               prediction for a sample of cluster c is head(h) + w_c . h + b_c, with h the last
               hidden state (the flattened window for the linear cell). A sample updates the
               shared layers and head and its own cluster's (w_c, b_c) only. A new cluster's
               head starts at the mean of the existing clusters' heads (zero for the first),
               so it predicts with what the others learnt. The replay reservoir keeps each
               sample's cluster, so replayed samples train their own cluster's head.

The per-cluster part is a residual output head rather than a cluster embedding as an input: it
keeps the network and its state layout the same as the per-cluster model's, and a zero head is
exactly the shared model.

Cells: ``"lstm"`` / ``"gru"`` (stacked layers of sizes `hidden`, paper: [100, 50]) and
``"linear"`` (a linear model on the flattened window with an L2 penalty, ridge-like).

>>> import numpy as np
>>> learner = SequenceLearner(n_features=0, seq_len=4, hidden=[8], batch_size=8, seed=1)
>>> serving = Predictor.for_learner(learner)
>>> serving.predict(np.zeros((2, 4, 1), dtype=np.float32)).tolist()  # untrained: persistence
[0.0, 0.0]
>>> learner.step(np.ones((8, 4, 1), dtype=np.float32), np.full(8, 0.1), lr=1e-2)
>>> serving.load(learner.snapshot())
>>> serving.version
1
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from streamval.models.base import Estimator
from streamval.models.state import as_array, as_tensor, rng_state, set_rng_state

FloatArray = NDArray[np.float64]
Float32Array = NDArray[np.float32]
Cell = Literal["lstm", "gru", "linear"]
Pooling = Literal["cluster", "shared", "global"]

# Normalised inputs and targets are clipped to this many cluster RMS units: one wild tick (a
# 10x price error upstream) must not blow up the weights; real shocks of that size are rare.
_CLIP = 10.0
# Horizon (samples) of the running RMS of the target: long, so a shock moves it slowly.
_SCALE_HORIZON = 2000
_GRAD_CLIP = 1.0
# Samples are stored as float32; raw feature values beyond this magnitude are saturated.
STORE_LIMIT = 1e30


class _RecurrentNet(nn.Module):
    def __init__(self, cell: Literal["lstm", "gru"], n_inputs: int, hidden: Sequence[int]) -> None:
        super().__init__()
        sizes = [n_inputs, *hidden]
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.layers = nn.ModuleList(
            rnn(sizes[i], sizes[i + 1], batch_first=True) for i in range(len(hidden))
        )
        self.head = nn.Linear(sizes[-1], 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last step's hidden state of the top layer: what the output head sees."""
        h = x
        for layer in self.layers:
            h, _ = layer(h)
        return h[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x)).squeeze(-1)
        return out


class _LinearNet(nn.Module):
    def __init__(self, n_inputs: int, seq_len: int) -> None:
        super().__init__()
        self.head = nn.Linear(n_inputs * seq_len, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened window: what the output head sees."""
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x)).squeeze(-1)
        return out


def head_size(cell: Cell, n_inputs: int, seq_len: int, hidden: Sequence[int]) -> int:
    """Size of what the output head sees (a per-cluster head has this many weights, plus 1)."""
    return n_inputs * seq_len if cell == "linear" else int(hidden[-1])


def _forward(
    net: nn.Module, x: torch.Tensor, heads: torch.Tensor | None, rows: torch.Tensor | None
) -> torch.Tensor:
    """The network's output plus, with `heads`, each sample's per-cluster residual head
    (`heads[rows[i]]`: weights then bias)."""
    if heads is None or rows is None:
        out: torch.Tensor = net(x)
        return out
    h = net.features(x)  # type: ignore[operator]
    w = heads[rows]
    out = net.head(h).squeeze(-1) + (h * w[:, :-1]).sum(-1) + w[:, -1]  # type: ignore[operator]
    return out


def build_network(cell: Cell, n_inputs: int, seq_len: int, hidden: Sequence[int]) -> nn.Module:
    """The untrained network of a cell type (its weights are set by the caller)."""
    # Module constructors draw from torch's global RNG: fork it so it is left as it was.
    with torch.random.fork_rng(devices=[]):
        if cell == "linear":
            return _LinearNet(n_inputs, seq_len)
        return _RecurrentNet(cell, n_inputs, hidden)


class Normaliser:
    """Running statistics that scale a cluster model's inputs and target (part of the model)."""

    def __init__(self, n_features: int) -> None:
        self.n_features = n_features
        self.n_target = 0
        self.target_ms = 0.0
        self.feat_n = np.zeros(n_features)
        self.feat_mean = np.zeros(n_features)
        self.feat_m2 = np.zeros(n_features)

    @property
    def target_scale(self) -> float:
        """Running RMS of the scale-free target (1 before any sample)."""
        return math.sqrt(self.target_ms) if self.n_target and self.target_ms > 0 else 1.0

    def observe(self, windows: Float32Array, targets: FloatArray) -> None:
        """Absorb fresh samples (the features of each window's last step, merged at once)."""
        for target in np.asarray(targets, dtype=np.float64).tolist():
            self.n_target += 1
            alpha = max(1.0 / self.n_target, 1.0 / _SCALE_HORIZON)
            self.target_ms += alpha * (target * target - self.target_ms)
        if not self.n_features or not len(windows):
            return
        last = windows[:, -1, 1:].astype(np.float64)
        seen = ~np.isnan(last)
        n_b = seen.sum(axis=0).astype(np.float64)
        filled = np.where(seen, last, 0.0)
        mean_b = filled.sum(axis=0) / np.maximum(n_b, 1.0)
        m2_b = (np.where(seen, last - mean_b, 0.0) ** 2).sum(axis=0)
        n = self.feat_n + n_b
        delta = mean_b - self.feat_mean
        safe_n = np.maximum(n, 1.0)
        # Chan et al.'s merge of two (count, mean, M2) summaries.
        self.feat_mean = self.feat_mean + delta * n_b / safe_n
        self.feat_m2 = self.feat_m2 + m2_b + delta**2 * self.feat_n * n_b / safe_n
        self.feat_n = n

    def apply(self, windows: NDArray[np.floating[Any]]) -> torch.Tensor:
        """Normalised, clipped float32 network inputs (NaN = unknown -> 0, the mean)."""
        x = np.array(windows, dtype=np.float32)
        x[..., 0] /= np.float32(self.target_scale)
        if self.n_features:
            std = np.sqrt(self.feat_m2 / np.maximum(self.feat_n - 1, 1))
            std = np.where(std > 0, std, 1.0)
            x[..., 1:] = (x[..., 1:] - self.feat_mean.astype(np.float32)) / std.astype(np.float32)
        np.nan_to_num(x, copy=False, nan=0.0, posinf=_CLIP, neginf=-_CLIP)
        np.clip(x, -_CLIP, _CLIP, out=x)
        return torch.from_numpy(x)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_target": self.n_target,
            "target_ms": self.target_ms,
            "feat_n": self.feat_n.copy(),
            "feat_mean": self.feat_mean.copy(),
            "feat_m2": self.feat_m2.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        feats = [
            as_array(state[k], np.float64).reshape(-1) for k in ("feat_n", "feat_mean", "feat_m2")
        ]
        if any(len(f) != self.n_features for f in feats):
            raise ValueError(f"normaliser: feature statistics are not of size {self.n_features}")
        self.n_target = int(state["n_target"])
        self.target_ms = float(state["target_ms"])
        self.feat_n, self.feat_mean, self.feat_m2 = (f.copy() for f in feats)


@dataclass(frozen=True)
class ModelSnapshot:
    """A published cluster model: its version and its networks and normaliser as numbers."""

    version: int
    networks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    normaliser: dict[str, Any] = field(default_factory=dict)


class Predictor:
    """The serving copy of a cluster model: loads snapshots, predicts scale-free changes.

    `cluster`: whose head to serve from a snapshot with per-cluster heads (a cluster without
    one in the snapshot is served by the shared part alone).
    """

    def __init__(
        self,
        n_features: int,
        seq_len: int,
        cell: Cell,
        hidden: Sequence[int],
        *,
        cluster: int = 0,
    ) -> None:
        self.n_features = n_features
        self.cluster = cluster
        self._net = build_network(cell, 1 + n_features, seq_len, hidden)
        self._net.eval()
        self._head: torch.Tensor | None = None
        self._normaliser = Normaliser(n_features)
        self.snapshot: ModelSnapshot | None = None

    @classmethod
    def for_learner(cls, learner: SequenceLearner, cluster: int = 0) -> Predictor:
        """A serving copy shaped like `learner`, loaded with its current snapshot."""
        out = cls(
            learner.n_features, learner.seq_len, learner.cell, learner.hidden, cluster=cluster
        )
        out.load(learner.snapshot())
        return out

    @property
    def version(self) -> int:
        return 0 if self.snapshot is None else self.snapshot.version

    def load(self, snapshot: ModelSnapshot) -> None:
        """Serve `snapshot` from now on (copies its numbers; the snapshot stays untouched)."""
        if snapshot is self.snapshot:
            return
        with torch.no_grad():
            for name, tensor in self._net.state_dict().items():
                tensor.copy_(snapshot.networks["main"][name])
        heads = snapshot.networks.get("heads")
        if heads is None:
            self._head = None
        else:
            own = heads.get(str(self.cluster))
            self._head = None if own is None else own.detach().clone().reshape(1, -1)
        self._normaliser.load_state_dict(snapshot.normaliser)
        self.snapshot = snapshot

    def predict(self, windows: NDArray[np.floating[Any]]) -> FloatArray:
        """Predicted scale-free changes for windows of shape (n, seq_len, 1 + n_features)."""
        if len(windows) == 0:
            return np.zeros(0)
        x = self._normaliser.apply(windows)
        rows = None if self._head is None else torch.zeros(len(x), dtype=torch.long)
        with torch.inference_mode():
            out = _forward(self._net, x, self._head, rows).double().numpy()
        out = np.clip(np.nan_to_num(out, nan=0.0), -_CLIP, _CLIP)
        return np.asarray(out * self._normaliser.target_scale, dtype=np.float64)


class SequenceLearner(Estimator):
    """One cluster's training copy: predicts the scale-free change of an asset from its window.

    Settings are the constructor arguments; learned state (network, optimizer, normaliser,
    reservoir, RNG) is created by `_reset()` and round-trips through `state_dict()`.
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
        batch_size: int = 32,
        buffer_size: int = 2048,
        replay_fraction: float = 0.5,
        loss: Literal["huber", "mse"] = "huber",
        huber_delta: float = 1.0,
        target_winsor: float = 5.0,
        pooling: Pooling = "cluster",
        seed: int = 0,
    ) -> None:
        if cell != "linear" and not hidden:
            raise ValueError("a recurrent cell needs at least one hidden layer")
        if pooling not in ("cluster", "shared", "global"):
            raise ValueError(f"pooling {pooling!r}: expected cluster, shared or global")
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
        self.loss = loss
        self.huber_delta = huber_delta
        self.target_winsor = target_winsor
        self.pooling: Pooling = pooling
        self.seed = seed
        self._reset()

    @property
    def n_inputs(self) -> int:
        return 1 + self.n_features

    @property
    def has_heads(self) -> bool:
        """Whether this learner keeps a residual output head per cluster (`pooling="shared"`)."""
        return self.pooling == "shared"

    def _reset(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self._net = build_network(self.cell, self.n_inputs, self.seq_len, self.hidden)
        with torch.no_grad():
            gates = 4 if self.cell == "lstm" else 3
            for name, param in self._net.named_parameters():
                if name.startswith("head"):
                    param.zero_()  # untrained model = persistence
                else:
                    bound = 1.0 / math.sqrt(param.shape[0] // gates)
                    nn.init.uniform_(param, -bound, bound, generator=generator)
        self._net.eval()
        self._heads = nn.ParameterDict()  # cluster id (str) -> residual head (weights, bias)
        self._opt = torch.optim.Adam(
            self._net.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        self._rng = np.random.default_rng(self.seed)
        self.normaliser = Normaliser(self.n_features)
        self._res_x = np.zeros((self.buffer_size, self.seq_len, self.n_inputs), dtype=np.float32)
        self._res_y = np.zeros(self.buffer_size, dtype=np.float32)
        self._res_c = np.zeros(self.buffer_size, dtype=np.int64)
        self._res_size = 0
        self._seen = 0
        self._updates = 0
        self._own_updates = 0

    # -- clusters (pooling="shared") -----------------------------------------------------------

    @property
    def head_clusters(self) -> list[int]:
        """Clusters with a head, in the order they were added."""
        return [int(c) for c in self._heads]

    def add_cluster(self, cluster: int, like: Sequence[int] = ()) -> None:
        """Give `cluster` a head (`shared` pooling only; no-op otherwise or if it has one): the
        mean of the heads of `like` (the live clusters), zero if none of them has one."""
        if not self.has_heads or str(cluster) in self._heads:
            return
        others = [self._heads[str(c)].detach() for c in like if str(c) in self._heads]
        size = head_size(self.cell, self.n_inputs, self.seq_len, self.hidden) + 1
        init = torch.stack(others).mean(0) if others else torch.zeros(size)
        self._add_head(cluster, init.clone())

    def _add_head(self, cluster: int, value: torch.Tensor) -> None:
        param = nn.Parameter(value.to(torch.float32))
        self._heads[str(cluster)] = param
        self._opt.add_param_group({"params": [param]})

    def _parameters(self) -> list[nn.Parameter]:
        """Every trained parameter in the optimizer's order: the network's, then the heads."""
        return [*self._net.parameters(), *self._heads.values()]

    def _rows(self, clusters: NDArray[np.int64]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The stacked heads the samples of `clusters` use and each sample's row in them."""
        if not self.has_heads:
            return None, None
        ids, rows = np.unique(clusters, return_inverse=True)
        for c in ids.tolist():
            self.add_cluster(int(c), self.head_clusters)
        heads = torch.stack([self._heads[str(c)] for c in ids.tolist()])
        return heads, torch.from_numpy(rows.reshape(-1).astype(np.int64))

    # -- learning -----------------------------------------------------------------------------

    def replay_size(self, replay_fraction: float) -> int:
        """Replayed samples added to `batch_size` fresh ones at a replay share."""
        share = min(max(replay_fraction, 0.0), 0.95)
        return min(round(self.batch_size * share / (1.0 - share)), self._res_size)

    def step(
        self,
        windows: Float32Array,
        targets: FloatArray,
        *,
        lr: float | None = None,
        replay_fraction: float | None = None,
        cluster: int = 0,
    ) -> None:
        """One optimizer update on these fresh samples (of `cluster`) plus replayed ones; then
        they join the reservoir. The normaliser absorbs the fresh samples first."""
        windows = np.asarray(windows, dtype=np.float32)
        targets = np.asarray(targets, dtype=np.float64)
        if self.target_winsor > 0:
            targets = np.clip(targets, -self.target_winsor, self.target_winsor)
        self.normaliser.observe(windows, targets)
        share = self.replay_fraction if replay_fraction is None else replay_fraction
        n_replay = self.replay_size(share)
        xs, ys = windows, targets
        cs = np.full(len(targets), cluster, dtype=np.int64)
        if n_replay:
            idx = self._rng.choice(self._res_size, size=n_replay, replace=False)
            xs = np.concatenate([windows, self._res_x[idx]])
            ys = np.concatenate([targets, self._res_y[idx].astype(np.float64)])
            cs = np.concatenate([cs, self._res_c[idx]])
        self._gradient_step(xs, ys, cs, self.lr if lr is None else lr)
        for window, target in zip(windows, targets.tolist(), strict=True):
            self._reservoir_add(window, target, cluster)

    def _gradient_step(
        self, windows: Float32Array, targets: FloatArray, clusters: NDArray[np.int64], lr: float
    ) -> None:
        heads, rows = self._rows(clusters)
        x = self.normaliser.apply(windows)
        scale = self.normaliser.target_scale
        y = torch.from_numpy(np.clip(targets / scale, -_CLIP, _CLIP).astype(np.float32))
        for group in self._opt.param_groups:
            group["lr"] = lr
        self._net.train()
        self._opt.zero_grad(set_to_none=True)
        out = _forward(self._net, x, heads, rows)
        if self.loss == "huber":
            # The threshold is in target units; the network sees targets divided by `scale`.
            loss = nn.functional.huber_loss(out, y, delta=self.huber_delta / scale)
        else:
            loss = torch.mean((out - y) ** 2)
        if self.cell == "linear" and self.ridge_alpha > 0:
            loss = loss + self.ridge_alpha * sum(
                (p**2).sum() for n, p in self._net.named_parameters() if n.endswith("weight")
            )
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(self._parameters(), _GRAD_CLIP)
        self._opt.step()
        self._net.eval()
        self._updates += 1
        self._own_updates += 1

    def _reservoir_add(self, window: Float32Array, target: float, cluster: int) -> None:
        if self._res_size < self.buffer_size:
            slot = self._res_size
            self._res_size += 1
        else:
            slot = int(self._rng.integers(0, self._seen + 1))
        if slot < self.buffer_size:
            self._res_x[slot] = window
            self._res_y[slot] = target
            self._res_c[slot] = cluster
        self._seen += 1

    def reset_moments(self) -> None:
        """Zero Adam's first moments (momentum): after a drift alarm they point the old way.

        The second moments are kept: they set the step size, and re-estimating them from scratch
        made re-adaptation slower in our level-shift tests.
        """
        for state in self._opt.state.values():
            if "exp_avg" in state:
                state["exp_avg"].zero_()

    # -- serving ------------------------------------------------------------------------------

    def snapshot(self) -> ModelSnapshot:
        """The current model as an immutable snapshot (cloned numbers)."""
        networks = {"main": {k: v.detach().clone() for k, v in self._net.state_dict().items()}}
        if self.has_heads:
            networks["heads"] = {k: v.detach().clone() for k, v in self._heads.items()}
        return ModelSnapshot(
            version=self._updates, networks=networks, normaliser=self.normaliser.state_dict()
        )

    def predict(self, windows: NDArray[np.floating[Any]], cluster: int = 0) -> FloatArray:
        """Predictions of the training copy itself (tests and tools; serving uses `Predictor`)."""
        return Predictor.for_learner(self, cluster).predict(windows)

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
        """Fresh samples trained (each exactly once)."""
        return self._seen

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Network, heads, optimizer moments (per parameter, None where a parameter has not
        been stepped yet: a head no sample reached), RNG, normaliser, reservoir, counters."""
        states = [self._opt.state.get(p, {}) for p in self._parameters()]
        if not any("exp_avg" in st for st in states):
            states = []

        def moment(name: str) -> list[Any]:
            return [
                (float(st[name]) if name == "step" else st[name].clone())
                if "exp_avg" in st
                else None
                for st in states
            ]

        return {
            "net": {k: v.detach().clone() for k, v in self._net.state_dict().items()},
            "heads": {k: v.detach().clone() for k, v in self._heads.items()},
            "adam": {name: moment(name) for name in ("step", "exp_avg", "exp_avg_sq")},
            "rng": rng_state(self._rng),
            "normaliser": self.normaliser.state_dict(),
            "res_x": self._res_x[: self._res_size].copy(),
            "res_y": self._res_y[: self._res_size].copy(),
            "res_c": self._res_c[: self._res_size].copy(),
            "seen": self._seen,
            "updates": self._updates,
            "own_updates": self._own_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        net = {str(k): as_tensor(v, torch.float32) for k, v in state["net"].items()}
        self._net.load_state_dict(net)  # raises on missing keys and wrong shapes
        heads = {str(k): as_tensor(v, torch.float32) for k, v in state["heads"].items()}
        if heads and not self.has_heads:
            raise ValueError(f"learner: per-cluster heads in a {self.pooling!r} model")
        size = head_size(self.cell, self.n_inputs, self.seq_len, self.hidden) + 1
        if any(h.shape != (size,) for h in heads.values()):
            raise ValueError(f"learner: per-cluster heads not of size {size}")
        self._heads = nn.ParameterDict()
        self._opt = torch.optim.Adam(
            self._net.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        for cluster, head in heads.items():
            self._add_head(int(cluster), head)
        params = self._parameters()
        adam = state["adam"]
        if adam["step"]:
            if (
                not len(adam["step"])
                == len(adam["exp_avg"])
                == len(adam["exp_avg_sq"])
                == len(params)
            ):
                raise ValueError("learner: optimizer state does not match the network")
            opt_state = self._opt.state_dict()
            for i, p in enumerate(params):
                if adam["step"][i] is None:
                    continue
                avg = as_tensor(adam["exp_avg"][i], torch.float32)
                avg_sq = as_tensor(adam["exp_avg_sq"][i], torch.float32)
                if avg.shape != p.shape or avg_sq.shape != p.shape:
                    raise ValueError("learner: optimizer moments of the wrong shape")
                opt_state["state"][i] = {
                    "step": torch.tensor(float(adam["step"][i])),
                    "exp_avg": avg,
                    "exp_avg_sq": avg_sq,
                }
            self._opt.load_state_dict(opt_state)
        set_rng_state(self._rng, state["rng"])
        self.normaliser.load_state_dict(state["normaliser"])
        res_x = as_array(state["res_x"], np.float32)
        res_y = as_array(state["res_y"], np.float32).reshape(-1)
        res_c = as_array(state["res_c"], np.int64).reshape(-1)
        if res_x.shape[1:] != self._res_x.shape[1:] or not len(res_x) == len(res_y) == len(res_c):
            raise ValueError(f"learner: replay reservoir of shape {res_x.shape}")
        if len(res_y) > self.buffer_size:
            raise ValueError(f"learner: {len(res_y)} replay samples for {self.buffer_size} slots")
        self._res_size = len(res_y)
        self._res_x[: self._res_size] = res_x
        self._res_y[: self._res_size] = res_y
        self._res_c[: self._res_size] = res_c
        self._seen = int(state["seen"])
        self._updates = int(state["updates"])
        self._own_updates = int(state["own_updates"])

    def adopt(self, other: SequenceLearner) -> None:
        """Take another learner's network, optimizer and normaliser (deep copies; a fast learner
        folded into its stable model). The reservoir and counters stay this learner's."""
        if self.has_heads or other.has_heads:
            raise ValueError("adopt: only per-cluster learners (pooling='cluster') are folded")
        self._net.load_state_dict(
            {k: v.detach().clone() for k, v in other._net.state_dict().items()}
        )
        self._opt.load_state_dict(copy.deepcopy(other._opt.state_dict()))
        self.normaliser.load_state_dict(other.normaliser.state_dict())

    def fork(self, seed: int) -> SequenceLearner:
        """A deep copy of the model, optimizer and normaliser, with an empty reservoir and its
        own RNG. Used to start a new cluster from its nearest existing cluster (transfer)."""
        child = self.clone(seed=seed)
        child._net.load_state_dict(
            {k: v.detach().clone() for k, v in self._net.state_dict().items()}
        )
        for cluster, head in self._heads.items():
            child._add_head(int(cluster), head.detach().clone())
        child._opt.load_state_dict(copy.deepcopy(self._opt.state_dict()))
        child.normaliser.load_state_dict(self.normaliser.state_dict())
        child._updates = self._updates
        return child
