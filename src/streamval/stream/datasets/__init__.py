"""Datasets as `EventTable`s (long tables of events) that replay, scenarios and backtests share.

* `credit` - the paper-design credit portfolio generator (`generate`, `CreditPortfolioParams`).
* `tables` - long tables and wide price tables from CSV/Parquet files, with clear `DataError`s.
* `sp500` - the S&P 500 2015-2020 prices with sectors, given the folder that holds them.
"""

from __future__ import annotations

from streamval.stream.datasets._frame import EventTable
from streamval.stream.datasets.credit import CreditPortfolio, CreditPortfolioParams, generate
from streamval.stream.datasets.sp500 import load_sp500
from streamval.stream.datasets.tables import read_long_table, read_wide_prices

__all__ = [
    "CreditPortfolio",
    "CreditPortfolioParams",
    "EventTable",
    "generate",
    "load_sp500",
    "read_long_table",
    "read_wide_prices",
]
