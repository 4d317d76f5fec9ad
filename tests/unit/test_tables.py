"""Long and wide tables from files, the S&P 500 loader and the real-event markers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamval.errors import DataError
from streamval.stream.contract.schema import AssetEvent, parse_timestamp
from streamval.stream.datasets.readers import read_long_table, read_wide_prices
from streamval.stream.datasets.sp500 import load_sp500
from streamval.stream.replay.markers import MARKET_SHOCKS, fed_changes, within

LONG_CSV = """\
asset_id,ts,value,score,tier,age
b,2024-01-02,11.5,0.3,low,40
a,2024-01-01T00:00:00Z,10,0.5,high,35
a,2024-01-02,,0.6,high,35
b,2024-01-01,11,,low,40
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_long_csv_becomes_events_in_time_order(tmp_path: Path) -> None:
    table = read_long_table(write(tmp_path, "long.csv", LONG_CSV))
    assert table.features == ("score", "age")  # numeric columns are features by default
    assert table.attributes == ("tier",)
    day1, day2 = parse_timestamp("2024-01-01"), parse_timestamp("2024-01-02")
    assert list(table.events()) == [
        AssetEvent("a", day1, 10.0, {"score": 0.5, "age": 35.0}, {"tier": "high"}),
        AssetEvent("b", day1, 11.0, {"age": 40.0}, {"tier": "low"}),
        AssetEvent("a", day2, None, {"score": 0.6, "age": 35.0}, {"tier": "high"}),
        AssetEvent("b", day2, 11.5, {"score": 0.3, "age": 40.0}, {"tier": "low"}),
    ]


def test_long_table_column_mapping_and_roles(tmp_path: Path) -> None:
    text = "id,when,price,score,tier,age\nx,1700000000000,5,1,low,30\nx,1700000001000,6,2,low,30\n"
    table = read_long_table(
        write(tmp_path, "m.csv", text),
        asset_col="id",
        ts_col="when",
        value_col="price",
        features=["score"],
        attributes=["tier", "age"],
    )
    events = list(table.events())
    assert [e.ts_ms for e in events] == [1700000000000, 1700000001000]
    assert events[1] == AssetEvent(
        "x", 1700000001000, 6.0, {"score": 2.0}, {"tier": "low", "age": 30.0}
    )


def test_long_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "asset_id": ["a", "a"],
            "ts": pd.to_datetime(["2024-01-02", "2024-01-01"]),
            "value": [2.0, 1.0],
            "vol": [0.1, 0.2],
            "sector": ["X", "X"],
        }
    )
    path = tmp_path / "long.parquet"
    frame.to_parquet(path)
    table = read_long_table(path)
    assert [(e.ts_ms, e.value) for e in table.events()] == [
        (parse_timestamp("2024-01-01"), 1.0),
        (parse_timestamp("2024-01-02"), 2.0),
    ]
    assert table.attributes == ("sector",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("asset_id,value\na,1\n", r"missing column 'ts'"),
        (
            "asset_id,ts,value\na,2024-01-01,1\na,not-a-date,2\n",
            r"unparseable date in column 'ts' at row 2: 'not-a-date'",
        ),
        (
            "asset_id,ts,value\na,2024-01-01,1\na,2024-01-02,1\na,2024-01-03,abc\n",
            r"non-numeric value in column 'value' at row 3: 'abc'",
        ),
        (
            "asset_id,ts,value,score\na,2024-01-01,1,0.5\na,2024-01-02,1,inf\n",
            r"non-numeric value in column 'score' at row 2",
        ),
        ("asset_id,ts,value\n,2024-01-01,1\n", r"missing asset id in column 'asset_id' at row 1"),
        ("asset_id,ts,value\na,,1\n", r"missing date in column 'ts' at row 1"),
    ],
)
def test_bad_long_files_name_row_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(DataError, match=message):
        read_long_table(path, features=["score"] if "score" in text else None)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_long_table(tmp_path / "nope.csv")


