"""The S&P 500 data set (2015-2020, 471 stocks, daily) shipped beside the project as real data.

`load_sp500(data_dir)` reads `prices.csv` (wide: Date + one adjusted-close column per ticker) and
`sectors.csv` (`ticker,gics_sector`, attribute `sector`; tickers without a row have no sector) and
derives the wide-table features (`log_return`, `volatility_20d`). Pass the directory; the data
is never copied into the project.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streamval.errors import DataError
from streamval.stream.datasets.event_table import EventTable
from streamval.stream.datasets.readers import read_wide_prices


def load_sp500(data_dir: str | Path, *, tickers: Sequence[str] | None = None) -> EventTable:
    """The S&P 500 prices in `data_dir` (optionally only `tickers`) as an `EventTable`."""
    data_dir = Path(data_dir)
    prices = data_dir / "prices.csv"
    if not prices.is_file():
        raise DataError(
            f"{data_dir}: no prices.csv here; pass the sp500_2015_2020 directory (with prices.csv "
            "and sectors.csv) as --data-dir"
        )
    sectors = data_dir / "sectors.csv"
    return read_wide_prices(
        prices,
        date_col="Date",
        assets=tickers,
        attributes_path=sectors if sectors.is_file() else None,
        attribute_key="ticker",
        attribute_names={"gics_sector": "sector"},
    )
