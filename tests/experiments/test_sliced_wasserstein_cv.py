import importlib.util
import json

import pytest

from losslab.cli.main import main

pytest.importorskip("sklearn")
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def test_tiny_run_reduces_variance_as_the_readme_says_and_writes_files(tmp_path, capsys):
    """The README's figures (digits 3 vs 8, PCA 10, default run of 100 repeats): the lower control
    variate cuts the variance 525x (L = 10) to 964x (L = 500), the upper one 9x to 18x. This tiny run
    (30 repeats, fixed seeds) printed 391x / 1340x (lower) and 6.9x / 18x (upper) for L = 10 / 40:
    the test asserts the same orders of magnitude."""
    out = tmp_path / "swcv"
    assert main(["run", "sliced-wasserstein-cv", "--projections", "10,40", "--repeats", "30", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    for L in (10, 40):
        by = {r["estimator"]: r for r in res if r["projections"] == L}
        assert by["lower"]["variance_reduction"] >= 300, (L, by["lower"])
        assert by["upper"]["variance_reduction"] >= 5, (L, by["upper"])
        assert by["lower"]["variance"] * by["lower"]["variance_reduction"] == pytest.approx(by["plain"]["variance"])
        # Same expectation: the control-variate means agree with the plain one within 3 standard errors.
        se = (by["plain"]["variance"] / 30) ** 0.5
        for cv in ("lower", "upper"):
            assert abs(by[cv]["mean_sw2"] - by["plain"]["mean_sw2"]) < 3 * se
    assert not HAS_MPL or (out / "variance.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "var / plain" in printed and "reduction" in printed


@pytest.mark.parametrize("extra,msg", [(["--classes", "3,3"], "two different digits"), (["--repeats", "1"], ">= 2")])
def test_bad_input(tmp_path, capsys, extra, msg):
    assert main(["run", "sliced-wasserstein-cv", "--out", str(tmp_path)] + extra) == 2
    assert msg in capsys.readouterr().err


def test_runs_without_matplotlib(tmp_path, capsys, monkeypatch):
    """Figures are optional: without matplotlib the results and table are still written."""
    import losslab.experiments.sliced_wasserstein_cv as swcv

    monkeypatch.setattr(swcv, "pyplot", lambda: None)
    out = tmp_path / "nompl"
    assert main(["run", "sliced-wasserstein-cv", "--projections", "4", "--repeats", "3", "--out", str(out)]) == 0
    assert (out / "results.json").exists() and not (out / "variance.png").exists()
    assert "no figure: matplotlib is not installed" in capsys.readouterr().out
