"""One clustering for several processes: the fitted clustering as data, and its JSON form.

The clustering owner of a deployment publishes `SharedClustering` on the compacted `clusterings`
topic; every other process assigns its assets with the latest version it has read
(`Engine.adopt_clustering`). The message carries what assignment needs (the profile space:
attributes, categories, scalers, block scales and weights; the centroids, their ids and each
cluster's spread, which the distance to it divides by) and
what keeps models continuous across versions (each cluster's parent, each removed cluster's
successor). JSON only, never pickles: a foreign or damaged message raises `ValueError`.

>>> import numpy as np
>>> from streamval.models.profiles import ProfileSpace
>>> shared = SharedClustering(version=3, owner="a", ids=[0, 2], centroids=np.zeros((2, 0)),
...     next_id=3, space=ProfileSpace().state_dict(), parents={2: 0})
>>> back = SharedClustering.from_json(shared.to_json())
>>> back.version, back.ids, back.parents
(3, [0, 2], {2: 0})
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamval.models.profiles import ProfileSpace

FORMAT = "streamval.clustering/1"
_ARRAYS = ("population", "mean", "scale", "block_scale", "weights")


@dataclass
class SharedClustering:
    """A published clustering: `version` increases with every fit the owner publishes."""

    version: int
    owner: str
    ids: list[int]
    centroids: NDArray[np.float64]  # one row per id, in `ids` order
    next_id: int  # the id the next new cluster gets (ids are never reused)
    space: dict[str, Any]  # `ProfileSpace.state_dict()`
    parents: dict[int, int] = field(default_factory=dict)  # cluster -> the one it was copied from
    successors: dict[int, int] = field(default_factory=dict)  # removed cluster -> its heir
    created_ms: int = 0
    # per id and coordinate: the variance the distance divides by (None: ones, i.e. Euclidean)
    spread: NDArray[np.float64] | None = None

    def profile_space(self) -> ProfileSpace:
        """The profile space to transform assets with."""
        space = ProfileSpace()
        space.load_state_dict(self.space)
        return space

    def to_json(self) -> bytes:
        """The message value (UTF-8 JSON; arrays as lists of floats)."""
        space = {
            name: value.tolist() if isinstance(value, np.ndarray) else value
            for name, value in self.space.items()
        }
        body = {
            "format": FORMAT,
            "version": self.version,
            "owner": self.owner,
            "created_ms": self.created_ms,
            "ids": list(self.ids),
            "centroids": np.asarray(self.centroids, dtype=np.float64).tolist(),
            **(
                {}
                if self.spread is None
                else {"spread": np.asarray(self.spread, dtype=np.float64).tolist()}
            ),
            "next_id": self.next_id,
            "space": space,
            "parents": {str(k): v for k, v in sorted(self.parents.items())},
            "successors": {str(k): v for k, v in sorted(self.successors.items())},
        }
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> SharedClustering:
        """Parse and check a message value; `ValueError` says what is wrong with it."""
        body = _body(data, FORMAT)
        try:
            ids = [_int(i) for i in body["ids"]]
            if not ids or len(set(ids)) != len(ids):
                raise ValueError(f"cluster ids {ids!r}")
            space_in = body["space"]
            if not isinstance(space_in, Mapping):
                raise ValueError("space is not an object")
            space = dict(space_in)
            for name in _ARRAYS:
                space[name] = _floats(space[name])
                if not np.all(np.isfinite(space[name])):
                    raise ValueError(f"space {name} is not finite")
            ProfileSpace().load_state_dict(space)  # raises on inconsistent sizes
            dim = len(space["mean"]) + sum(len(c) for c in space["categories"])
            centroids = np.array(body["centroids"], dtype=np.float64).reshape(len(ids), dim)
            if not np.all(np.isfinite(centroids)):
                raise ValueError("centroids are not finite")
            spread = None
            if body.get("spread") is not None:
                spread = np.array(body["spread"], dtype=np.float64).reshape(len(ids), dim)
                if not np.all(np.isfinite(spread) & (spread > 0)):
                    raise ValueError("spreads are not finite and positive")
            shared = cls(
                version=_int(body["version"]),
                owner=str(body["owner"]),
                ids=ids,
                centroids=centroids,
                next_id=_int(body["next_id"]),
                space=space,
                parents={_int(k): _int(v) for k, v in dict(body.get("parents", {})).items()},
                successors={_int(k): _int(v) for k, v in dict(body.get("successors", {})).items()},
                created_ms=_int(body.get("created_ms", 0)),
                spread=spread,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or wrong field: {type(exc).__name__}: {exc}") from exc
        if shared.next_id <= max(ids):
            raise ValueError(f"next_id {shared.next_id} is not above the ids {ids}")
        return shared


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not an integer")
    if isinstance(value, str):
        return int(value)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise TypeError(f"{value!r} is not an integer")
    if not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not an integer")
    return int(value)


def _floats(value: Any) -> NDArray[np.float64]:
    if not isinstance(value, list):
        raise TypeError(f"{type(value).__name__} where a list of numbers belongs")
    return np.asarray(value, dtype=np.float64).reshape(-1)


PROFILE_FORMAT = "streamval.profile/1"
_STAT_NAMES = ("change_mean", "change_std", "autocorrelation")


@dataclass
class AssetProfile:
    """One asset's profile material, as a process publishes it on the profiles topic so the
    clustering owner can fit on every asset of the deployment, not only its own partitions'.

    `stats`/`counts`: change mean, std, autocorrelation and the observations behind each
    (`series_vector`/`series_counts`, NaN where unknown); `features`: name -> (mean, count) of
    each dynamic feature; `attributes`: the static attributes (numbers or strings).
    """

    asset: str
    instance: str
    n_values: int
    stats: list[float]
    counts: list[float]
    features: dict[str, tuple[float, float]] = field(default_factory=dict)
    attributes: dict[str, float | str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {
            "format": PROFILE_FORMAT,
            "asset": self.asset,
            "instance": self.instance,
            "n_values": self.n_values,
            "stats": dict(zip(_STAT_NAMES, (_finite(v) for v in self.stats), strict=True)),
            "counts": dict(zip(_STAT_NAMES, self.counts, strict=True)),
            "features": {k: [_finite(m), c] for k, (m, c) in sorted(self.features.items())},
            "attributes": dict(sorted(self.attributes.items())),
        }
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> AssetProfile:
        """Parse and check a message value; `ValueError` says what is wrong with it."""
        body = _body(data, PROFILE_FORMAT)
        try:
            attributes: dict[str, float | str] = {}
            for name, value in dict(body["attributes"]).items():
                if isinstance(value, str):
                    attributes[str(name)] = value
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    attributes[str(name)] = float(value)
                else:
                    raise TypeError(f"attribute {name!r}: {value!r}")
            return cls(
                asset=str(body["asset"]),
                instance=str(body["instance"]),
                n_values=_int(body["n_values"]),
                stats=[_number(body["stats"][n]) for n in _STAT_NAMES],
                counts=[_number(body["counts"][n]) for n in _STAT_NAMES],
                features={
                    str(k): (_number(v[0]), _number(v[1]))
                    for k, v in dict(body["features"]).items()
                },
                attributes=attributes,
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"missing or wrong field: {type(exc).__name__}: {exc}") from exc


def _body(data: bytes | None, fmt: str) -> dict[str, Any]:
    """A message value's JSON object, checked to be of format `fmt` (`ValueError` if not)."""
    if data is None:
        raise ValueError("empty message")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != fmt:
        got = body.get("format") if isinstance(body, dict) else type(body).__name__
        raise ValueError(f"format {got!r}, expected {fmt!r}")
    return body


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _number(value: Any) -> float:
    """A float from JSON; null is NaN (unknown)."""
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)
