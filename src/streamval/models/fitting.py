"""A clustering fit as a job that runs away from the valuing thread.

The engine copies what a fit needs into a `FitJob` (the sampled profiles, the profile space and
the clustering in use) and, with background training, runs it in a fitting subprocess
(`FitRunner`): scipy's hierarchical linkage holds the GIL for up to a few hundred milliseconds
on 2,000 profiles, which a fitting *thread* turned into pauses of the valuing thread. This module
imports no torch, so the subprocess starts in about a second and stays small.
"""

from __future__ import annotations

import contextlib
import pickle
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from streamval.models.clustering import AssetClustering, FitResult
from streamval.models.profiles import ProfileInputs, ProfileSpace

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass
class Fitted:
    """A fit's outcome: the profile space, the clustering fitted in it, the fit's labels."""

    space: ProfileSpace
    clustering: AssetClustering
    fit: FitResult


@dataclass
class FitJob:
    """Everything a fit needs, copied from the engine (picklable)."""

    pseudo_count: float
    previous: ProfileSpace
    clustering: AssetClustering  # a copy of the one in use, fitted in place
    inputs: ProfileInputs
    old: IntArray

    def run(self) -> Fitted:
        space = ProfileSpace(self.pseudo_count)
        previous, clustering = self.previous, self.clustering

        def weigh(blocks: list[FloatArray]) -> Sequence[float]:
            """The block weights; those in use are a candidate while the blocks are the same."""
            same = clustering.fitted and previous.blocks == space.blocks
            current = previous.weights.tolist() if same else None
            return clustering.block_weights(blocks, current)

        x = space.fit(self.inputs, weigh=weigh)
        return Fitted(space, clustering, clustering.fit(x, self.old))


class FitRunner:
    """One fitting subprocess (`python -m streamval.models.fitting`), started ahead of the first
    fit (`start`) or by it, and reused: jobs and results go through its stdin and stdout as
    length-prefixed pickles (a trusted child of this process). A fresh interpreter rather than
    `multiprocessing`, which would fork a process with threads or re-import the caller's main
    module."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one job at a time
        self._pending: Future[Fitted] | None = None
        self._finalizer: weakref.finalize[Any, FitRunner] | None = None

    def submit(self, job: FitJob) -> Future[Fitted]:
        """Run `job` in the subprocess; the future completes when its result is back."""
        with self._lock:
            if self._pending is not None and not self._pending.done():
                raise RuntimeError("a fit is already running")
            future: Future[Fitted] = Future()
            self._pending = future
            try:
                proc = self._start()
            except Exception as exc:
                future.set_exception(exc)
                return future
            # The job is written from the thread too: a pipe holds 64 kB, and until a new
            # subprocess has imported its modules (about a second) the write would block.
            threading.Thread(
                target=self._exchange, args=(proc, job, future), name="streamval-fit", daemon=True
            ).start()
            return future

    def start(self) -> None:
        """Start the subprocess ahead of its first job: its imports take a second on a quiet
        machine and 20 s on a loaded one, which would otherwise delay the first fit."""
        with self._lock:
            self._start()

    @property
    def running(self) -> bool:
        """Whether the subprocess is up."""
        return self._proc is not None and self._proc.poll() is None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "streamval.models.fitting"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            # An engine dropped without `close()` (or the interpreter exiting) ends it too.
            self._finalizer = weakref.finalize(self, _kill, self._proc)
        return self._proc

    def _exchange(self, proc: subprocess.Popen[bytes], job: FitJob, future: Future[Fitted]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _write(proc.stdin, job)
            ok, value = _read(proc.stdout)
        except Exception as exc:  # the subprocess died or was stopped
            future.set_exception(RuntimeError(f"the fitting subprocess failed: {exc}"))
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(RuntimeError(f"the fit failed: {value}"))

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        if proc.stdin is not None:
            proc.stdin.close()  # the subprocess ends at end of input
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        """Stop the subprocess (a running fit finishes first; its result is dropped)."""
        with self._lock:
            self._stop()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End a fitting subprocess at once and close its pipes."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _write(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("end of stream")
    (size,) = struct.unpack("<Q", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("end of stream")
    return pickle.loads(data)  # only ever written by this module in the parent or the child


def _serve() -> None:
    """The subprocess: fit each job read from stdin, write (ok, result or error) to stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the result stream
    while True:
        try:
            job = _read(stdin)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, job.run())
        except Exception as exc:
            reply = (False, f"{type(exc).__name__}: {exc}")
        try:
            _write(stdout, reply)
        except (BrokenPipeError, OSError):  # the parent has gone: nobody wants the result
            return


if __name__ == "__main__":
    _serve()
