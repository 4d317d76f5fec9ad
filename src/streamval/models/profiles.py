"""Asset profiles: the vectors that clustering compares.

A profile is an asset's static attributes plus summary statistics of its series:

    numeric attributes          standardised (sklearn StandardScaler fitted at each (re-)fit)
    categorical attributes      one-hot (sklearn OneHotEncoder; unseen categories -> all zeros)
    series statistics           mean and std of the scale-free one-step change, its lag-1
                                autocorrelation (mean reversion shows up negative), mean of each
                                dynamic feature; standardised with the numerics

Missing numbers (an attribute the asset lacks, statistics of a series too short) are imputed with
the fitted mean, i.e. 0 after standardisation. `ProfileSpace` fits with scikit-learn and then
transforms single assets with plain numpy (the online assignment runs once per event).

>>> stats = SeriesStats(n_features=0)
>>> for change in (0.01, -0.01, 0.01, -0.01):
...     stats.add_change(change)
>>> round(stats.autocorr(), 2)
-1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from streamval.stream.contract.schema import Attribute

FloatArray = NDArray[np.float64]

# Raw profile numbers are saturated here (their squares must not overflow while scaling), and
# standardised coordinates at _Z_LIMIT: one absurd attribute must not swamp the distances.
_RAW_LIMIT = 1e100
_Z_LIMIT = 1e3


class SeriesStats:
    """Running statistics of an asset's scale-free changes and dynamic features, O(1) per event."""

    __slots__ = ("_feat_count", "_feat_sum", "_last", "_m2", "_mean", "_n", "_n_pairs", "_sum_xy")

    def __init__(self, n_features: int) -> None:
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._last = math.nan
        self._n_pairs = 0
        self._sum_xy = 0.0
        self._feat_sum = np.zeros(n_features)
        self._feat_count = np.zeros(n_features)

    def add_change(self, change: float) -> None:
        """One scale-free change (v_t - v_{t-1}) / scale."""
        if not math.isnan(self._last):
            self._n_pairs += 1
            self._sum_xy += self._last * change
        self._last = change
        self._n += 1
        delta = change - self._mean
        self._mean += delta / self._n
        self._m2 += delta * (change - self._mean)

    def add_features(self, features: FloatArray) -> None:
        """Feature values of one event (NaN = missing)."""
        seen = ~np.isnan(features)
        self._feat_sum[seen] += features[seen]
        self._feat_count[seen] += 1

    @property
    def n(self) -> int:
        return self._n

    def std(self) -> float:
        return math.sqrt(self._m2 / (self._n - 1)) if self._n > 1 else math.nan

    def autocorr(self) -> float:
        """Lag-1 autocorrelation of the changes (about their running mean)."""
        if self._n_pairs < 2 or self._m2 <= 0.0:
            return math.nan
        cov = self._sum_xy / self._n_pairs - self._mean * self._mean
        return max(-1.0, min(1.0, cov / (self._m2 / self._n)))

    def vector(self) -> FloatArray:
        """[change mean, change std, autocorr, feature means...] with NaN where unknown."""
        means = self._feat_sum / np.maximum(self._feat_count, 1.0)
        means[self._feat_count == 0] = np.nan
        head = np.array([self._mean if self._n else math.nan, self.std(), self.autocorr()])
        return np.concatenate([head, means])

    def state(self) -> list[Any]:
        return [
            self._n,
            self._mean,
            self._m2,
            self._last,
            self._n_pairs,
            self._sum_xy,
            self._feat_sum.tolist(),
            self._feat_count.tolist(),
        ]

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> SeriesStats:
        feat_sum = np.asarray(state[6], dtype=np.float64)
        out = cls(len(feat_sum))
        out._n, out._mean, out._m2, out._last = (
            int(state[0]),
            float(state[1]),
            float(state[2]),
            float(state[3]),
        )
        out._n_pairs, out._sum_xy = int(state[4]), float(state[5])
        out._feat_sum = feat_sum
        out._feat_count = np.asarray(state[7], dtype=np.float64)
        return out


