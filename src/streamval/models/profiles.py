"""Asset profiles: the vectors that clustering compares, built for many assets at once.

A profile is an asset's static attributes plus summary statistics of its series, in blocks:

    numeric attribute           one block per attribute, standardised
    categorical attribute       one block per attribute: one-hot over the categories seen at the
                                fit (a missing attribute is the category ""; unseen -> all zeros)
    series statistics           one block each: mean of the scale-free one-step change (drift),
                                log of its std (volatility), its lag-1 autocorrelation (mean
                                reversion shows up negative), the mean of each dynamic feature

Series statistics converge: each is shrunk toward the population value of the fit by a
pseudo-count, `(c * own + k * population) / (c + k)` with `c` the observations behind it (the
variance is shrunk, then logged), so an asset with little history sits near the population
centre in those blocks and its attributes decide its cluster until its own numbers have weight.

Every block is scaled to total variance 1 over the fitted assets (so a one-hot block, an
attribute and a statistic start equal) and then multiplied by its weight: `fit(weigh=...)` takes
the rule that chooses the weights from the blocks (`AssetClustering.block_weights`: silhouette
over a Gaussian null); without one every block weighs 1. Missing numbers (an attribute the asset
lacks, statistics of a series too short) take the population value. An attribute that is a
string for any fitted asset is categorical (its numbers then count as the categories
`str(number)`).

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

from collections.abc import Callable, Mapping, Sequence
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


def series_counts(n: NDArray[Any], n_pairs: NDArray[Any], feat_count: NDArray[Any]) -> FloatArray:
    """The observations behind each `series_vector` entry (what its shrinkage weighs)."""
    n_f = np.asarray(n, dtype=np.float64)
    return np.column_stack(
        [
            n_f,
            np.maximum(n_f - 1, 0),
            np.asarray(n_pairs, dtype=np.float64),
            np.asarray(feat_count, dtype=np.float64),
        ]
    )


@dataclass
class ProfileInputs:
    """The raw material of n assets' profiles, as columns.

    `numeric[name]` holds the attribute's number per asset (NaN: missing, or not a number);
    `categorical[name]` its string as a code into `vocabularies[name]` (-1: missing, or not a
    string); `stats` the `series_vector` rows and `counts` the `series_counts` behind them
    (None: as good as infinite, no shrinkage).
    """

    stats: FloatArray
    counts: FloatArray | None = None
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


Weigh = Callable[[list[FloatArray]], Sequence[float]]
_STD_FLOOR = 1e-12  # volatility is compared as log(std): a constant series is not -inf


class ProfileSpace:
    """The weighted, block-standardised profile space of one clustering fit.

    `fit` learns which attributes exist (numeric vs categorical), their categories, the
    population values the statistics shrink toward, each column's centre and scale and each
    block's scale and weight; `transform` maps assets into the space with vectorised numpy.
    """

    def __init__(self, pseudo_count: float = 6.0) -> None:
        if pseudo_count < 0:
            raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count}")
        self.pseudo_count = pseudo_count
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.categories: list[list[str]] = []
        self.n_stats = 0
        self.population = np.zeros(0)  # per statistic: the value it shrinks toward
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.block_scale = np.ones(0)  # per block: 1 / sqrt(its total variance at the fit)
        self.weights = np.ones(0)  # per block

    @property
    def dim(self) -> int:
        """Coordinates of a profile."""
        return len(self.mean) + sum(len(c) for c in self.categories)

    @property
    def blocks(self) -> list[str]:
        """Block names, in the order of `weights`."""
        stats = ["change_mean", "volatility", "autocorrelation"][: self.n_stats]
        stats += [f"feature{j}" for j in range(self.n_stats - N_SERIES_STATS)]
        return [*self.numeric, *stats, *self.categorical]

    def block_slices(self) -> list[slice]:
        """Each block's columns in a profile."""
        out = [slice(j, j + 1) for j in range(len(self.mean))]
        at = len(self.mean)
        for cats in self.categories:
            out.append(slice(at, at + len(cats)))
            at += len(cats)
        return out

    def fit(self, inputs: ProfileInputs, weigh: Weigh | None = None) -> FloatArray:
        """Fit on the assets' inputs and return their profiles (weighted by `weigh`'s rule)."""
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
        self.population = _nanmean(self._raw_stats(inputs, shrink=False, log=False))
        raw = self._numeric_rows(inputs)
        # Impute before scaling: a column's missing entries take its mean (0 once standardised).
        col_mean = _nanmean(raw)
        filled = np.where(np.isnan(raw), col_mean, raw)
        scaler = StandardScaler().fit(filled)
        self.mean = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale = np.asarray(scaler.scale_, dtype=np.float64)
        self.categories = [sorted(set(inputs.strings(name))) for name in self.categorical]
        n_blocks = len(self.mean) + len(self.categories)
        self.block_scale = np.ones(n_blocks)
        self.weights = np.ones(n_blocks)
        x = self.transform(inputs)
        slices = self.block_slices()
        total = np.array([float(x[:, b].var(axis=0).sum()) for b in slices])
        self.block_scale = np.where(total > 1e-12, 1.0 / np.sqrt(np.maximum(total, 1e-300)), 0.0)
        x = self.transform(inputs)
        if weigh is not None and n_blocks:
            weights = np.asarray(weigh([x[:, b] for b in slices]), dtype=np.float64)
            if weights.shape != (n_blocks,) or not np.all(np.isfinite(weights) & (weights >= 0)):
                raise ValueError(f"block weights {weights!r} for {n_blocks} blocks")
            self.weights = weights
            x = self.transform(inputs)
        return x

    def _raw_stats(self, inputs: ProfileInputs, *, shrink: bool, log: bool = True) -> FloatArray:
        """The statistics as compared: std as log(std), shrunk toward the population."""
        width = min(self.n_stats, inputs.stats.shape[1])
        stats = np.full((inputs.n, self.n_stats), np.nan)
        stats[:, :width] = np.clip(inputs.stats[:, :width], -_RAW_LIMIT, _RAW_LIMIT)
        vol = 1 if self.n_stats > 1 else None
        if vol is not None:
            stats[:, vol] = stats[:, vol] ** 2  # shrunk as a variance, compared as log(std)
        if shrink and inputs.counts is not None and self.pseudo_count > 0:
            counts = np.zeros_like(stats)
            counts[:, :width] = np.nan_to_num(inputs.counts[:, :width])
            counts[np.isnan(stats)] = 0.0
            own = np.nan_to_num(stats)
            k = self.pseudo_count
            stats = (counts * own + k * self.population) / (counts + k)
        if vol is not None and log:
            stats[:, vol] = 0.5 * np.log(np.maximum(stats[:, vol], _STD_FLOOR**2))
        return stats

    def _numeric_rows(self, inputs: ProfileInputs) -> FloatArray:
        rows = np.full((inputs.n, len(self.numeric) + self.n_stats), np.nan)
        for j, name in enumerate(self.numeric):
            column = inputs.numeric.get(name)
            if column is not None:
                rows[:, j] = column
        if self.n_stats:
            rows[:, len(self.numeric) :] = self._raw_stats(inputs, shrink=True)
        clipped: FloatArray = np.clip(rows, -_RAW_LIMIT, _RAW_LIMIT)
        return clipped

    def transform(self, inputs: ProfileInputs) -> FloatArray:
        """The assets' profile vectors (unknown numbers become the fitted mean)."""
        factor = self.block_scale * self.weights
        n_num = len(self.mean)
        z = (self._numeric_rows(inputs) - self.mean) / self.scale
        z[np.isnan(z)] = 0.0
        np.clip(z, -_Z_LIMIT, _Z_LIMIT, out=z)
        z *= factor[:n_num]
        if not self.categories:
            return z
        parts = [z]
        for j, (name, cats) in enumerate(zip(self.categorical, self.categories, strict=True)):
            parts.append(self._onehot(inputs, name, cats) * factor[n_num + j])
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
            "pseudo_count": self.pseudo_count,
            "population": self.population.copy(),
            "mean": self.mean.copy(),
            "scale": self.scale.copy(),
            "block_scale": self.block_scale.copy(),
            "weights": self.weights.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.numeric = [str(x) for x in state["numeric"]]
        self.categorical = [str(x) for x in state["categorical"]]
        self.categories = [[str(x) for x in c] for c in state["categories"]]
        self.n_stats = int(state["n_stats"])
        self.mean = np.asarray(state["mean"], dtype=np.float64).reshape(-1)
        self.scale = np.asarray(state["scale"], dtype=np.float64).reshape(-1)
        self.pseudo_count = float(state["pseudo_count"])
        self.population = np.asarray(state["population"], dtype=np.float64).reshape(-1)
        self.block_scale = np.asarray(state["block_scale"], dtype=np.float64).reshape(-1)
        self.weights = np.asarray(state["weights"], dtype=np.float64).reshape(-1)
        if len(self.mean) != len(self.numeric) + self.n_stats or len(self.scale) != len(self.mean):
            raise ValueError("profile space: scaler of the wrong size")
        if len(self.categories) != len(self.categorical):
            raise ValueError("profile space: categories do not match the attributes")
        n_blocks = len(self.mean) + len(self.categories)
        if len(self.population) != self.n_stats or not (
            len(self.block_scale) == len(self.weights) == n_blocks
        ):
            raise ValueError("profile space: population or block weights of the wrong size")


def _as_float(value: Attribute | None) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan
    )


def _nanmean(x: FloatArray) -> FloatArray:
    """Column means over the known entries (0 for a column with none)."""
    seen = ~np.isnan(x)
    total = np.where(seen, x, 0.0).sum(axis=0)
    mean: FloatArray = np.where(seen.any(axis=0), total / np.maximum(seen.sum(axis=0), 1), 0.0)
    return mean
