import importlib.util
import json
import math

import pytest

from losslab.cli.main import main

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def test_known_answers():
    """The closed forms the experiment compares against."""
    from losslab.experiments.variance_reduction import bandit_problem, gaussian_truth

    stats = pytest.importorskip("scipy.stats")
    k = 1.5
    assert gaussian_truth(k) == pytest.approx(stats.norm.pdf(k) - k * stats.norm.sf(k), rel=1e-12)
    prob = bandit_problem()
    value = sum(float(prob["target"][x] @ prob["mean_reward"][x]) for x in range(prob["target"].shape[0])) / 20
    assert prob["value"] == pytest.approx(value, rel=1e-12)


def test_tiny_run_shows_the_variance_reduction_and_writes_files(tmp_path, capsys):
    """A tiny run (40 repeats, n = 50 and 500, 2 epochs, fixed seeds) printed sd ratios to the
    baseline of 0.43 / 0.32 (control variates), 0.21 / 0.22 (importance sampling), 0.63 / 0.67
    (SNIPS) and 0.56 / 0.58 (doubly robust) for n = 50 / 500; the theory for n -> infinity is
    sqrt(1 - R^2) = 0.36 for the polynomial controls. The test asserts the ordering with margin,
    and that every mean is within 4 of its own standard errors of the known answer."""
    pytest.importorskip("sklearn")
    out = tmp_path / "vr"
    argv = ["run", "variance-reduction", "--sizes", "50,500", "--repeats", "40", "--epochs", "2", "--window", "1",
            "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    for r in res["results"]:
        assert abs(r["mean"] - r["truth"]) < 4 * r["sd"] / math.sqrt(40), r
        assert 0.5 < r["mean_stderr"] / r["sd"] < 2.0, r  # the reported stderr tracks the actual spread
    by = {(r["problem"], r["estimator"], r["n"]): r for r in res["results"]}
    for n in (50, 500):
        assert by[("gaussian", "control variates", n)]["sd_ratio_to_baseline"] < 0.6
        assert by[("gaussian", "importance sampling", n)]["sd_ratio_to_baseline"] < 0.4
        assert by[("bandit", "doubly robust", n)]["sd_ratio_to_baseline"] < 0.8
        assert by[("bandit", "SNIPS", n)]["sd_ratio_to_baseline"] < 0.9
    # the standard error shrinks like 1 / sqrt(n): 10x the samples, ~1/sqrt(10) = 0.32 the sd
    for est in ("plain", "control variates", "importance sampling"):
        ratio = by[("gaussian", est, 500)]["sd"] / by[("gaussian", est, 50)]["sd"]
        assert 0.15 < ratio < 0.6, (est, ratio)
    gns = res["noise_scale"]
    assert [r["epochs"] for r in gns] == [[1, 1], [2, 2]]
    for r in gns:
        assert r["steps"] == 1257 // 128 and r["trace_cov"] > 0 and r["grad_sq_norm"] > 0 and r["noise_scale"] > 0
        assert len(r["noise_scale_per_layer"]) == 3
    assert not HAS_MPL or (out / "variance_reduction.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "sd/base" in printed and "B_simple" in printed


@pytest.mark.parametrize("extra,msg", [
    (["--sizes", "5"], ">= 10"),
    (["--sizes", "a,b"], "comma-separated"),
    (["--repeats", "1"], ">= 2"),
    (["--small-batch", "64", "--large-batch", "32"], "--small-batch"),
    (["--small-batch", "5", "--large-batch", "32"], "divide"),
    (["--window", "0"], "--window"),
])
def test_bad_input(tmp_path, capsys, extra, msg):
    assert main(["run", "variance-reduction", "--out", str(tmp_path)] + extra) == 2
    assert msg in capsys.readouterr().err


def test_runs_without_matplotlib_and_without_training(tmp_path, capsys, monkeypatch):
    """Figures are optional; --epochs 0 skips the MLP (and scikit-learn)."""
    import losslab.experiments.variance_reduction as vr

    monkeypatch.setattr(vr, "pyplot", lambda: None)
    out = tmp_path / "nompl"
    assert main(["run", "variance-reduction", "--sizes", "20", "--repeats", "3", "--epochs", "0", "--out", str(out)]) == 0
    assert (out / "results.json").exists() and not (out / "variance_reduction.png").exists()
    text = capsys.readouterr().out
    assert "no figure: matplotlib is not installed" in text and "B_simple" not in text
