"""Learning off the valuing path: each cluster's training copy, its fresh samples, its snapshots.

The engine hands every labelled sample of a cluster to `Trainer.submit`. The samples wait in the
cluster's `SampleQueue`, oldest first; a step takes exactly `batch_size` of them (plus replayed
ones, see `SequenceLearner.step`), so every sample is trained exactly once as a fresh sample and
the steps do not depend on how the input was cut into batches. After each step the trainer
publishes a `ModelSnapshot` whose version is the model's update count; the valuing side serves
the latest one (`snapshot(cluster)`).

Two modes (`engine.training`):

    sync         steps run in the caller's thread when the engine says so (`run_due`): the
                 engine runs a step before the first later event whose event time differs from
                 that of the sample that completed the step, so results are deterministic and
                 independent of batch cuts (backtests, tests)
    background   a daemon thread runs due steps as soon as a cluster has `batch_size` samples,
                 the busiest cluster first; the valuing thread never waits for learning

Overload (background only): if a cluster's queue grows beyond `max_backlog` samples because
training falls behind, the queue is thinned to every second sample and the dropped ones are
counted (`skipped`); nothing is dropped silently. `max_backlog` also bounds staleness: a
valuation is made by a model at most `max_backlog + batch_size` samples behind its cluster.

Pooling (`engine.pooling`, see `models/learner.py`): with `"cluster"` every slot has its own
learner; with `"shared"` and `"global"` every slot holds the same learner (`pooled=True`), a step
of cluster c trains it on c's samples (and c's head under `"shared"`) at c's lr, and every slot
publishes the resulting snapshot (the shared part changed for all). The queues, lr policies,
counters and fast learners stay per cluster. A fast learner is a copy of the whole shared
learner, trained on its cluster's samples only and served for that cluster only; when the
experts would fold it into a pooled learner it is retired instead (one cluster's recent samples
must not overwrite the part every cluster shares).

The training copies are touched only by the thread running a step, under `paused()`, which
waits for the step in flight and holds further steps (state export, restore, close), or between
steps: `hold()` (the engine applies a fit or takes a checkpoint once no step is in flight,
without waiting for one) and fast learners started or ended right after the step in flight.
The background thread runs at a lower OS priority (niceness +10) than the valuing thread.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from streamval.models.drift import AdaptiveLearningRate
from streamval.models.learner import ModelSnapshot, SequenceLearner
from streamval.models.state import as_array

Float32Array = NDArray[np.float32]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Scored:
    """A cluster's labelled events of one segment, in event order, as the valuing side scored
    them: what the cluster's error metrics and drift detectors consume (`Engine._commit`)."""

    ts: IntArray  # event times (ms)
    values: FloatArray  # the observed values
    valuations: FloatArray  # what was served for them
    z: FloatArray  # standardised signed errors (value - valuation) / unit; NaN while warming

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, part: slice) -> Scored:
        return Scored(self.ts[part], self.values[part], self.valuations[part], self.z[part])

    @classmethod
    def empty(cls) -> Scored:
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))


