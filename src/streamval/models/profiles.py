"""Asset profiles: the vectors that clustering compares, built for many assets at once.

A profile is an asset's static attributes plus summary statistics of its series:

    numeric attributes          standardised (sklearn StandardScaler fitted at each (re-)fit)
    categorical attributes      one-hot over the categories seen at the fit (a missing attribute
                                is the category ""; unseen categories -> all zeros)
    series statistics           mean and std of the scale-free one-step change, its lag-1
                                autocorrelation (mean reversion shows up negative), mean of each
                                dynamic feature; standardised with the numerics

Missing numbers (an attribute the asset lacks, statistics of a series too short) are imputed with
the fitted mean, i.e. 0 after standardisation. An attribute that is a string for any fitted asset
is categorical (its numbers then count as the categories `str(number)`).

The inputs are columns (`ProfileInputs`): the engine keeps attributes encoded per asset slot
(numbers as floats, strings as integer codes into a vocabulary) and the running series
statistics as arrays, so a profile never passes through a per-asset Python dict.

>>> import numpy as np
>>> stats = series_vector(
...     n=np.array([4]), mean=np.array([0.0]), m2=np.array([4e-4]), n_pairs=np.array([3]),
...     sum_xy=np.array([-3e-4]), feat_sum=np.zeros((1, 0)), feat_count=np.zeros((1, 0)))
>>> [round(float(x), 3) for x in stats[0]]  # change mean, std, autocorrelation
[0.0, 0.012, -1.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.preprocessing import StandardScaler

from streamval.stream.contract.schema import Attribute

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Raw profile numbers are saturated here (their squares must not overflow while scaling), and
# standardised coordinates at _Z_LIMIT: one absurd attribute must not swamp the distances.
_RAW_LIMIT = 1e100
_Z_LIMIT = 1e3
N_SERIES_STATS = 3  # change mean, change std, lag-1 autocorrelation (then one mean per feature)


def series_vector(
    *,
    n: NDArray[Any],
    mean: FloatArray,
    m2: FloatArray,
    n_pairs: NDArray[Any],
    sum_xy: FloatArray,
    feat_sum: FloatArray,
    feat_count: NDArray[Any],
) -> FloatArray:
    """[change mean, change std, autocorrelation, feature means...] per asset, NaN where unknown.

    The arguments are the running sums the engine keeps per asset (Welford's count, mean and M2
    of the scale-free changes; the count and sum of products of consecutive changes; per-feature
    sums and counts).
    """
    n_f = np.asarray(n, dtype=np.float64)
    pairs = np.asarray(n_pairs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        change_mean = np.where(n_f > 0, mean, np.nan)
        std = np.where(n_f > 1, np.sqrt(np.maximum(m2, 0.0) / np.maximum(n_f - 1, 1)), np.nan)
        cov = sum_xy / np.maximum(pairs, 1) - mean * mean
        auto = np.where(
            (pairs >= 2) & (m2 > 0), np.clip(cov / (m2 / np.maximum(n_f, 1)), -1.0, 1.0), np.nan
        )
        counts = np.asarray(feat_count, dtype=np.float64)
        feat_mean = np.where(counts > 0, feat_sum / np.maximum(counts, 1.0), np.nan)
    return np.column_stack([change_mean, std, auto, feat_mean])


@dataclass
class ProfileInputs:
    """The raw material of n assets' profiles, as columns.

    `numeric[name]` holds the attribute's number per asset (NaN: missing, or not a number);
    `categorical[name]` its string as a code into `vocabularies[name]` (-1: missing, or not a
    string); `stats` the `series_vector` rows.
    """

    stats: FloatArray
    numeric: dict[str, FloatArray] = field(default_factory=dict)
    categorical: dict[str, IntArray] = field(default_factory=dict)
    vocabularies: dict[str, Sequence[str]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.stats.shape[0])

    @classmethod
    def from_records(
        cls, attributes: Sequence[Mapping[str, Attribute]], stats: FloatArray
    ) -> ProfileInputs:
        """Columns from per-asset attribute dicts (tests, tools; the engine keeps columns)."""
        names = sorted({name for attrs in attributes for name in attrs})
        out = cls(stats=np.asarray(stats, dtype=np.float64).reshape(len(attributes), -1))
        for name in names:
            values = [attrs.get(name) for attrs in attributes]
            out.numeric[name] = np.array([_as_float(v) for v in values], dtype=np.float64)
            vocab = sorted({v for v in values if isinstance(v, str)})
            if vocab:
                index = {v: i for i, v in enumerate(vocab)}
                out.categorical[name] = np.array(
                    [index[v] if isinstance(v, str) else -1 for v in values], dtype=np.int64
                )
                out.vocabularies[name] = vocab
        return out

    def strings(self, name: str) -> list[str]:
        """The attribute as the strings a categorical one-hot compares ("" when missing)."""
        codes = self.categorical.get(name)
        vocab = self.vocabularies.get(name, ())
        nums = self.numeric.get(name)
        out = []
        for i in range(self.n):
            if codes is not None and codes[i] >= 0:
                out.append(str(vocab[int(codes[i])]))
            elif nums is not None and not np.isnan(nums[i]):
                out.append(str(float(nums[i])))
            else:
                out.append("")
        return out


class ProfileSpace:
    """The standardised profile space of one clustering fit.

    `fit` learns which attributes exist (numeric vs categorical), their categories and the
    scaler; `transform` maps assets into the space with vectorised numpy.
    """

    def __init__(self) -> None:
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.categories: list[list[str]] = []
        self.n_stats = 0
        self.mean = np.zeros(0)
        self.scale = np.ones(0)

    @property
    def dim(self) -> int:
        """Coordinates of a profile."""
        return len(self.mean) + sum(len(c) for c in self.categories)

    def fit(self, inputs: ProfileInputs) -> FloatArray:
        """Fit on the assets' inputs and return their profiles."""
        categorical = {
            name for name, codes in inputs.categorical.items() if bool(np.any(codes >= 0))
        }
        numeric = {
            name
            for name, values in inputs.numeric.items()
            if bool(np.any(~np.isnan(values))) and name not in categorical
        }
        self.numeric = sorted(numeric)
        self.categorical = sorted(categorical)
        self.n_stats = int(inputs.stats.shape[1])
        raw = self._numeric_rows(inputs)
        # Impute before scaling: a column's missing entries take its mean (0 once standardised).
        seen = ~np.isnan(raw)
        col_mean = np.where(
            seen.any(axis=0), np.where(seen, raw, 0.0).sum(axis=0) / np.maximum(seen.sum(0), 1), 0.0
        )
        filled = np.where(seen, raw, col_mean)
        scaler = StandardScaler().fit(filled)
        self.mean = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale = np.asarray(scaler.scale_, dtype=np.float64)
        self.categories = [sorted(set(inputs.strings(name))) for name in self.categorical]
        return self.transform(inputs)

    def _numeric_rows(self, inputs: ProfileInputs) -> FloatArray:
        rows = np.full((inputs.n, len(self.numeric) + self.n_stats), np.nan)
        for j, name in enumerate(self.numeric):
            column = inputs.numeric.get(name)
            if column is not None:
                rows[:, j] = column
        width = min(self.n_stats, inputs.stats.shape[1])
        rows[:, len(self.numeric) : len(self.numeric) + width] = inputs.stats[:, :width]
        clipped: FloatArray = np.clip(rows, -_RAW_LIMIT, _RAW_LIMIT)
        return clipped

    def transform(self, inputs: ProfileInputs) -> FloatArray:
        """The assets' profile vectors (unknown numbers become the fitted mean)."""
        z = (self._numeric_rows(inputs) - self.mean) / self.scale
        z[np.isnan(z)] = 0.0
        np.clip(z, -_Z_LIMIT, _Z_LIMIT, out=z)
        if not self.categories:
            return z
        parts = [z]
        for name, cats in zip(self.categorical, self.categories, strict=True):
            parts.append(self._onehot(inputs, name, cats))
        return np.concatenate(parts, axis=1)

    @staticmethod
    def _onehot(inputs: ProfileInputs, name: str, cats: list[str]) -> FloatArray:
        index = {c: i for i, c in enumerate(cats)}
        out = np.zeros((inputs.n, len(cats)))
        codes = inputs.categorical.get(name)
        nums = inputs.numeric.get(name)
        vocab = inputs.vocabularies.get(name, ())
        # Strings: vocabulary code -> column, vectorised; numbers and missing values are rare
        # here (an attribute that is categorical for some assets) and looked up one by one.
        rows = np.arange(inputs.n)
        column = np.full(inputs.n, -1, dtype=np.int64)
        if codes is not None and len(vocab):
            lookup = np.array([index.get(str(v), -1) for v in vocab], dtype=np.int64)
            has = codes >= 0
            column[has] = lookup[codes[has]]
            rest = np.nonzero(~has)[0]
        else:
            rest = rows
        missing = index.get("", -1)
        for i in rest.tolist():
            if nums is not None and not np.isnan(nums[i]):
                column[i] = index.get(str(float(nums[i])), -1)
            else:
                column[i] = missing
        hit = column >= 0
        out[rows[hit], column[hit]] = 1.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "categories": [list(c) for c in self.categories],
            "n_stats": self.n_stats,
            "mean": self.mean.copy(),
            "scale": self.scale.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.numeric = [str(x) for x in state["numeric"]]
        self.categorical = [str(x) for x in state["categorical"]]
        self.categories = [[str(x) for x in c] for c in state["categories"]]
        self.n_stats = int(state["n_stats"])
        self.mean = np.asarray(state["mean"], dtype=np.float64).reshape(-1)
        self.scale = np.asarray(state["scale"], dtype=np.float64).reshape(-1)
        if len(self.mean) != len(self.numeric) + self.n_stats or len(self.scale) != len(self.mean):
            raise ValueError("profile space: scaler of the wrong size")
        if len(self.categories) != len(self.categorical):
            raise ValueError("profile space: categories do not match the attributes")


def _as_float(value: Attribute | None) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan
    )
