"""CLI plumbing that needs no model: every --help works, user errors print one line and exit 2."""

import subprocess
import sys

import pytest

from cli.main import build_parser, main

COMMANDS = ["world", "bootstrap", "train", "caption", "rewrite", "index", "search", "chat", "batch", "eval", "demo"]


def test_every_subcommand_has_help(capsys):
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert names == set(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: lineup " + name in capsys.readouterr().out


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, check=True)
    assert "search" in out.stdout and "chat" in out.stdout


def test_user_error_is_one_line_without_traceback(tmp_path, capsys):
    rc = main(["search", "--text", "a man in red", "--project", str(tmp_path / "nowhere")])
    out = capsys.readouterr().out
    assert rc == 2
    assert "error:" in out and "Traceback" not in out
    assert "lineup bootstrap" in out  # says what to do
    assert len(out.strip().splitlines()) == 1


def test_bad_filter_is_reported(tmp_path, capsys):
    from cli.commands import _parse_filters
    from mllm_embed.errors import LineupError

    assert _parse_filters(["camera_id=3", "split=test"]) == {"camera_id": 3, "split": "test"}
    with pytest.raises(LineupError, match="FIELD=VALUE"):
        _parse_filters(["camera_id"])


def test_metrics_table_moves_shared_counts_into_the_caption():
    from cli.ui import metrics_table

    rows = {"base": {"R@1": 1.0, "R@10": 25.0, "queries": 204, "skipped": 0},
            "stage2": {"R@1": 5.9, "R@10": 41.2, "queries": 204, "skipped": 0}}
    table = metrics_table("composed", rows)
    assert [c.header for c in table.columns] == ["", "R@1", "R@10"]
    assert table.caption == "queries 204 · skipped 0"
    one = metrics_table("one run", {"stage2": rows["stage2"]})
    assert [c.header for c in one.columns] == ["", "R@1", "R@10", "queries", "skipped"]
