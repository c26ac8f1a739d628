"""Tiny runs of ``losslab run calibration`` and ``losslab run censored-regression``.

Figures quoted here come from these exact tiny commands (printed on the development machine,
2026-12-02); the assertions are the claims the README makes about the full runs, at margins
these tiny runs clear."""
import importlib.util
import json

import pytest

from losslab.cli.main import main

pytest.importorskip("sklearn")
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def test_calibration_tiny_run(tmp_path, capsys):
    out = tmp_path / "cal"
    assert main(["run", "calibration", "--seeds", "1", "--epochs", "15", "--calibration-size", "300",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["results"]}
    assert set(rows) == {"uncalibrated", "temperature", "ca", "ca_reweighted", "h_calibration"}
    # A temperature changes no prediction: the accuracy is the same in every row.
    assert len({r["accuracy"] for r in rows.values()}) == 1 and rows["temperature"]["accuracy"] > 0.9
    # Temperature scaling minimizes the calibration-set NLL; on the test split its NLL is at
    # most the uncalibrated one's plus a small generalization gap.
    assert rows["temperature"]["nll"] <= rows["uncalibrated"]["nll"] + 0.01
    assert res["runs"][0]["temperature"]["uncalibrated"] == 1.0
    assert not HAS_MPL or (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "ECE" in capsys.readouterr().out


def test_censored_regression_tiny_run_shows_the_naive_bias(tmp_path, capsys):
    out = tmp_path / "cens"
    assert main(["run", "censored-regression", "--rates", "0,0.4", "--n", "200", "--seeds", "2",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    by = {(r["censoring_rate"], r["method"]): r for r in rows}
    # no censoring: the two fits are the same least-squares problem
    assert by[(0.0, "naive")]["excess_risk"] == pytest.approx(by[(0.0, "km")]["excess_risk"], rel=1e-6)
    # 40 % censoring: the naive fit is biased downwards (README full run: bias -0.49), the
    # Kaplan-Meier-weighted fit is not (README: +0.001)
    assert by[(0.4, "naive")]["bias"] < -0.3 and abs(by[(0.4, "km")]["bias"]) < 0.1
    assert by[(0.4, "naive")]["excess_risk"] > 20 * by[(0.4, "km")]["excess_risk"]
    assert abs(by[(0.4, "km")]["observed_censoring"] - 0.4) < 0.1
    assert not HAS_MPL or (out / "censoring.png").read_bytes()[:4] == b"\x89PNG"
    assert "excess risk" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["run", "censored-regression", "--rates", "0,1.5"], "--rates"),
    (["run", "calibration", "--calibration-size", "5"], "--calibration-size"),
])
def test_bad_input(tmp_path, capsys, argv, msg):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert msg in capsys.readouterr().err