def test_wide_table_derives_returns_volatility_volume_and_attributes(tmp_path: Path) -> None:
    dates = pd.date_range("2024-01-01", periods=30, freq="D").strftime("%Y-%m-%d")
    rng = np.random.default_rng(0)
    prices = pd.DataFrame(
        {
            "Day": dates,
            "P": 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 30))),
            "Q": np.linspace(10, 20, 30),
        }
    )
    volumes = prices.assign(P=1000.0, Q=np.arange(30, dtype=float))
    prices.to_csv(tmp_path / "prices.csv", index=False)
    volumes.to_csv(tmp_path / "volume.csv", index=False)
    write(tmp_path, "attrs.csv", "ticker,gics_sector,beta\nP,Energy,1.2\n")
    table = read_wide_prices(
        tmp_path / "prices.csv",
        date_col="Day",
        attributes_path=tmp_path / "attrs.csv",
        attribute_names={"gics_sector": "sector"},
        volume_path=tmp_path / "volume.csv",
        volatility_window=5,
    )
    assert table.features == ("log_return", "volatility_5d", "volume")
    assert table.attributes == ("sector", "beta")
    p = table.frame[table.frame["asset_id"] == "P"].reset_index(drop=True)
    # Features are known at the previous close: day t never sees its own price (no leak).
    expected_ret = np.log(prices["P"]).diff().shift(1)
    np.testing.assert_allclose(p["log_return"][2:], expected_ret[2:])
    assert p["log_return"][:2].isna().all()
    expected_vol = np.log(prices["P"]).diff().rolling(5).std().shift(1)
    np.testing.assert_allclose(p["volatility_5d"][6:], expected_vol[6:])
    assert p["volatility_5d"][:6].isna().all()
    events = [e for e in table.events() if e.asset_id == "P"]
    assert events[0].features == {}  # undefined features are left out
    assert events[1].features == {"volume": 1000.0}
    assert events[0].attributes == {"sector": "Energy", "beta": 1.2}
    q_events = [e for e in table.events() if e.asset_id == "Q"]
    assert q_events[-1].attributes == {}  # no attribute row: no attributes
    assert q_events[-1].features["volume"] == 28.0  # the previous day's volume


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("When,A\n2024-01-01,1\n", r"missing column 'Date'"),
        (
            "Date,A,B\n2024-01-01,1,2\n2024-01-02,x,2\n",
            r"non-numeric value in column 'A' at row 2: 'x'",
        ),
        ("Date,A\n2024-01-01,1\n2024-13-45,2\n", r"unparseable date in column 'Date' at row 2"),
        (
            "Date,A\n2024-01-02,1\n2024-01-01,2\n",
            r"date not after the previous row in column 'Date' at row 2",
        ),
        ("Date,A\n2024-01-01,1\n2024-01-02,-3\n", r"non-positive price in column 'A' at row 2"),
    ],
)
def test_bad_wide_files_name_row_and_column(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_wide_prices(write(tmp_path, "w.csv", text))


def test_wide_unknown_asset_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\['ZZZ'\]"):
        read_wide_prices(write(tmp_path, "w.csv", "Date,A\n2024-01-01,1\n"), assets=["ZZZ"])


def test_sp500_loader_reads_real_prices_and_sectors(shared_data: Path) -> None:
    table = load_sp500(shared_data / "sp500_2015_2020", tickers=["AAPL", "JPM"])
    frame = table.frame
    assert len(frame) == 2 * 1440
    assert table.attributes == ("sector",)
    sectors = frame.groupby("asset_id")["sector"].first().to_dict()
    assert sectors == {"AAPL": "Information Technology", "JPM": "Financials"}
    first = frame["ts"].min()
    assert first == parse_timestamp("2015-01-05")
    jpm = frame[frame["asset_id"] == "JPM"].set_index("ts")
    # The COVID crash day's return is a feature of the next day's event, not of its own.
    assert jpm.loc[parse_timestamp("2020-03-17"), "log_return"] < -0.1
    assert jpm.loc[parse_timestamp("2020-03-16"), "log_return"] > -0.1


def test_sp500_loader_needs_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no prices\.csv"):
        load_sp500(tmp_path)


def test_fed_markers_and_builtin_shocks(shared_data: Path) -> None:
    markers = fed_changes(shared_data / "policy" / "fed_target_changes.csv")
    window = within(markers, parse_timestamp("2015-01-05"), parse_timestamp("2020-09-22"))
    hikes = [m for m in window if m.kind == "tightening"]
    assert len(hikes) == 9  # December 2015 to December 2018
    assert hikes[0].name == "Fed hike +25 bp to 0.50%"
    assert {m.kind for m in window} == {"tightening", "easing"}
    assert fed_changes(shared_data / "policy" / "fed_target_changes.csv", tightening_only=True)
    assert all(
        m.kind == "tightening"
        for m in fed_changes(
            shared_data / "policy" / "fed_target_changes.csv", tightening_only=True
        )
    )
    assert [m.ts_ms for m in MARKET_SHOCKS] == sorted(m.ts_ms for m in MARKET_SHOCKS)
    assert MARKET_SHOCKS[-1].to_message() == {
        "kind": "marker",
        "name": "COVID-19 crash",
        "ts": parse_timestamp("2020-03-16"),
        "source": "built-in",
        "marker_kind": "market-shock",
    }


def test_bad_fed_file_names_the_column(tmp_path: Path) -> None:
    path = write(tmp_path, "fed.csv", "announce_date,change_bp\n2020-01-01,25\n2020-02-01,lots\n")
    with pytest.raises(DataError, match=r"non-numeric value in column 'change_bp' at row 2"):
        fed_changes(path)
