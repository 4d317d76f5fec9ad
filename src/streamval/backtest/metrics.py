"""Error metrics, shock statistics and Markdown tables for the backtest report.

Everything here is a plain function of arrays or frames, so the report's numbers are computed,
never typed, and each helper is unit-tested.

>>> import numpy as np
>>> scores(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))["mse"]
0.3333333333333333
>>> print(markdown_table(["a", "b"], [[1, 0.5]]))
| a | b |
|---|---|
| 1 | 0.5 |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def scores(truth: FloatArray, predicted: FloatArray) -> dict[str, float]:
    """MSE, MAE and R2 (1 - SSE / SST about the truth's mean; NaN with fewer than 2 points)."""
    err = truth - predicted
    n = len(err)
    if n == 0:
        return {"mse": math.nan, "mae": math.nan, "r2": math.nan, "n": 0.0}
    sst = float(np.sum((truth - truth.mean()) ** 2))
    mse = float(np.mean(err**2))
    r2 = 1.0 - float(np.sum(err**2)) / sst if n > 1 and sst > 0 else math.nan
    return {"mse": mse, "mae": float(np.mean(np.abs(err))), "r2": r2, "n": float(n)}


def mase(errors: FloatArray, baseline_errors: FloatArray) -> float:
    """Mean absolute error relative to the baseline's on the same events (< 1 beats it).

    >>> mase(np.array([1.0, -1.0]), np.array([2.0, 2.0]))
    0.5
    """
    denominator = float(np.mean(np.abs(baseline_errors)))
    return float(np.mean(np.abs(errors))) / denominator if denominator > 0 else math.nan


def increase(before: float, after: float) -> float:
    """Relative change after / before - 1 (NaN when before is 0).

    >>> round(increase(0.027, 0.031), 3)
    0.148
    """
    return after / before - 1.0 if before > 0 else math.nan


def recovery_events(
    sq_errors: FloatArray, shock_index: int, window: int, tolerance: float = 0.10
) -> int | None:
    """Events after the shock until the rolling mean error is back within `tolerance` of before.

    The pre-shock level is the mean of the `window` errors before `shock_index`; the rolling
    error at event i is the mean of the `window` errors ending at i, counted only once the window
    lies wholly after the shock. Returns the number of post-shock events up to the first such
    window at or below (1 + tolerance) times the level, or None if none is.

    >>> e = np.array([1.0] * 4 + [5.0] * 4 + [1.0] * 4)
    >>> recovery_events(e, shock_index=4, window=2)
    6
    >>> recovery_events(np.array([1.0, 1.0, 3.0, 3.0]), shock_index=2, window=2) is None
    True
    """
    if shock_index < 1 or shock_index >= len(sq_errors):
        return None
    before = sq_errors[max(0, shock_index - window) : shock_index]
    level = float(np.mean(before)) * (1.0 + tolerance)
    after = sq_errors[shock_index:]
    if len(after) < window:
        return None
    rolling = np.convolve(after, np.ones(window) / window, mode="valid")
    hits = np.flatnonzero(rolling <= level)
    return int(hits[0]) + window if len(hits) else None


def fmt(x: float | int | str | np.floating[Any] | np.integer[Any] | None, digits: int = 4) -> str:
    """A table cell: significant digits for floats, '-' for missing values.

    >>> fmt(0.000123456), fmt(12345.678), fmt(None), fmt(float("nan"))
    ('0.0001235', '1.235e+04', '-', '-')
    """
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int | np.integer):
        return str(int(x))
    if not math.isfinite(float(x)):
        return "-"
    return f"{float(x):.{digits}g}"


def pct(x: float | None) -> str:
    """A relative change as a signed percentage.

    >>> pct(0.148), pct(None)
    ('+14.8%', '-')
    """
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.1f}%"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; floats through `fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [
            fmt(c) if isinstance(c, float | int | np.floating | np.integer) or c is None else str(c)
            for c in row
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def previous_values(frame: pd.DataFrame) -> FloatArray:
    """Each row's previous value of the same asset (NaN for an asset's first row), stream order."""
    ordered = frame.sort_values(["phase", "pos"], kind="stable")
    prev = ordered.groupby("asset_id", sort=False)["value"].shift(1)
    return np.asarray(prev.reindex(frame.index).to_numpy(dtype=float), dtype=np.float64)
