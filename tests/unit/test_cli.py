"""The CLI explains itself; settings errors exit 2 with the key named."""

from __future__ import annotations

import json

import pytest

from streamval.cli import build_parser, main
from streamval.commands import COMMANDS


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
    assert data["engine"]["lr"] == 0.005 and data["engine"]["seq_len"] == 6


def test_bad_setting_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "engine.seq_len=-3"]) == 2
    err = capsys.readouterr().err
    assert "engine.seq_len" in err and "Traceback" not in err
