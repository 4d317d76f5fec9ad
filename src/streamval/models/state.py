"""Helpers for state trees: leaves that come back as numpy arrays or tensors, RNG states.

A state tree (see `Engine.state_dict`) holds only dicts, lists, None, bool, int, float, str,
numpy arrays and CPU tensors. After a round trip through a checkpoint codec a tensor may come
back as an array or the other way round, so readers accept both. Random generator states are
exported as numbers (a 128-bit PCG64 state as hex strings, since JSON codecs stop at 64 bits).

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> state = rng_state(rng)
>>> a = rng.random()
>>> set_rng_state(rng, state)
>>> rng.random() == a
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import DTypeLike, NDArray


def as_array(value: Any, dtype: DTypeLike | None = None) -> NDArray[Any]:
    """A numpy array from an array, a CPU tensor or a (nested) list."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def as_tensor(value: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor (a copy) from a tensor or an array."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().clone()
    else:
        tensor = torch.from_numpy(np.array(value, copy=True))
    return tensor if dtype is None else tensor.to(dtype)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's state as numbers and strings."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"unsupported bit generator {state.get('bit_generator')!r}")
    return {
        "state": format(int(state["state"]["state"]), "x"),
        "inc": format(int(state["state"]["inc"]), "x"),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore what `rng_state` exported."""
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(str(state["state"]), 16), "inc": int(str(state["inc"]), 16)},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }
