"""Read event tables from files: long tables and wide price tables, with clear errors.

Two layouts become an `EventTable`:

* long (`read_long_table`): one row per asset and time, columns asset_id, ts, value, then feature
  and attribute columns; CSV or Parquet; the column names are configurable.
* wide (`read_wide_prices`): a date column and one column per asset holding its price, with an
  optional attribute table (one row per asset, e.g. `ticker,gics_sector`) and an optional volume
  table of the same shape as the prices. Features are derived per asset and known *before* the
  day's price, so they never reveal the value being predicted: `log_return` (the log return up to
  the previous close), `volatility_20d` (standard deviation of the 20 log returns up to the
  previous close; any window can be asked for) and `volume` (the previous day's, when a volume
  table is given). A feature not yet defined (the first two days' return, the first 20 days'
  volatility) is left out of that day's event.

Any problem with a file raises `streamval.errors.DataError` naming the file, the column and, for a
bad cell, the data row (1-based, header excluded) and its text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from streamval.errors import DataError
from streamval.stream.contract.schema import ASSET_ID, TS, VALUE
from streamval.stream.datasets.event_table import EventTable

DEFAULT_VOLATILITY_WINDOW = 20


def read_frame(path: str | Path) -> pd.DataFrame:
    """A CSV (all cells as text, so that errors can quote them) or Parquet file as a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable table: {str(exc).splitlines()[0]}") from None


def _require(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise DataError(f"{path}: missing column {names}; the file has {list(frame.columns)}")


def _bad_row(column: str, row: int, raw: object, path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what} in column {column!r} at row {row + 1}: {str(raw)[:60]!r}")


def parse_times(raw: pd.Series, column: str, path: Path) -> np.ndarray:
    """Epoch ms (int64) from integer epoch ms or RFC 3339 / ISO dates (naive = UTC)."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = pd.to_datetime(raw, utc=True)
    elif pd.api.types.is_integer_dtype(raw):
        return np.asarray(raw.to_numpy(dtype=np.int64))
    else:
        text = raw.astype("string").str.strip()
        missing = text.isna() | (text == "")
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0])
            raise _bad_row(column, row, "", path, "missing date")
        if text.str.fullmatch(r"-?\d+").all():
            return np.asarray(text.astype("int64").to_numpy())
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _bad_row(column, row, raw.iloc[row], path, "unparseable date")
    return np.asarray(parsed.astype("datetime64[ms, UTC]").astype("int64").to_numpy())


def parse_numbers(
    raw: pd.Series, column: str, path: Path, *, allow_missing: bool = True
) -> np.ndarray:
    """Finite floats from a column; empty cells become NaN when `allow_missing`."""
    numbers = pd.to_numeric(raw, errors="coerce").astype("float64")
    given = (
        raw.notna().to_numpy() & (raw.astype("string").str.strip() != "").fillna(False).to_numpy()
    )
    bad = given & ~np.isfinite(numbers.to_numpy())
    if not allow_missing:
        bad |= ~given
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "non-numeric value" if given[row] else "missing value"
        raise _bad_row(column, row, raw.iloc[row], path, what)
    return np.asarray(numbers.to_numpy(), dtype=float)


def read_long_table(
    path: str | Path,
    *,
    asset_col: str = ASSET_ID,
    ts_col: str = TS,
    value_col: str | None = VALUE,
    features: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
) -> EventTable:
    """A long table (one row per asset and time) as an `EventTable`.

    `features` and `attributes` name the columns of each role; when both are None every other
    column is a feature if all its cells are numbers and an attribute otherwise. `value_col` None
    means the table has no observed values (feature-only events). Feature cells may be empty;
    attribute cells that look numeric become numbers.
    """
    path = Path(path)
    raw = read_frame(path)
    named = [asset_col, ts_col, *([value_col] if value_col else [])]
    _require(raw, [*named, *(features or ()), *(attributes or ())], path)
    rest = [c for c in raw.columns if c not in named]
    if features is None and attributes is None:
        numeric = {
            c: pd.to_numeric(raw[c], errors="coerce").notna().eq(raw[c].notna()).all() for c in rest
        }
        features = [c for c in rest if numeric[c]]
        attributes = [c for c in rest if not numeric[c]]
    features, attributes = list(features or ()), list(attributes or ())
    ids = raw[asset_col]
    empty = ids.isna() | (ids.astype("string").str.strip() == "").fillna(True)
    if empty.any():
        raise _bad_row(
            asset_col, int(np.flatnonzero(empty.to_numpy())[0]), "", path, "missing asset id"
        )
    out = pd.DataFrame(
        {ASSET_ID: ids.astype(str).str.strip(), TS: parse_times(raw[ts_col], ts_col, path)}
    )
    out[VALUE] = parse_numbers(raw[value_col], value_col, path) if value_col else np.nan
    for name in features:
        out[name] = parse_numbers(raw[name], name, path)
    for name in attributes:
        column = raw[name]
        as_number = pd.to_numeric(column, errors="coerce")
        out[name] = as_number if as_number.notna().eq(column.notna()).all() else column
    return EventTable.from_frame(out, features=features, attributes=attributes)


def read_wide_prices(
    path: str | Path,
    *,
    date_col: str = "Date",
    assets: Sequence[str] | None = None,
    attributes_path: str | Path | None = None,
    attribute_key: str | None = None,
    attribute_names: Mapping[str, str] | None = None,
    volume_path: str | Path | None = None,
    volatility_window: int = DEFAULT_VOLATILITY_WINDOW,
) -> EventTable:
    """A wide price table (date column + one price column per asset) as an `EventTable`.

    `assets` limits the assets read (default: every column but the date). `attributes_path` is a
    table with one row per asset: its key column (`attribute_key`, default its first column) holds
    the asset ids, every other column becomes an attribute, renamed by `attribute_names` (e.g.
    `{"gics_sector": "sector"}`). `volume_path` is a wide table of the same shape whose cells
    become the `volume` feature. Features: see the module docstring.
    """
    path = Path(path)
    header = read_frame_header(path)
    if date_col not in header:
        raise DataError(
            f"{path}: missing column {date_col!r} (the date column); columns: {header[:5]}"
        )
    available = [c for c in header if c != date_col]
    if assets is not None:
        unknown = [a for a in assets if a not in available]
        if unknown:
            raise DataError(f"{path}: missing column(s) {unknown} (asked-for assets)")
        columns = list(dict.fromkeys(assets))
    else:
        columns = available
    raw = (
        read_frame(path)
        if path.suffix.lower() in {".parquet", ".pq"}
        else _read_csv_columns(path, [date_col, *columns])
    )
    ts = parse_times(raw[date_col], date_col, path)
    if np.any(np.diff(ts) <= 0):
        row = int(np.flatnonzero(np.diff(ts) <= 0)[0]) + 1
        raise _bad_row(
            date_col, row, raw[date_col].iloc[row], path, "date not after the previous row"
        )
    prices = pd.DataFrame({c: parse_numbers(raw[c], c, path) for c in columns}, index=ts)
    nonpositive = (prices <= 0).to_numpy()
    if nonpositive.any():
        row, col = (int(i[0]) for i in np.nonzero(nonpositive))
        raise _bad_row(columns[col], row, prices.iloc[row, col], path, "non-positive price")
    # Lagged one day: day t's features come from prices up to t-1 (p_t would leak through them).
    log_return = np.log(prices).diff()
    volatility = log_return.rolling(volatility_window, min_periods=volatility_window).std()
    long = {
        VALUE: prices.stack(future_stack=True),
        "log_return": log_return.shift(1).stack(future_stack=True),
        f"volatility_{volatility_window}d": volatility.shift(1).stack(future_stack=True),
    }
    features = ["log_return", f"volatility_{volatility_window}d"]
    if volume_path is not None:
        long["volume"] = (
            _wide_volume(Path(volume_path), date_col, columns, ts).shift(1).stack(future_stack=True)
        )
        features.append("volume")
    frame = pd.DataFrame(long)
    frame.index = frame.index.set_names([TS, ASSET_ID])
    frame = frame.reset_index()
    frame = frame[frame[VALUE].notna()]  # a missing price is no event
    attributes: list[str] = []
    if attributes_path is not None:
        profile = _attribute_table(Path(attributes_path), attribute_key, attribute_names or {})
        attributes = list(profile.columns)
        frame = frame.join(profile, on=ASSET_ID)
    return EventTable.from_frame(frame, features=features, attributes=attributes)


def read_frame_header(path: Path) -> list[str]:
    """Column names of a CSV or Parquet file without reading its rows."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable table: {str(exc).splitlines()[0]}") from None


def _read_csv_columns(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable table: {str(exc).splitlines()[0]}") from None


def _wide_volume(path: Path, date_col: str, columns: list[str], ts: np.ndarray) -> pd.DataFrame:
    raw = read_frame(path)
    _require(raw, [date_col, *columns], path)
    vts = parse_times(raw[date_col], date_col, path)
    volume = pd.DataFrame({c: parse_numbers(raw[c], c, path) for c in columns}, index=vts)
    return volume.reindex(ts)


def _attribute_table(path: Path, key: str | None, rename: Mapping[str, str]) -> pd.DataFrame:
    raw = read_frame(path)
    if raw.shape[1] < 2:
        raise DataError(f"{path}: an attribute table needs a key column and at least one attribute")
    key = key or str(raw.columns[0])
    _require(raw, [key], path)
    dupes = raw[key].duplicated()
    if dupes.any():
        row = int(np.flatnonzero(dupes.to_numpy())[0])
        raise _bad_row(key, row, raw[key].iloc[row], path, "duplicate asset")
    profile = raw.set_index(key).rename(columns=dict(rename))
    for name in profile.columns:
        as_number = pd.to_numeric(profile[name], errors="coerce")
        if as_number.notna().eq(profile[name].notna()).all():
            profile[name] = as_number
    profile.index = profile.index.astype(str)
    profile.index.name = ASSET_ID
    return profile
