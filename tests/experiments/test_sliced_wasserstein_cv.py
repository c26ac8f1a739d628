import json

import pytest

from losslab.cli.main import main

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def test_tiny_run_reduces_variance_and_writes_files(tmp_path, capsys):
    out = tmp_path / "swcv"
    assert main(["run", "sliced-wasserstein-cv", "--projections", "10,40", "--repeats", "30", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    for L in (10, 40):
        by = {r["estimator"]: r for r in res if r["projections"] == L}
        assert by["lower"]["variance"] < by["plain"]["variance"]
        assert by["upper"]["variance"] < by["plain"]["variance"]
    assert (out / "variance.png").read_bytes()[:4] == b"\x89PNG"
    assert "var / plain" in capsys.readouterr().out


@pytest.mark.parametrize("extra,msg", [(["--classes", "3,3"], "two different digits"), (["--repeats", "1"], ">= 2")])
def test_bad_input(tmp_path, capsys, extra, msg):
    assert main(["run", "sliced-wasserstein-cv", "--out", str(tmp_path)] + extra) == 2
    assert msg in capsys.readouterr().err
