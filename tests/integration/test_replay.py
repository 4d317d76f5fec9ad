"""Replay into a real Kafka broker: order, keys, content, shocks, pacing, markers, the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from streamval.cli import main
from streamval.config import Settings
from streamval.errors import BrokerError
from streamval.stream.contract.schema import AssetEvent, parse_event, parse_timestamp
from streamval.stream.datasets import EventTable, generate
from streamval.stream.datasets.sp500 import load_sp500
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics
from streamval.stream.replay.markers import MARKET_SHOCKS, Marker
from streamval.stream.replay.producer import replay
from streamval.stream.replay.scenarios import load_scenario

pytestmark = pytest.mark.kafka

DAY = 86_400_000


def read_all(
    settings: Settings, topic: str, expected: int, timeout_s: float = 30.0
) -> list[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of the records of `topic` (see `read_records`)."""
    return [
        (r.partition, r.offset, r.key, r.value)
        for r in read_topic(settings, topic, expected=expected, timeout_s=timeout_s)
    ]


def events_of(records: list[tuple[int, int, bytes, bytes]]) -> list[AssetEvent]:
    out = []
    for _, _, key, value in sorted(records, key=lambda r: (r[0], r[1])):
        event = parse_event(value)
        assert isinstance(event, AssetEvent)
        assert key == event.asset_id.encode()
        out.append(event)
    return out


def small_long_table() -> EventTable:
    rows = [
        {
            "asset_id": f"A{a}",
            "ts": parse_timestamp("2024-01-01") + d * DAY,
            "value": 10.0 + a + d,
            "score": float(d),
            "tier": "high" if a % 2 else "low",
        }
        for d in range(8)
        for a in range(5)
    ]
    return EventTable.from_frame(pd.DataFrame(rows), features=["score"], attributes=["tier"])


def test_long_table_replays_in_event_time_order(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topics.input], partitions=1)
    table = small_long_table()
    progress: list[int] = []
    report = replay(kafka_settings, table, on_progress=progress.append)
    assert report.events == 40 and report.assets == 5
    records = read_all(kafka_settings, kafka_settings.topics.input, 40)
    assert len(records) == 40
    assert events_of(records) == list(table.events())  # one partition: global order
    assert progress[-1] == 40


def test_sp500_wide_table_with_sectors(kafka_settings: Settings, shared_data: Path) -> None:
    table = load_sp500(shared_data / "sp500_2015_2020", tickers=["AAPL", "JPM", "XOM"])
    table = table.between(parse_timestamp("2020-03-02"), parse_timestamp("2020-03-27"))
    expected = list(table.events())
    assert len(expected) == 3 * 20
    replay(kafka_settings, table)  # three partitions: order holds per key
    got = events_of(read_all(kafka_settings, kafka_settings.topics.input, len(expected)))
    assert sorted(got, key=lambda e: (e.ts_ms, e.asset_id)) == expected
    for ticker in ("AAPL", "JPM", "XOM"):
        mine = [e.ts_ms for e in got if e.asset_id == ticker]
        assert mine == sorted(mine) and len(mine) == 20
    jpm = next(e for e in got if e.asset_id == "JPM")
    assert jpm.attributes == {"sector": "Financials"}
    assert set(jpm.features) == {"log_return", "volatility_20d"}


def test_generated_credit_book(kafka_settings: Settings) -> None:
    book = generate(n_customers=20)
    report = replay(kafka_settings, book.table)
    assert report.events == 480 and report.assets == 20
    got = events_of(read_all(kafka_settings, kafka_settings.topics.input, 480))
    assert sorted(got, key=lambda e: (e.ts_ms, e.asset_id)) == list(book.events())


