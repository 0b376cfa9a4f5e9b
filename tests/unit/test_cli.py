"""The `sea-dist` console script (sea_dist/cli.py) and the jobs/*.py wrappers over it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sea_dist import cli

REPO = Path(__file__).resolve().parents[2]


def test_usage_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "prepare", "synthetic", "example"):
        assert f"\n  {name} " in out
    assert cli.main([]) == 2 and "usage: sea-dist COMMAND" in capsys.readouterr().err


def test_unknown_command_is_one_error_line(capsys):
    assert cli.main(["trian"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sea-dist: error: unknown command 'trian'; choose one of train, prepare, synthetic, example"]


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_each_job_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sea-dist {command} ") and "train.max_failures" in out


def test_a_configuration_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "model.no_such_knob=1"])
    assert exit_info.value.code == 2
    assert "unknown key 'model.no_such_knob'" in capsys.readouterr().err


def test_prepare_reports_a_missing_dataset_as_one_line(tmp_path, capsys):
    assert cli.main(["prepare", f"data.root={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] and "Traceback" not in err
    assert "dataset.json" in err


def test_synthetic_writes_a_dataset_relative_to_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["synthetic", "--users", "40", "--items", "30", "--interactions", "400",
                     "--image-dim", "4", "--text-dim", "4", "--out", "small"]) == 0
    meta = json.loads((tmp_path / "small" / "dataset.json").read_text())
    assert meta["n_items"] == 30 and meta["modalities"] == {"image": 4, "text": 4}


def test_installed_console_script_and_job_wrappers():
    """`sea-dist` as `pip install -e .` installs it, and `python jobs/*.py`, are one CLI."""
    script = shutil.which("sea-dist")
    assert script, "no sea-dist on PATH: install the project (pip install -e .)"
    runs = {
        "sea-dist": [script, "--help"],
        "sea-dist prepare": [script, "prepare", "--help"],
        "jobs/train.py": [sys.executable, "jobs/train.py", "--help"],
        "jobs/prepare.py": [sys.executable, "jobs/prepare.py", "--help"],
    }
    for name, argv in runs.items():
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        expected = "usage: sea-dist COMMAND" if name == "sea-dist" else f"usage: {name}"
        assert result.stdout.startswith(expected), (name, result.stdout[:200])