class SampleQueue:
    """Fresh labelled samples of one cluster (window, target, event time), oldest first."""

    def __init__(self, window_shape: tuple[int, int]) -> None:
        self.window_shape = window_shape
        self._blocks: deque[tuple[Float32Array, FloatArray, IntArray]] = deque()
        self.n = 0
        self._ts: IntArray | None = None  # all event times, cached between changes

    def append(self, x: Float32Array, y: FloatArray, ts: IntArray) -> None:
        if len(y):
            self._blocks.append((x, y, ts))
            self.n += len(y)
            self._ts = None

    def times(self) -> IntArray:
        """Event times of the queued samples, oldest first."""
        if self._ts is None:
            self._ts = (
                np.concatenate([b[2] for b in self._blocks])
                if self._blocks
                else np.zeros(0, dtype=np.int64)
            )
        return self._ts

    def pop(self, n: int) -> tuple[Float32Array, FloatArray, IntArray]:
        """The `n` oldest samples (n <= len)."""
        xs, ys, tss = [], [], []
        need = n
        while need:
            x, y, ts = self._blocks[0]
            if len(y) <= need:
                self._blocks.popleft()
                take = len(y)
            else:
                self._blocks[0] = (x[need:], y[need:], ts[need:])
                x, y, ts = x[:need], y[:need], ts[:need]
                take = need
            xs.append(x)
            ys.append(y)
            tss.append(ts)
            need -= take
        self.n -= n
        self._ts = None
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(tss)

    def arrays(self) -> tuple[Float32Array, FloatArray, IntArray]:
        if not self._blocks:
            return (
                np.zeros((0, *self.window_shape), dtype=np.float32),
                np.zeros(0),
                np.zeros(0, dtype=np.int64),
            )
        xs, ys, tss = zip(*self._blocks, strict=True)
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(tss)

    def due_times(self, batch_size: int) -> list[int]:
        """Per full step in the queue, the latest event time of its samples."""
        if self.n < batch_size:
            return []
        ts = self.times()
        full = (len(ts) // batch_size) * batch_size
        return [int(t) for t in ts[:full].reshape(-1, batch_size).max(axis=1)]

    def thin(self) -> int:
        """Keep every second sample (overload); returns how many were dropped."""
        x, y, ts = self.arrays()
        keep = slice(1, None, 2)
        self._blocks = deque([(x[keep], y[keep], ts[keep])])
        dropped = self.n - len(y[keep])
        self.n = len(y[keep])
        self._ts = None
        return dropped

    def take_all(self, other: SampleQueue) -> None:
        """Move `other`'s samples behind these (a cluster merged into this one)."""
        for block in other._blocks:
            self.append(*block)
        other._blocks.clear()
        other.n = 0
        other._ts = None


@dataclass
class _Slot:
    cluster: int
    learner: SequenceLearner
    policy: AdaptiveLearningRate
    queue: SampleQueue
    snapshot: ModelSnapshot
    reset_pending: bool = False
    trained: int = 0  # fresh samples trained by this slot's learner
    skipped: int = 0  # samples dropped by overload thinning
    steps: int = 0  # optimizer steps made on this cluster's samples
    fast: SequenceLearner | None = None  # a fast learner after a shock alarm (drift response)
    fast_lr: float = 0.0
    fast_snapshot: ModelSnapshot | None = None


# The pooled model's id where a cluster's id would be (`Trainer.start_pool`).
POOL = -1


class Trainer:
    """Owns the training copy of every cluster's model and publishes snapshots."""

    def __init__(
        self,
        *,
        batch_size: int,
        max_backlog: int,
        background: bool,
        pooled: bool = False,
        catch_up_steps: int = 1,
    ) -> None:
        self.batch_size = batch_size
        self.pooled = pooled
        self.max_backlog = max(max_backlog, batch_size)
        self.background = background
        self.catch_up_steps = max(1, catch_up_steps)
        self._cond = threading.Condition()
        self._slots: dict[int, _Slot] = {}
        self._in_flight: int | None = None
        self._paused = 0
        self._held = False  # see `hold`
        self._ops: list[Callable[[], None]] = []  # see `_between_steps`
        self._closed = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        # The pooled model (`start_pool`): its own queue of every cluster's samples.
        self._pool: _Slot | None = None

    # -- clusters ------------------------------------------------------------------------------

    def add(self, cluster: int, learner: SequenceLearner, policy: AdaptiveLearningRate) -> None:
        """A new cluster with its training copy and lr policy (under `paused()` when running).
        Pooled: `learner` is the shared one; it gives the cluster a head if it keeps heads."""
        if self.pooled:
            learner.add_cluster(cluster, sorted(self._slots))
        shape = (learner.seq_len, learner.n_inputs)
        self._slots[cluster] = _Slot(
            cluster, learner, policy, SampleQueue(shape), learner.snapshot()
        )

    def start_pool(self, cluster: int, seed: int, policy: AdaptiveLearningRate) -> None:
        """The pooled model: a copy of `cluster`'s model that from now on learns every
        cluster's fresh samples, in the order they come, in steps of its own (the single
        model's training, beside the clusters' own). Once; never when the clusters share one
        network already."""
        if self.pooled or self._pool is not None or cluster not in self._slots:
            return
        source = self._slots[cluster].learner

        def start() -> None:
            if self._pool is None:
                learner = source.fork(seed)
                shape = (learner.seq_len, learner.n_inputs)
                self._pool = _Slot(POOL, learner, policy, SampleQueue(shape), learner.snapshot())

        self._between_steps(start)

    def pool_snapshot(self) -> ModelSnapshot | None:
        """The latest published pooled model (None: there is none)."""
        return None if self._pool is None else self._pool.snapshot

    def pool_counts(self) -> tuple[int, int, int] | None:
        """(queued, trained, skipped) samples of the pooled model (None: there is none)."""
        pool = self._pool
        return None if pool is None else (pool.queue.n, pool.trained, pool.skipped)

    def _work(self) -> list[_Slot]:
        """Every slot that trains: the clusters' by id, then the pooled model's."""
        slots = [self._slots[c] for c in sorted(self._slots)]
        return [*slots, *([self._pool] if self._pool is not None else [])]

    def spawn(self, parent: int, seed: int) -> SequenceLearner:
        """The training copy of a new cluster split from `parent`: a fork of the parent's
        learner, or the shared learner itself when pooled."""
        learner = self._slots[parent].learner
        return learner if self.pooled else learner.fork(seed)

    def shared_learner(self) -> SequenceLearner | None:
        """The learner every cluster shares (None unless pooled)."""
        if not self.pooled or not self._slots:
            return None
        return next(iter(self._slots.values())).learner

    def updates(self, cluster: int) -> int:
        """Optimizer steps made on a cluster's samples since it was created."""
        return self._slots[cluster].steps

    def remove(self, cluster: int, successor: int | None) -> None:
        """Drop a cluster; its queued samples move to `successor` (still trained exactly once)."""
        slot = self._slots.pop(cluster)
        if successor is not None and successor in self._slots:
            self._slots[successor].queue.take_all(slot.queue)

    def learner(self, cluster: int) -> SequenceLearner:
        return self._slots[cluster].learner

    def policy(self, cluster: int) -> AdaptiveLearningRate:
        return self._slots[cluster].policy

    def snapshot(self, cluster: int) -> ModelSnapshot:
        """The latest published model of a cluster."""
        return self._slots[cluster].snapshot

    def counts(self, cluster: int) -> tuple[int, int, int]:
        """(queued, trained, skipped) samples of a cluster."""
        slot = self._slots[cluster]
        return slot.queue.n, slot.trained, slot.skipped

    # -- the valuing side ---------------------------------------------------------------------

    def submit(self, cluster: int, x: Float32Array, y: FloatArray, ts: IntArray) -> None:
        """Queue fresh samples (in order); in background mode wake the trainer."""
        self._raise_error()
        with self._cond:
            self._queue(self._slots[cluster], x, y, ts)

    def submit_pool(self, x: Float32Array, y: FloatArray, ts: IntArray) -> None:
        """Queue fresh samples of any cluster for the pooled model, in the order of their events
        (so that its steps do not depend on how the events were cut into batches); nothing
        without a pooled model."""
        self._raise_error()
        with self._cond:
            if self._pool is not None and len(y):
                self._queue(self._pool, x, y, ts)

    def _queue(self, slot: _Slot, x: Float32Array, y: FloatArray, ts: IntArray) -> None:
        slot.queue.append(x, y, ts)
        if self.background:
            while slot.queue.n > self.max_backlog:
                slot.skipped += slot.queue.thin()
            if slot.queue.n >= self.batch_size:
                self._start()
                self._cond.notify_all()

    # Whether the engine should hand over its scored events (`submit_scored`): only where the
    # cluster's metrics and detectors run elsewhere (a valuer's `RemoteTrainer`).
    wants_scored = False

    def submit_scored(
        self, cluster: int, x: Float32Array, y: FloatArray, ts: IntArray, scored: Scored
    ) -> None:
        """`submit` the samples (if any); a trainer that learns here ignores `scored` (the
        engine keeps the cluster's metrics and detectors itself)."""
        if len(y):
            self.submit(cluster, x, y, ts)

    def boost(self, cluster: int) -> None:
        """A drift alarm: the policy restarts its boost; Adam's momentum is reset before the next
        step of this cluster (when the policy asks for it)."""
        with self._cond:
            slot = self._slots[cluster]
            slot.policy.trigger()
            if slot.policy.reset_moments_on_drift and slot.policy.boost > 1.0:
                slot.reset_pending = True

    def start_fast(self, cluster: int, seed: int, lr: float) -> None:
        """A fast learner for this cluster: a deep copy of its model and optimizer (no shared
        tensors), trained from now on the cluster's fresh samples only, at `lr`. Until the copy
        is made (after a step in flight) it has no snapshot, and the stable model, which it
        would equal, stands in."""
        slot = self._slots[cluster]

        def start() -> None:
            slot.fast = slot.learner.fork(seed)
            slot.fast_lr = lr
            slot.fast_snapshot = slot.fast.snapshot()

        self._between_steps(start)

    def end_fast(self, cluster: int, fold: bool) -> None:
        """The fast learner leaves; if `fold`, the stable model takes its weights first."""
        slot = self._slots[cluster]

        def end() -> None:
            if slot.fast is not None and fold and not self.pooled:
                slot.learner.adopt(slot.fast)
                slot.snapshot = slot.learner.snapshot()
            slot.fast, slot.fast_snapshot, slot.fast_lr = None, None, 0.0

        self._between_steps(end)

    def _between_steps(self, op: Callable[[], None]) -> None:
        """Run `op` on the training copies now if no step is in flight, else right after it
        (the trainer runs it before it starts another): the valuing thread never waits for a
        step, which may be slow on a busy machine, the trainer being niced."""
        with self._cond:
            if self._in_flight is None:
                op()
            else:
                self._ops.append(op)

    def fast_snapshot(self, cluster: int) -> ModelSnapshot | None:
        """The latest published fast learner of a cluster (None: none lives)."""
        return self._slots[cluster].fast_snapshot

    def due_times(self, cluster: int) -> list[int]:
        """Sync mode: the latest event time of each full step waiting in the cluster's queue."""
        return self._slots[cluster].queue.due_times(self.batch_size)

    def queued(self, cluster: int) -> int:
        return self._slots[cluster].queue.n

    def partial_latest(self, cluster: int) -> int | None:
        """Sync mode: the latest event time among the samples of the not yet full step."""
        queue = self._slots[cluster].queue
        n = queue.n % self.batch_size
        if n == 0:
            return None
        return int(queue.times()[-n:].max())

    def wake(self) -> None:
        """Background mode: start on queued work (after a restore)."""
        if self.background:
            with self._cond:
                if any(s.queue.n >= self.batch_size for s in self._work()):
                    self._start()
                    self._cond.notify_all()

    def run_due(self, ts: float | None = None) -> dict[int, int]:
        """Sync mode: before an event at time `ts`, run the full steps due by then: in queue
        order, up to the last one whose latest sample time is not `ts` (None: every one); the
        pooled model's (`POOL`) after the clusters'."""
        steps: dict[int, int] = {}
        for slot in self._work():
            cluster = slot.cluster
            dues = slot.queue.due_times(self.batch_size)
            run = [i for i, due in enumerate(dues) if ts is None or due != ts]
            for _ in range(run[-1] + 1 if run else 0):
                self._step(slot, *slot.queue.pop(self.batch_size)[:2])
                steps[cluster] = steps.get(cluster, 0) + 1
        return steps

    def step_cluster(self, cluster: int) -> bool:
        """Sync mode: one step of `cluster` if it has a full batch queued; whether it ran (a
        learner publishing a snapshot every k steps steps its clusters one at a time)."""
        slot = self._slots[cluster]
        if slot.queue.n < self.batch_size:
            return False
        self._step(slot, *slot.queue.pop(self.batch_size)[:2])
        return True

    def drain(self) -> None:
        """Wait until no full step is queued or in flight (background), or run them (sync)."""
        if not self.background:
            self.run_due()
            return
        with self._cond:
            while self._in_flight is not None or (
                self._error is None and any(s.queue.n >= self.batch_size for s in self._work())
            ):
                self._cond.wait(timeout=0.5)
        self._raise_error()

    # -- the training side --------------------------------------------------------------------

    def _step(self, slot: _Slot, x: Float32Array, y: FloatArray) -> None:
        if slot.reset_pending:
            slot.learner.reset_moments()
            slot.reset_pending = False
        slot.learner.step(
            x,
            y,
            lr=slot.policy.lr,
            replay_fraction=slot.policy.replay_fraction,
            cluster=slot.cluster,
        )
        self._publish(slot, slot.learner.snapshot())
        if slot.fast is not None:
            slot.fast.step(x, y, lr=slot.fast_lr, replay_fraction=0.0, cluster=slot.cluster)
            slot.fast_snapshot = slot.fast.snapshot()
        slot.policy.on_update()
        slot.trained += len(y)
        slot.steps += 1

    def _publish(self, slot: _Slot, snapshot: ModelSnapshot) -> None:
        """A step's snapshot: the slot's, or every slot's when they share the learner."""
        for other in self._slots.values() if self.pooled else (slot,):
            other.snapshot = snapshot

    def _start(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="streamval-trainer", daemon=True)
            self._thread.start()
            # An engine never closed: stopped at interpreter exit, before the daemon thread would
            # be cut off inside a torch call (which aborts the process).
            atexit.register(self.close)

    def _next(self) -> int | None:
        ready = [(s.queue.n, s.cluster) for s in self._work() if s.queue.n >= self.batch_size]
        return max(ready)[1] if ready else None

    def _run(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                while not self._closed and (self._paused or self._next() is None):
                    self._cond.wait()
                if self._closed:
                    return
                cluster = self._next()
                assert cluster is not None
                slot = self._slots[cluster] if cluster != POOL else self._pool
                assert slot is not None
                # Behind by several steps: train them as one (the replay share stays that of
                # one step), which costs less per sample than the subsampling it avoids.
                steps = min(slot.queue.n // self.batch_size, self.catch_up_steps)
                x, y, _ = slot.queue.pop(steps * self.batch_size)
                lr, share = slot.policy.lr, slot.policy.replay_fraction
                reset, slot.reset_pending = slot.reset_pending, False
                fast, fast_lr = slot.fast, slot.fast_lr
                self._in_flight = cluster
            try:
                if reset:
                    slot.learner.reset_moments()
                slot.learner.step(x, y, lr=lr, replay_fraction=share, cluster=cluster)
                snapshot = slot.learner.snapshot()
                fast_snapshot = None
                if fast is not None:
                    fast.step(x, y, lr=fast_lr, replay_fraction=0.0, cluster=cluster)
                    fast_snapshot = fast.snapshot()
            except BaseException as exc:  # surfaced on the valuing thread's next call
                with self._cond:
                    self._error = exc
                    self._in_flight = None
                    self._cond.notify_all()
                return
            with self._cond:
                self._publish(slot, snapshot)
                if fast is not None and slot.fast is fast:
                    slot.fast_snapshot = fast_snapshot
                slot.policy.on_update()
                slot.trained += len(y)
                slot.steps += 1
                ops, self._ops = self._ops, []
                for op in ops:
                    try:
                        op()
                    except BaseException as exc:  # surfaced on the valuing thread's next call
                        self._error = exc
                self._in_flight = None
                self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("the background trainer failed") from self._error

    def hold(self) -> bool:
        """Ask the trainer to start no new step, without waiting for the one in flight; whether
        none is in flight now. The valuing thread uses it for work that needs the training
        copies but can wait a batch (applying a fit): it never waits for a step, which may be
        slow on a busy machine, the trainer being niced. Ends with `release()`."""
        with self._cond:
            if not self._held:
                self._held = True
                self._paused += 1
            return self._in_flight is None

    def release(self) -> None:
        """End a `hold()`; the trainer resumes."""
        with self._cond:
            if self._held:
                self._held = False
                self._paused -= 1
                self._cond.notify_all()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No step runs inside: waits for the step in flight, holds the next ones."""
        with self._cond:
            self._paused += 1
            while self._in_flight is not None:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()

    def close(self) -> None:
        """Stop the background thread (the step in flight finishes first). Queued samples stay;
        a later `submit` starts a new thread."""
        thread = self._thread
        atexit.unregister(self.close)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            self._thread = None
            self._closed = False

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Every cluster's training copy (None when pooled: see `shared_state_dict`), policy,
        queue and counters (call under `paused()`)."""
        return {str(c): self._slot_state(slot) for c, slot in self._slots.items()}

    def _slot_state(self, slot: _Slot) -> dict[str, Any]:
        x, y, ts = slot.queue.arrays()
        return {
            "learner": None if self.pooled else slot.learner.state_dict(),
            "policy": slot.policy.state_dict(),
            "queue_x": x.copy(),
            "queue_y": y.copy(),
            "queue_ts": ts.copy(),
            "reset_pending": slot.reset_pending,
            "trained": slot.trained,
            "skipped": slot.skipped,
            "steps": slot.steps,
            "fast": None if slot.fast is None else slot.fast.state_dict(),
            "fast_lr": slot.fast_lr,
        }

    def pool_state_dict(self) -> dict[str, Any] | None:
        """The pooled model's state (None: there is none; call under `paused()`)."""
        return None if self._pool is None else self._slot_state(self._pool)

    def load_pool(self, state: dict[str, Any] | None, policy: AdaptiveLearningRate) -> None:
        """Restore the pooled model (None: there is none), shaped like the clusters' models,
        after `load_slot` (call under `paused()`)."""
        self._pool = None
        if state is None:
            return
        if self.pooled or not self._slots:
            raise ValueError("pooled model: in the state, but the engine has no place for it")
        like = next(iter(self._slots.values())).learner
        learner = like.fork(like.seed)
        shape = (learner.seq_len, learner.n_inputs)
        pool = _Slot(POOL, learner, policy, SampleQueue(shape), learner.snapshot())
        self._restore(pool, state)
        self._pool = pool

    def shared_state_dict(self) -> dict[str, Any] | None:
        """The shared learner's state (None unless pooled; call under `paused()`)."""
        learner = self.shared_learner()
        return None if learner is None else learner.state_dict()

    def load_shared(self, state: dict[str, Any] | None) -> None:
        """Restore the shared learner (pooled; before `load_slot`; call under `paused()`)."""
        learner = self.shared_learner()
        if (learner is None) != (state is None):
            raise ValueError("shared learner: present in only one of the state and the engine")
        if learner is not None and state is not None:
            learner.load_state_dict(state)

    def load_slot(self, cluster: int, state: dict[str, Any]) -> None:
        """Restore one cluster added with `add` (call under `paused()`; pooled: after
        `load_shared`)."""
        self._restore(self._slots[cluster], state)

    def _restore(self, slot: _Slot, state: dict[str, Any]) -> None:
        cluster = slot.cluster
        if (state["learner"] is None) != self.pooled:
            raise ValueError(f"cluster {cluster}: a training copy where pooling says otherwise")
        if state["learner"] is not None:
            slot.learner.load_state_dict(state["learner"])
        slot.policy.load_state_dict(state["policy"])
        x = as_array(state["queue_x"], np.float32)
        y = as_array(state["queue_y"], np.float64).reshape(-1)
        ts = as_array(state["queue_ts"], np.int64).reshape(-1)
        if x.shape != (len(y), *slot.queue.window_shape) or len(ts) != len(y):
            raise ValueError(f"cluster {cluster}: queued samples of shape {x.shape}")
        slot.queue = SampleQueue(slot.queue.window_shape)
        slot.queue.append(x.copy(), y.copy(), ts.copy())
        slot.reset_pending = bool(state["reset_pending"])
        slot.trained = int(state["trained"])
        slot.skipped = int(state["skipped"])
        slot.steps = int(state["steps"])
        slot.snapshot = slot.learner.snapshot()
        slot.fast, slot.fast_snapshot = None, None
        slot.fast_lr = float(state["fast_lr"])
        if state["fast"] is not None:
            slot.fast = slot.learner.fork(slot.learner.seed)
            slot.fast.load_state_dict(state["fast"])
            slot.fast_snapshot = slot.fast.snapshot()


# Niceness added to the trainer thread: the valuing thread and the Kafka client come first on a
# busy machine, and training takes the CPU they leave (falling behind is then counted, not
# hidden: see the overload rule above).
_TRAINER_NICENESS = 10


def _lower_priority() -> None:
    """Give the calling thread a lower scheduling priority (Linux threads have their own)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + _TRAINER_NICENESS
        )
    except (AttributeError, OSError):  # not Linux, or not allowed: run at the same priority
        pass


class SampleSink(Protocol):
    """Where a valuer's labelled samples go: a cluster's windows, targets and event times, the
    clusters there are now (for the cluster -> partition map), and the cluster's scored events
    (its owner keeps the cluster's error metrics and runs its drift detectors on them)."""

    def __call__(
        self,
        cluster: int,
        *,
        clusters: list[int],
        x: Float32Array,
        y: FloatArray,
        ts: IntArray,
        scored: Scored,
    ) -> None: ...


class RemoteTrainer(Trainer):
    """A valuer's trainer (`consumer.role = "valuer"`): the same interface for the engine, but
    the samples go to `sink` (the training-samples topic) instead of a local queue, and each
    cluster's training copy mirrors the latest model a learner published (`offer`, applied
    between batches by `apply_offered`). It never trains; a new cluster split from a parent
    starts as a fork of the parent's mirror, so it is served the parent's model until its own
    learner publishes one. The scored events travel with the samples: the cluster's learner,
    which sees every valuer's, keeps its error metrics and runs its drift detection (and boosts
    its lr policy). The valuing side's own alarms change nothing here; the fast-learner response
    needs a learner of its own and is not run (its start and end are ignored). The pooled model
    is a mirror too: it starts as the engine starts it (a fork of the split cluster's), its
    samples (every cluster's) go to the sink under the id `POOL`, whose learner trains it like a
    cluster, and the latest snapshot published under that id replaces it."""

    wants_scored = True

    def __init__(self, *, sink: SampleSink, batch_size: int, max_backlog: int) -> None:
        super().__init__(batch_size=batch_size, max_backlog=max_backlog, background=True)
        self.sink = sink
        self._offered: dict[int, tuple[int, dict[str, Any]]] = {}  # cluster -> (version, state)
        self._served: dict[int, int] = {}  # cluster -> version of the learner's snapshot served
        self.sent = 0  # samples handed to the sink
        self.applied = 0  # snapshots applied
        self.refused = 0  # snapshots that do not fit this engine's models (other settings)
        self.refusal = ""  # why the last one was refused

    def add(self, cluster: int, learner: SequenceLearner, policy: AdaptiveLearningRate) -> None:
        super().add(cluster, learner, policy)
        self._apply(cluster)

    def submit(self, cluster: int, x: Float32Array, y: FloatArray, ts: IntArray) -> None:
        """Send the samples on (in order); nothing is queued here."""
        self.submit_scored(cluster, x, y, ts, Scored.empty())

    def submit_scored(
        self, cluster: int, x: Float32Array, y: FloatArray, ts: IntArray, scored: Scored
    ) -> None:
        """Send the samples and the scored events on (in order); nothing is queued here."""
        if not len(y) and not len(scored):
            return
        self.sink(cluster, clusters=sorted(self._slots), x=x, y=y, ts=ts, scored=scored)
        self.sent += len(y)

    def start_fast(self, cluster: int, seed: int, lr: float) -> None:
        return None

    def submit_pool(self, x: Float32Array, y: FloatArray, ts: IntArray) -> None:
        """Send every cluster's samples on to the pooled model's learner (once there is one)."""
        if self._pool is not None:
            self.submit_scored(POOL, x, y, ts, Scored.empty())

    def start_pool(self, cluster: int, seed: int, policy: AdaptiveLearningRate) -> None:
        super().start_pool(cluster, seed, policy)
        self._apply(POOL)

    def pool_counts(self) -> tuple[int, int, int] | None:
        """None: the mirror trains nothing (its learner counts what it trains)."""
        return None

    def end_fast(self, cluster: int, fold: bool) -> None:
        return None

    def offer(self, cluster: int, version: int, learner_state: dict[str, Any]) -> None:
        """A learner's snapshot of `cluster` (any thread may call; applied between batches)."""
        with self._cond:
            held = self._offered.get(cluster)
            if held is None or version > held[0]:
                self._offered[cluster] = (version, learner_state)

    def apply_offered(self) -> int:
        """Serve the newest offered snapshots of the clusters this engine has (the valuing
        thread, between batches); how many were applied."""
        with self._cond:
            clusters = [
                c
                for c in self._offered
                if c in self._slots or (c == POOL and self._pool is not None)
            ]
        return sum(self._apply(c) for c in clusters)

    def _apply(self, cluster: int) -> bool:
        with self._cond:
            held = self._offered.get(cluster)
            slot = self._pool if cluster == POOL else self._slots[cluster]
            if held is None or slot is None:
                return False
            del self._offered[cluster]
            if held[0] <= self._served.get(cluster, -1):
                return False
            self._served[cluster] = held[0]
        mirror = slot.learner.clone()  # a state that does not fit leaves the served one alone
        try:
            mirror.load_state_dict(held[1])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            self.refused += 1
            self.refusal = f"cluster {cluster}, version {held[0]}: {type(exc).__name__}: {exc}"
            return False
        slot.learner = mirror
        slot.snapshot = mirror.snapshot()
        slot.steps = mirror.updates
        self.applied += 1
        return True

    def remove(self, cluster: int, successor: int | None) -> None:
        super().remove(cluster, successor)
        self._served.pop(cluster, None)
