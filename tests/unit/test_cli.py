"""The CLI explains itself; settings errors exit 2 with the key named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from streamval.cli import build_parser, main
from streamval.commands import COMMANDS
from streamval.stream.replay.markers import Marker


def test_top_level_help_explains_product_and_lists_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "values assets from a stream of events" in out
    for name in ("demo", "run", "replay", "backtest", "kafka", "config"):
        assert f"    {name}" in out


def test_every_command_has_a_useful_help(capsys: pytest.CaptureFixture[str]) -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    names = sorted(sub.choices)  # type: ignore[arg-type]
    assert len(names) == len(COMMANDS)
    for name in names:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "--config" in out and "--set" in out, name
        assert len(out.splitlines()) > 8, name


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "commands" in capsys.readouterr().out


def test_config_shows_merged_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMVAL_ENGINE__LR", "0.005")
    assert main(["config", "--json", "--set", "engine.seq_len=6"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engine"]["lr"] == {"value": 0.005, "source": "environment"}
    assert data["engine"]["seq_len"] == {"value": 6, "source": "flags"}
    assert data["engine"]["hidden"]["source"] == "default"


def test_config_redacts_secrets_and_names_each_source(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "streamval.toml"
    toml.write_text(
        '[kafka.client]\nsecurity_protocol = "SASL_SSL"\nsasl_plain_password = "hunter2-secret"\n'
        'ssl_password = "keypass-9876"\n[consumer]\ngroup_id = "g1"\n'
    )
    monkeypatch.setenv("STREAMVAL_ENGINE__LR", "0.005")
    for fmt in ([], ["--json"]):
        assert main(["config", "--config", str(toml), *fmt]) == 0
        out = capsys.readouterr().out
        assert "hunter2-secret" not in out and "keypass-9876" not in out
        assert out.count("***") >= 2
    assert main(["config", "--config", str(toml)]) == 0
    text = capsys.readouterr().out
    assert f'group_id = "g1"  # {toml}' in text
    assert "lr = 0.005  # environment" in text
    assert "seq_len = 12  # default" in text


def test_logs_never_show_secrets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import logging

    from streamval.logs import JsonFormatter, TextFormatter, register_secrets

    register_secrets(["hunter2-secret"])
    record = logging.LogRecord("x", logging.WARNING, "", 0, "conf %s", ("hunter2-secret",), None)
    record.config = {"sasl_plain_password": "hunter2-secret"}
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert "hunter2-secret" not in line and "***" in line


def test_bad_setting_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "engine.seq_len=-3"]) == 2
    err = capsys.readouterr().err
    assert "engine.seq_len" in err and "Traceback" not in err


def test_markers_from_a_data_folder_or_built_in_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from streamval.commands.replay import load_markers
    from streamval.stream.replay.markers import MARKET_SHOCKS

    def markers(value: str | None, data_dir: Path | None = None) -> list[Marker]:
        return load_markers(argparse.Namespace(markers=value, data_dir=data_dir))

    assert markers(None) == []
    assert markers("") == sorted(MARKET_SHOCKS)
    policy = tmp_path / "data" / "policy"
    policy.mkdir(parents=True)
    (policy / "fed_target_changes.csv").write_text(
        "announce_date,fred_effective_date,source_series,new_target,change_bp\n"
        "2022-03-16,2022-03-17,DFEDTARU,0.5,25\n"
    )
    from_folder = markers(str(tmp_path / "data"))
    assert len(from_folder) == len(MARKET_SHOCKS) + 1
    assert from_folder == markers(str(policy / "fed_target_changes.csv"))
    assert from_folder == markers("", data_dir=tmp_path / "data" / "sp500_2015_2020")
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level("WARNING"):
        assert markers(str(empty)) == sorted(MARKET_SHOCKS)
    assert "built-in market shocks only" in caplog.text


def test_run_help_recommends_an_instance_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--instance-id" in out and "recommended" in out and "--discard-checkpoint" in out


def test_expected_coordinator_retries_are_not_logged_as_warnings() -> None:
    import logging

    from streamval.logs import setup_logging

    setup_logging("INFO", "text")
    handler = logging.getLogger().handlers[0]
    retry = logging.LogRecord(
        "kafka.coordinator.base",
        logging.WARNING,
        "",
        0,
        "Marking the coordinator dead (node 1) for group g: [Error 16] NotCoordinatorError.",
        None,
        None,
    )
    fault = logging.LogRecord(
        "kafka.producer.sender", logging.WARNING, "", 0, "Got MessageSizeTooLargeError", None, None
    )
    assert not handler.filter(retry) and retry.levelname == "DEBUG"
    assert handler.filter(fault) and fault.levelname == "WARNING"
