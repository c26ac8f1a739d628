import importlib.util
import json

import pytest

import losslab
from losslab.cli.main import main

pytest.importorskip("sklearn")
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def test_small_temperature_is_more_uniform_and_less_tolerant(tmp_path, capsys):
    """Wang & Liu's claim on a tiny run (8 epochs, seed 0): tau=0.1 vs tau=1.0.

    Observed margins on this run: uniformity -2.53 vs -2.01, tolerance 0.59 vs 0.65.
    """
    out = tmp_path / "ct"
    args = ["run", "contrastive-temperature", "--temperatures", "0.1,1.0", "--epochs", "8", "--seeds", "1",
            "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    by = {r["temperature"]: r for r in res["summary"]}
    assert by[0.1]["uniformity"] < by[1.0]["uniformity"]
    assert by[0.1]["tolerance"] < by[1.0]["tolerance"]
    for r in res["runs"]:
        assert 0.8 < r["probe_accuracy"] <= 1.0  # 10 classes: chance is 0.1
        assert -4.0 <= r["uniformity"] <= 0.0 and -1.0 <= r["tolerance"] <= 1.0
    assert not HAS_MPL or (out / "temperature.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    text = capsys.readouterr().out
    assert "uniformity" in text and "probe acc" in text


def test_supcon_objective_runs(tmp_path):
    out = tmp_path / "sc"
    assert main(["run", "contrastive-temperature", "--objective", "supcon_loss", "--temperatures", "0.5",
                 "--epochs", "1", "--seeds", "1", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["objective"] == "supcon_loss"


def test_robust_objective_is_named_when_missing(tmp_path, capsys):
    args = ["run", "contrastive-temperature", "--objective", "robust_contrastive_loss", "--temperatures", "0.5",
            "--epochs", "1", "--seeds", "1", "--out", str(tmp_path)]
    if "robust_contrastive_loss" in losslab.list_losses():
        assert main(args) == 0
    else:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "robust_contrastive_loss" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra,msg", [
    (["--temperatures", "0.1,0"], "temperature must be a finite number > 0"),
    (["--temperatures", "a,b"], "comma-separated numbers"),
    (["--objective", "triplet"], "--objective must be one of"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_input(tmp_path, capsys, extra, msg):
    assert main(["run", "contrastive-temperature", "--out", str(tmp_path)] + extra) == 2
    assert msg in capsys.readouterr().err
