"""The online protocol (`backtest/online*.py`) and `streamval backtest --online`: warm-up and
normalisation, the baselines' exact cases, alarm arithmetic, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamval.backtest.online import OnlineConfig, Panel, normalise, run_online, warm_steps
from streamval.backtest.online_data import channel_panel, read_events
from streamval.backtest.online_scores import (
    ENGINE,
    PERSISTENCE,
    SEASONAL,
    alarm_scores,
    chance_precision,
    large_moves,
    near_events,
    score,
    worst_move,
)
from streamval.cli import main
from streamval.config import EngineSettings
from streamval.stream.datasets import EventTable
from streamval.stream.replay.markers import Marker

HOUR = 3_600_000
SMALL = EngineSettings(hidden=[8], n_clusters=1, seq_len=4, min_history=4, training="sync")


def panel_of(values: np.ndarray, events: list[Marker] | None = None) -> Panel:
    """A long table from a (steps, assets) array: assets a0.., hourly steps."""
    steps, n = values.shape
    frame = pd.DataFrame(
        {
            "asset_id": [f"a{i}" for _ in range(steps) for i in range(n)],
            "ts": [(t + 1) * HOUR for t in range(steps) for _ in range(n)],
            "value": values.reshape(-1),
        }
    )
    return Panel("small", EventTable.from_frame(frame), events or [])


def config(**kw: object) -> OnlineConfig:
    return OnlineConfig(engine=SMALL, progress=False, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def walk() -> np.ndarray:
    rng = np.random.default_rng(3)
    return 100.0 + np.cumsum(rng.normal(size=(60, 3)), axis=0)


def test_warm_up_is_valued_but_not_scored(walk: np.ndarray) -> None:
    run = run_online(panel_of(walk), config(warmup=0.25))
    assert run.warm_steps == warm_steps(60, 0.25) == 15
    f = run.frame
    assert f["valuation"].notna().all()  # every event valued, warm-up included
    assert not f.loc[f["step"] < 15, "scored"].any()
    assert f.loc[f["step"] >= 15, "scored"].all()
    s = score(run)
    assert s["scored_events"] == 45 * 3  # every asset has a previous value after the warm-up
    assert all(r["n"] == 45 * 3 for r in s["overall"])


def test_normalisation_is_fitted_on_the_warm_up_only(walk: np.ndarray) -> None:
    shifted = walk.copy()
    shifted[30:] += 1000.0  # the scored future must not move the units
    table = panel_of(shifted).table
    z, scale = normalise(table, until_ts=12 * HOUR)  # steps 0..10 (ts 1..11 h)
    warm = walk[:11]
    assert np.allclose(scale["mean"].to_numpy(), warm.mean(axis=0))
    assert np.allclose(scale["std"].to_numpy(), warm.std(axis=0, ddof=1))
    a0 = z.frame[z.frame["asset_id"] == "a0"]["value"].to_numpy()
    assert np.allclose(a0, (shifted[:, 0] - warm[:, 0].mean()) / warm[:, 0].std(ddof=1))
    same, unit = normalise(table, until_ts=None)
    assert same is table and (unit["std"] == 1.0).all()


def test_persistence_mase_is_exactly_one_and_errors_are_in_z_units(walk: np.ndarray) -> None:
    s = score(run_online(panel_of(walk), config()))
    rows = {r["method"]: r for r in s["overall"]}
    assert rows[PERSISTENCE]["mase"] == 1.0
    assert rows[PERSISTENCE]["mae_vs_ewma"] == pytest.approx(
        rows[PERSISTENCE]["mae"] / rows["EWMA"]["mae"]
    )
    assert all(r[f"{PERSISTENCE} mase"] == 1.0 for r in s["per_asset"])
    assert 0.5 < rows[ENGINE]["mase"] < 1.5
    assert s["interval"]["coverage"] is not None


def test_an_exactly_seasonal_series_gives_the_seasonal_baseline_mase_zero() -> None:
    period = np.array([3.0, 5.0, 4.0, 9.0, 1.0, 7.0])
    values = np.tile(period, 20)[:, None] * np.array([1.0, 2.0])
    s = score(run_online(panel_of(values), config(season=6)))
    rows = {r["method"]: r for r in s["overall"]}
    assert rows[SEASONAL]["mase"] == 0.0
    assert rows[SEASONAL]["mse"] == 0.0
    assert rows[ENGINE]["mae_vs_seasonal"] is None or np.isnan(rows[ENGINE]["mae_vs_seasonal"])


def test_alarm_precision_and_adaptation_windows_by_hand() -> None:
    # events at steps 10 and 30; alarms at 3 (warm-up), 10, 14 (hits), 16 and 45 (misses)
    a = alarm_scores(np.array([3, 10, 14, 16, 45]), [10, 30], warm=5, within=5)
    assert a == {"alarms": 4, "hits": 2, "precision": 0.5, "recall": 0.5, "listed": 2}
    assert np.isnan(alarm_scores(np.array([]), [10], warm=0, within=5)["precision"])
    assert near_events(np.arange(8), [2, 5], 2).tolist() == [
        False,
        False,
        True,
        True,
        False,
        True,
        True,
        False,
    ]


def test_windows_after_listed_events_are_scored(walk: np.ndarray) -> None:
    events = [Marker(40 * HOUR + 1, "shock", "x"), Marker(5 * HOUR, "early", "x")]
    s = score(run_online(panel_of(walk, events), config(window=10)))
    early, shock = s["windows"]
    # the early event is in the warm-up: only its window's steps after the warm-up (12, 13) count
    assert (early["event"], early["scored"], early["n"]) == ("early", False, 2 * 3)
    assert (shock["step"], shock["scored"], shock["n"]) == (40, True, 30)
    assert shock[f"{PERSISTENCE} mase"] == 1.0


def test_channel_panel_features_are_the_other_channels_previous_values(tmp_path: Path) -> None:
    path = tmp_path / "ch.csv"
    path.write_text("date,x,y\n2020-01-01,1,10\n2020-01-02,2,20\n2020-01-03,3,30\n")
    f = channel_panel(path).frame
    x = f[f["asset_id"] == "x"]
    assert x["y_prev"].tolist()[1:] == [10.0, 20.0] and x["x_prev"].isna().all()
    events = tmp_path / "ev.csv"
    events.write_text("date,name\n2020-01-02,hike\n")
    assert [m.name for m in read_events(events)] == ["hike"]


def test_cli_online_help_and_a_tiny_run_writes_the_report(
    tmp_path: Path, walk: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["backtest", "--help"])
    help_text = capsys.readouterr().out
    assert "--online" in help_text and "--warmup" in help_text and "--season" in help_text
    table = panel_of(walk[:30]).table.frame
    table["ts"] = pd.to_datetime(table["ts"], unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    data = tmp_path / "tiny.csv"
    table.to_csv(data, index=False)
    events = tmp_path / "events.csv"
    events.write_text("date,name\n1970-01-01T20:00:00Z,shock\n")
    out = tmp_path / "report"
    argv = ["backtest", "--online", "--dataset", str(data), "--out", str(out), "--no-progress"]
    argv += ["--events", str(events), "--season", "2", "--set", "engine.hidden=[8]"]
    argv += ["--set", "engine.n_clusters=1", "--set", "engine.training=background"]
    assert main(argv) == 0
    report = (out / "tiny.md").read_text()
    assert "MASE" in report and "shock" in report and "Where the engine loses" in report
    assert "'hidden': [8]" in report  # the settings used are stated
    numbers = json.loads((out / "tiny.json").read_text())
    assert numbers["scored_events"] == 24 * 3 and numbers["windows"][0]["step"] == 19
    assert (out / "tiny.png").stat().st_size > 0
    assert main(["backtest", "--online", "--dataset", "nope", "--out", str(out)]) == 2


def test_worst_move_does_not_count_valuing_through_a_one_row_spike(walk: np.ndarray) -> None:
    run = run_online(panel_of(np.ones((20, 1)) * np.arange(20.0)[:, None]), config())
    f = run.frame
    f["value"] = np.arange(20.0)
    f.loc[10, "value"] = 500.0  # a one-row spike; the next valuation is back at the clean level
    f["valuation"] = np.concatenate([[0.0], np.arange(19.0) + 1.0])
    f.loc[11, "valuation"] = 10.0
    run.scale["typical_move"] = 1.0
    assert worst_move(run, f["scored"].to_numpy() & (f["step"] > 0))["moves"] <= 1.0
    f.loc[15, "valuation"] = 40.0  # a wild valuation: 26 moves from both of the last two values
    assert worst_move(run, f["scored"].to_numpy())["moves"] == 26.0


def test_large_moves_are_the_steps_where_the_whole_panel_moves(walk: np.ndarray) -> None:
    """One step where every asset drops by many typical moves is the data's own shock; a single
    asset's jump of the same size moves the panel's mean by a third and ranks below it."""
    values = walk.copy()
    values[40:, :] -= 25.0  # all three assets at step 40
    values[50:, 0] += 25.0  # one asset alone at step 50
    run = run_online(panel_of(values), config(warmup=0.2))
    assert large_moves(run, share=0.02) == [40]
    assert large_moves(run, share=0.05)[:2] == [40, 50]
    # Random alarms: 4 of the 60 steps are at most 1 step after a marked one.
    assert chance_precision(60, [20, 40], warm=0, within=1) == pytest.approx(4 / 60)
