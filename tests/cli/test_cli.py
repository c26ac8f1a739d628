"""The `losslab` command: catalog listing, one-line errors, and a tiny resumable noisy-labels run."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import losslab
from losslab.cli.main import main

pytest.importorskip("sklearn")

# The robust losses of the default list that are registered (all of them once the
# classification family has landed); `ce` is always there.
ROBUST = [n for n, reg in [("gce", "generalized_cross_entropy"), ("aldr_kl", "aldr_kl_loss")]
          if reg in losslab.list_losses()]
LOSSES = ",".join(["ce"] + ROBUST)
TINY = ["run", "noisy-labels", "--epochs", "2", "--seeds", "2", "--losses", LOSSES, "--quiet"]
N_RUNS = 2 * (1 + len(ROBUST))


# ----------------------------------------------------------------------------- list / info
def test_list_plain_pattern_and_markdown(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in losslab.list_losses())
    assert main(["list", "*entropy*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert {line.split()[0] for line in lines} == set(losslab.list_losses("*entropy*")) >= {"cross_entropy"}
    assert main(["list", "--markdown", "--family", "classification"]) == 0
    md = capsys.readouterr().out.strip().splitlines()
    assert md[0].startswith("| name |") and md[1].startswith("|---")
    assert len(md) == 2 + len(losslab.list_losses(family="classification"))
    assert any(line.startswith("| `cross_entropy` | classification |") for line in md)
    assert main(["list", "no_such_*"]) == 0
    assert "no objective matches" in capsys.readouterr().out


def test_info_shows_signature_reference_and_properties(capsys):
    assert main(["info", "cross_entropy"]) == 0
    out = capsys.readouterr().out
    info = losslab.info("cross_entropy")
    assert out.startswith("cross_entropy  (classification)")
    assert "losslab.functional.cross_entropy(logits" in out and "label_smoothing" in out
    assert "losslab.nn.CrossEntropyLoss" in out
    assert info.reference.url in out and info.reference.title in out
    assert "classification_calibrated=True" in out
    assert "Args:" in out  # the docstring (formula, arguments) follows


@pytest.mark.parametrize(
    "argv,message",
    [
        (["info", "crossentropy"], "did you mean 'cross_entropy'"),
        (["info", "not_a_loss"], "no objective named 'not_a_loss'"),
        (["list", "--family", "nope"], "unknown family 'nope'"),
        (["run", "no-such-experiment"], "invalid choice"),
    ],
)
def test_unknown_name_is_one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("losslab: error:") and message in err and "\n" not in err


# ----------------------------------------------------------------------------- bad run input
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--losses", "ce,nope"], "unknown objective 'nope'"),
        (["--losses", "comp_sum_loss"], "missing 1 required keyword-only argument: 'tau'"),
        (["--losses", "ce:lam"], "bad objective spec"),
        (["--losses", "ce,ce"], "names an objective twice"),
        (["--losses", "z_loss"], "does not take (logits, target)"),
        (["--noise", "1.0"], "--noise must be in [0, 1)"),
        (["--noise", "-0.1"], "--noise must be in [0, 1)"),
        (["--noise", "nan"], "--noise must be in [0, 1)"),
        (["--noise", "0.95"], "no longer the plurality"),
        (["--noise", "0.5", "--noise-type", "asymmetric"], "needs noise < 0.5"),
        (["--noise", "0.5", "--dataset", "breast-cancer"], "needs noise < 0.5"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--noise-type", "pairflip"], "--noise-type"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--epochs", "x"], "invalid int value"),
        (["--lr", "-1"], "--lr must be a positive number"),
    ],
)
def test_bad_run_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    assert main(TINY + ["--out", str(tmp_path / "out")] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("losslab: error:") and message in err and err.count("\n") == 0
    assert not (tmp_path / "out").exists()  # rejected before anything is written


def test_out_that_is_a_file_exits_2_and_leaves_it_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("keep me")
    assert main(TINY + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("losslab: error:") and "is not a folder" in err and err.count("\n") == 0
    assert out.read_text() == "keep me"


def test_console_script_exit_code_and_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("losslab")  # the installed console script (.venv/bin/losslab)
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "losslab.cli"]
    proc = subprocess.run(cmd + ["run", "noisy-labels", "--noise", "2", "--losses", "ce,nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "losslab: error: --noise must be in [0, 1), got 2.0\n" and proc.stdout == ""


# ----------------------------------------------------------------------------- tiny runs
def _results(out: Path):
    return json.loads((out / "results.json").read_text())


def test_tiny_run_writes_files_and_is_deterministic(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the run draws its figure
    a, b = tmp_path / "a", tmp_path / "b"
    threads = torch.get_num_threads()
    assert main(TINY + ["--out", str(a)]) == 0
    assert torch.get_num_threads() == threads  # the run restores the global setting
    table = capsys.readouterr().out
    assert "clean test accuracy after 2 epochs (final epoch; mean ± std over 2 seeds)" in table
    assert all(f"\n{name} " in table for name in LOSSES.split(","))
    assert main(TINY + ["--out", str(b)]) == 0
    ra, rb = _results(a), _results(b)
    # Same seeds and configuration -> identical numbers (and per-run files byte for byte).
    assert ra["results"] == rb["results"] and ra["curves"] == rb["curves"]
    for p in (a / "runs").glob("*.json"):
        assert p.read_bytes() == (b / "runs" / p.name).read_bytes()
    assert [r["objective"] for r in ra["results"]] == LOSSES.split(",")
    assert ra["config"]["epochs"] == 2 and ra["config"]["noise"] == 0.4 and ra["config"]["dataset"] == "digits"
    for r in ra["results"]:
        assert 0.1 < r["final_test_accuracy_mean"] <= 1.0 and r["seeds"] == 2
        assert abs(r["observed_noise_mean"] - 0.4) < 0.05
        assert len(set(r["final_test_accuracy_per_seed"])) == 2  # two seeds, two different runs
        assert len(ra["curves"][r["objective"]]) == 2
    with open(a / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["objective"] for r in rows] == LOSSES.split(",")
    assert float(rows[0]["final_test_accuracy_mean"]) == ra["results"][0]["final_test_accuracy_mean"]
    assert (a / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = sorted(p.name for p in (a / "runs").glob("*.json"))
    assert len(runs) == N_RUNS and "ce-seed0.json" in runs
    one = json.loads((a / "runs" / "ce-seed1.json").read_text())
    assert one["config"] == ra["config"] and one["seed"] == 1 and len(one["test_accuracy"]) == 2
    assert not [p for p in a.rglob("*") if p.name.endswith(".tmp")]


def test_progress_bar_on_a_tty(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")  # the run draws its figure
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    argv = ["run", "noisy-labels", "--epochs", "1", "--seeds", "1", "--losses", "ce", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "noisy-labels: 100%" in capsys.readouterr().err


def test_interrupted_run_resumes_from_finished_results(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")  # the run draws its figure
    from losslab.experiments import noisy_labels

    out = tmp_path / "resume"
    real = noisy_labels.train_one
    calls = []

    def interrupt_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the third run
        calls.append((args[2], args[4]))
        return real(*args, **kwargs)

    monkeypatch.setattr(noisy_labels, "train_one", interrupt_after_two)
    assert main(TINY + ["--out", str(out)]) == 130  # finished runs are kept
    assert "interrupted" in capsys.readouterr().err
    finished = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert finished == ["ce-seed0.json", "ce-seed1.json"]
    saved = {p: (out / "runs" / p).read_bytes() for p in finished}

    calls.clear()
    monkeypatch.setattr(noisy_labels, "train_one", lambda *a, **k: (calls.append((a[2], a[4])), real(*a, **k))[1])
    assert main(TINY + ["--out", str(out)]) == 0
    assert len(calls) == N_RUNS - 2 and ("cross_entropy", 0) not in calls  # only the missing runs
    assert all((out / "runs" / p).read_bytes() == saved[p] for p in saved)  # reused, not rewritten
    assert f"resuming: 2 of {N_RUNS}" in capsys.readouterr().err

    # A lost run file is recomputed alone, identical to the one it replaces.
    lost = out / "runs" / "ce-seed1.json"
    before = lost.read_bytes()
    lost.unlink()
    calls.clear()
    assert main(TINY + ["--out", str(out)]) == 0
    assert calls == [("cross_entropy", 1)] and lost.read_bytes() == before

    # The resumed study equals an uninterrupted one.
    fresh = tmp_path / "fresh"
    assert main(TINY + ["--out", str(fresh)]) == 0
    assert _results(out)["results"] == _results(fresh)["results"]


def test_more_seeds_reuse_finished_runs_and_changed_config_is_refused(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")  # the run draws its figure
    from losslab.experiments import noisy_labels

    base = ["run", "noisy-labels", "--epochs", "1", "--losses", "ce", "--quiet", "--out", str(tmp_path)]
    assert main(base + ["--seeds", "1"]) == 0
    calls = []
    real = noisy_labels.train_one
    monkeypatch.setattr(noisy_labels, "train_one", lambda *a, **k: (calls.append(a[4]), real(*a, **k))[1])
    assert main(base + ["--seeds", "2"]) == 0
    assert calls == [1]
    capsys.readouterr()
    assert main(base + ["--seeds", "2", "--noise", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "different configuration (differs in: noise)" in err and err.count("\n") == 1
    # A run file made with other hyperparameters under the same name is not silently reused.
    rec = json.loads((tmp_path / "runs" / "ce-seed0.json").read_text())
    rec["hyperparameters"] = {"label_smoothing": 0.1}
    (tmp_path / "runs" / "ce-seed0.json").write_text(json.dumps(rec))
    assert main(base + ["--seeds", "2"]) == 2
    assert "was made with other settings" in capsys.readouterr().err


def test_help_of_every_command_and_experiment_prints(capsys):
    from losslab.cli.main import main
    from losslab.experiments import discover

    for argv in (["--help"], ["run", "--help"], ["bench", "--help"],
                 *(["run", name, "--help"] for name in discover())):
        assert main(argv) == 0, argv
        assert "usage: losslab" in capsys.readouterr().out, argv
