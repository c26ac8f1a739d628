"""The `losslab` command: catalog listing, errors, and a tiny resumable noisy-labels run."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import losslab
from losslab.cli.main import main

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

TINY = ["run", "noisy-labels", "--epochs", "2", "--seeds", "2", "--losses", "ce,gce,aldr_kl", "--quiet"]


def test_list_plain_pattern_and_markdown(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in losslab.list_losses())
    assert main(["list", "*entropy*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all("entropy" in line.split()[0] for line in lines)
    assert main(["list", "--markdown", "--family", "ranking"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| name |") and "`mw_loss`" in md and "cross_entropy" not in md


def test_info_shows_formula_reference_and_properties(capsys):
    assert main(["info", "focal_loss"]) == 0
    out = capsys.readouterr().out
    assert "Focal Loss for Dense Object Detection" in out and "arxiv.org/abs/1708.02002" in out
    assert "losslab.nn.FocalLoss" in out and "(1 - p_y)" in out and "gamma" in out


def test_unknown_name_is_one_line_error(capsys):
    assert main(["info", "not_a_loss"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("losslab: error:") and "\n" not in err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--losses", "ce,nope"], "unknown objective 'nope'"),
        (["--noise", "1.0"], "--noise must be in [0, 1)"),
        (["--noise", "0.95"], "no longer the plurality"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--noise-type", "pairflip"], "--noise-type"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--losses", "mw_loss"], "not a classification objective"),
    ],
)
def test_bad_run_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    assert main(TINY + ["--out", str(tmp_path)] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_console_script_exit_code_and_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("losslab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "losslab.cli"]
    proc = subprocess.run(cmd + ["run", "noisy-labels", "--noise", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("losslab: error:")


def _results(out: Path):
    return json.loads((out / "results.json").read_text())


def test_tiny_run_writes_files_and_is_deterministic(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(TINY + ["--out", str(a)]) == 0
    table = capsys.readouterr().out
    assert "clean test accuracy" in table and "aldr_kl" in table
    assert main(TINY + ["--out", str(b)]) == 0
    ra, rb = _results(a), _results(b)
    assert ra["results"] == rb["results"] and ra["curves"] == rb["curves"]
    assert {r["objective"] for r in ra["results"]} == {"ce", "gce", "aldr_kl"}
    with open(a / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (a / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((a / "runs").glob("*.json"))) == 6
    assert not list(a.rglob("*.tmp"))


def test_interrupted_run_resumes_from_finished_results(tmp_path, capsys, monkeypatch):
    from losslab.experiments import noisy_labels

    out = tmp_path / "resume"
    real = noisy_labels.train_one
    calls = []

    def interrupt_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[2:4])
        return real(*args, **kwargs)

    monkeypatch.setattr(noisy_labels, "train_one", interrupt_after_two)
    assert main(TINY + ["--out", str(out)]) == 130  # Ctrl-C: finished runs are kept
    finished = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert len(finished) == 2
    saved = {p: (out / "runs" / p).read_bytes() for p in finished}

    calls.clear()
    monkeypatch.setattr(noisy_labels, "train_one", lambda *a, **k: (calls.append(a[2:4]), real(*a, **k))[1])
    assert main(TINY + ["--out", str(out)]) == 0
    assert len(calls) == 4  # only the 4 missing runs were trained
    assert all((out / "runs" / p).read_bytes() == saved[p] for p in saved)
    assert "resuming: 2 of 6" in capsys.readouterr().err
    # The resumed result equals an uninterrupted run's.
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(noisy_labels, "train_one", real)
    assert main(TINY + ["--out", str(fresh)]) == 0
    assert _results(out)["results"] == _results(fresh)["results"]


def test_changed_config_in_same_out_is_refused(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path)]) == 0
    assert main(TINY + ["--out", str(tmp_path), "--noise", "0.2"]) == 2
    assert "different configuration" in capsys.readouterr().err
