"""Offline backtests: run valuation methods over a data set and write an accuracy report.

* `protocols` - the paper protocol (train / validation / test customers) and the streaming
  (prequential) protocol; both only call `Valuer.process`, the same call the consumer makes.
* `methods` - `EngineValuer` (the engine as a method), its ablations and the method suite.
* `fusion` - the engine and KNN analogues combined by late fusion and by stacking.
* `metrics` - errors, normalisation, shock statistics, Markdown tables.
* `credit` - the four tables on the paper-design credit book.
* `realdata` - streaming valuation of a real panel (S&P 500 or any table) against persistence.
* `online`, `online_scores`, `online_data`, `online_report` - the online protocol of
  `streamval backtest --online`: prequential, one step ahead, warm-up with z-units fitted on it;
  the engine against persistence, EWMA and seasonal naive; alarms against dated events.
* `plots` - matplotlib (Agg) figures.
* `report` - the Markdown report and `run_backtest`, the entry point of `streamval backtest`.
"""

from __future__ import annotations

from streamval.backtest.report import BacktestConfig, run_backtest

__all__ = ["BacktestConfig", "run_backtest"]
