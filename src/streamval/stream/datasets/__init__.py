"""Datasets as `EventTable`s (long tables of events) that replay, scenarios and backtests share.

* `event_table` - `EventTable`, the long table of events every dataset becomes.
* `readers` - long tables and wide price tables from CSV/Parquet files, with clear `DataError`s.
* `credit` - the paper-design credit portfolio generator (`generate`, `CreditPortfolioParams`).
* `sp500` - the S&P 500 2015-2020 prices with sectors, given the folder that holds them.
* `synthetic` - grouped panels with known dynamics, for tests and benchmarks.
"""

from __future__ import annotations

from streamval.stream.datasets.credit import CreditPortfolio, CreditPortfolioParams, generate
from streamval.stream.datasets.event_table import EventTable
from streamval.stream.datasets.readers import read_long_table, read_wide_prices
from streamval.stream.datasets.sp500 import load_sp500

__all__ = [
    "CreditPortfolio",
    "CreditPortfolioParams",
    "EventTable",
    "generate",
    "load_sp500",
    "read_long_table",
    "read_wide_prices",
]
