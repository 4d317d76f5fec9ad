"""Checkpoints: the engine's learned state saved atomically with the input offsets it reflects.

On start the service restores the latest checkpoint and seeks each assigned partition to the
checkpointed offset, so a `kill -9` loses no learning beyond the last checkpoint: the events
since then are re-read and re-learned. Outputs already published for those events are not
published again (see `ValuationService` recovery).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamval import __version__
from streamval.errors import CheckpointError

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """Engine state and the next offset to read per (topic, partition) when it was taken."""

    engine: dict[str, Any]
    offsets: dict[tuple[str, int], int]
    created_at: float
    group_id: str


class CheckpointStore:
    """Writes `checkpoint.pt` in a directory by write-to-temp, fsync, rename (atomic on POSIX)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / CHECKPOINT_FILE

    def save(
        self, engine_state: dict[str, Any], offsets: dict[tuple[str, int], int], group_id: str
    ) -> float:
        """Persist state and offsets together; returns the checkpoint time (unix seconds)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        created = time.time()
        payload = {
            "format": FORMAT,
            "version": __version__,
            "group_id": group_id,
            "created_at": created,
            "offsets": [
                [topic, partition, offset] for (topic, partition), offset in offsets.items()
            ],
            "engine": engine_state,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
        with tmp.open("wb") as fh:
            fh.write(buffer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return created

    def load(self) -> Checkpoint | None:
        """The latest checkpoint, None if there is none; `CheckpointError` if it is unusable."""
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"checkpoint {self.path} is unreadable: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {self.path} has an unknown format")
        return Checkpoint(
            engine=payload["engine"],
            offsets={(str(t), int(p)): int(o) for t, p, o in payload["offsets"]},
            created_at=float(payload["created_at"]),
            group_id=str(payload["group_id"]),
        )