class ProfileSpace:
    """The standardised profile space of one clustering fit.

    `fit` learns which attributes exist (numeric vs categorical), their categories and the scaler;
    `transform` maps one asset into the space with numpy only.
    """

    def __init__(self) -> None:
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.categories: list[list[str]] = []
        self.n_stats = 0
        self.mean = np.zeros(0)
        self.scale = np.ones(0)

    def fit(
        self, attributes: Sequence[Mapping[str, Attribute]], stats: Sequence[FloatArray]
    ) -> FloatArray:
        """Fit on the assets' attributes and series-statistics vectors; return their profiles."""
        numeric: set[str] = set()
        categorical: set[str] = set()
        for attrs in attributes:
            for name, value in attrs.items():
                (categorical if isinstance(value, str) else numeric).add(name)
        numeric -= categorical  # an attribute sometimes a string is treated as categorical
        self.numeric = sorted(numeric)
        self.categorical = sorted(categorical)
        self.n_stats = len(stats[0]) if stats else 0
        raw = self._numeric_rows(attributes, stats)
        # Impute before scaling: a column's missing entries take its mean (0 once standardised).
        col_mean = np.zeros(raw.shape[1])
        for j in range(raw.shape[1]):
            seen = raw[~np.isnan(raw[:, j]), j]
            col_mean[j] = seen.mean() if len(seen) else 0.0
        filled = np.where(np.isnan(raw), col_mean, raw)
        scaler = StandardScaler().fit(filled)
        self.mean = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale = np.asarray(scaler.scale_, dtype=np.float64)
        if self.categorical:
            cats = [[str(a.get(name, "")) for name in self.categorical] for a in attributes]
            encoder = OneHotEncoder(handle_unknown="ignore").fit(cats)
            self.categories = [[str(c) for c in cat] for cat in encoder.categories_]
        else:
            self.categories = []
        return np.stack([self.transform(a, s) for a, s in zip(attributes, stats, strict=True)])

    def _numeric_rows(
        self, attributes: Sequence[Mapping[str, Attribute]], stats: Sequence[FloatArray]
    ) -> FloatArray:
        rows = np.full((len(attributes), len(self.numeric) + self.n_stats), np.nan)
        for i, (attrs, st) in enumerate(zip(attributes, stats, strict=True)):
            rows[i, : len(self.numeric)] = [_as_float(attrs.get(name)) for name in self.numeric]
            rows[i, len(self.numeric) :] = st[: self.n_stats]
        clipped: FloatArray = np.clip(rows, -_RAW_LIMIT, _RAW_LIMIT)
        return clipped

    def transform(self, attributes: Mapping[str, Attribute], stats: FloatArray) -> FloatArray:
        """One asset's profile vector (numpy only; unknown values become the fitted mean)."""
        raw = np.empty(len(self.numeric) + self.n_stats)
        for j, name in enumerate(self.numeric):
            raw[j] = _as_float(attributes.get(name))
        raw[len(self.numeric) :] = stats[: self.n_stats]
        z = (np.clip(raw, -_RAW_LIMIT, _RAW_LIMIT) - self.mean) / self.scale
        z[np.isnan(z)] = 0.0
        np.clip(z, -_Z_LIMIT, _Z_LIMIT, out=z)
        if not self.categories:
            return z
        parts = [z]
        for name, cats in zip(self.categorical, self.categories, strict=True):
            onehot = np.zeros(len(cats))
            value = attributes.get(name)
            key = "" if value is None else str(value)
            if key in cats:
                onehot[cats.index(key)] = 1.0
            parts.append(onehot)
        return np.concatenate(parts)

    def state_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "categories": [list(c) for c in self.categories],
            "n_stats": self.n_stats,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.numeric = [str(x) for x in state["numeric"]]
        self.categorical = [str(x) for x in state["categorical"]]
        self.categories = [[str(x) for x in c] for c in state["categories"]]
        self.n_stats = int(state["n_stats"])
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.scale = np.asarray(state["scale"], dtype=np.float64)


def _as_float(value: Attribute | None) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    )