def test_scenario_changes_only_selected_assets_from_its_time(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "halve.toml"
    path.write_text(
        '[[shock]]\nwhere = { tier = "high" }\nat = "2024-01-05"\nop = "scale"\namount = 0.5\n'
    )
    table = small_long_table()
    replay(kafka_settings, load_scenario(path).apply(table))
    got = events_of(read_all(kafka_settings, kafka_settings.topics.input, len(table)))
    shocked = {(e.asset_id, e.ts_ms): e.value for e in got}
    base = {(e.asset_id, e.ts_ms): e.value for e in table.events()}
    assert set(shocked) == set(base)
    start = parse_timestamp("2024-01-05")
    for (asset, ts), value in base.items():
        assert value is not None
        hit = asset in {"A1", "A3"} and ts >= start
        assert shocked[(asset, ts)] == (value * 0.5 if hit else value)


def send_span_s(settings: Settings, topic: str, expected: int) -> float:
    """Seconds between the first and the last record's producer timestamp (CreateTime, set at
    send), so topic creation and connecting do not count."""
    stamps: list[int] = [r.timestamp for r in read_topic(settings, topic, expected=expected)]
    assert len(stamps) == expected
    return (max(stamps) - min(stamps)) / 1000


def test_before_time_holds_each_day_with_the_earlier_days_delivered(
    kafka_settings: Settings,
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topics.input], partitions=1)
    table = small_long_table()  # 8 days of 5 assets
    calls: list[tuple[int, int, int]] = []

    def before_time(sent: int, ts_ms: int) -> None:
        # What was sent is on the broker already: a consumer can catch up before the next day.
        records = read_all(kafka_settings, kafka_settings.topics.input, sent, timeout_s=10.0)
        calls.append((sent, ts_ms, len(records)))

    replay(kafka_settings, table, before_time=before_time)
    start = parse_timestamp("2024-01-01")
    assert calls == [(5 * d, start + d * DAY, 5 * d) for d in range(1, 8)]


def test_rate_pacing(kafka_settings: Settings) -> None:
    table = small_long_table()  # 40 events
    replay(kafka_settings, table, rate=40.0)  # 39 gaps of 25 ms: 0.975 s
    span = send_span_s(kafka_settings, kafka_settings.topics.input, len(table))
    assert 0.9 * 0.975 <= span <= 2.0 * 0.975


def test_speed_pacing_and_markers(kafka_settings: Settings) -> None:
    table = small_long_table()  # 7 days of event time
    marker = Marker(parse_timestamp("2024-01-04"), "test hike", "tightening", "test")
    seen: list[Marker] = []
    report = replay(
        kafka_settings,
        table,
        speed=7 * 86400.0,
        markers=[marker, *MARKET_SHOCKS],
        on_marker=seen.append,
    )  # the first and the last event are 7 days apart in event time: 1 s apart here
    span = send_span_s(kafka_settings, kafka_settings.topics.input, len(table))
    assert 0.9 <= span <= 2.0
    assert report.markers == 1 and seen == [marker]
    records = read_all(kafka_settings, kafka_settings.topics.metrics, 1)
    assert len(records) == 1
    assert records[0][2] == b"marker"
    assert json.loads(records[0][3]) == {
        "kind": "marker",
        "name": "test hike",
        "ts": marker.ts_ms,
        "source": "test",
        "marker_kind": "tightening",
    }


def test_unreachable_broker_fails_clearly(kafka_settings: Settings) -> None:
    dead = kafka_settings.with_bootstrap("127.0.0.1:1")
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"cannot reach the Kafka cluster at 127\.0\.0\.1:1"):
        replay(dead, small_long_table())
    assert time.monotonic() - t0 < 10


def cli_topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [
        "--bootstrap-servers",
        str(settings.kafka.bootstrap_servers),
        "--set",
        f"topics.input={t.input}",
        "--set",
        f"topics.metrics={t.metrics}",
    ]


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--dataset" in out and "--speed" in out and "policy-tightening" in out


def test_cli_replays_sp500_with_markers(
    kafka_settings: Settings, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "replay",
            "--dataset",
            "sp500",
            "--data-dir",
            str(shared_data / "sp500_2015_2020"),
            "--assets",
            "AAPL,JPM",
            "--from",
            "2020-03-09",
            "--to",
            "2020-03-20",
            "--markers",
            str(shared_data / "policy" / "fed_target_changes.csv"),
            "--no-progress",
            *cli_topics(kafka_settings),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "replayed 20 events of 2 assets" in out
    # Fed cut 2020-03-15 (announced) and the COVID crash 2020-03-16 fall inside the period.
    assert "2 markers" in out
    got = events_of(read_all(kafka_settings, kafka_settings.topics.input, 20))
    assert {e.asset_id for e in got} == {"AAPL", "JPM"}
    names = [
        json.loads(r[3])["name"] for r in read_all(kafka_settings, kafka_settings.topics.metrics, 2)
    ]
    assert names == ["Fed cut -100 bp to 0.25%", "COVID-19 crash"]


def test_cli_bad_file_names_row_and_column(
    kafka_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("asset_id,ts,value\na,2024-01-01,1\na,2024-01-02,oops\n")
    code = main(["replay", "--long", str(bad), "--no-progress", *cli_topics(kafka_settings)])
    assert code == 2
    err = capsys.readouterr().err
    assert "non-numeric value in column 'value' at row 2: 'oops'" in err
