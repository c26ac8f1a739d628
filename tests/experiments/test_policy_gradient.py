import importlib.util
import json

import pytest

from losslab.cli.main import main

HAS_MPL = importlib.util.find_spec("matplotlib") is not None

TINY = ["run", "policy-gradient", "--steps", "6", "--prompts", "4", "--group", "4", "--seeds", "1",
        "--vps-every", "3"]


def test_tiny_run_writes_every_run_and_figure(tmp_path, capsys):
    out = tmp_path / "pg"
    assert main(TINY + ["--vps-beta", "0.5", "--out", str(out)]) == 0  # beta = 0: no KL gradient
    res = json.loads((out / "results.json").read_text())
    assert [s["run"] for s in res["summary"]] == ["grpo", "dr_grpo", "dapo", "cispo", "grpo+vas"]
    for r in res["runs"]:
        assert len(r["curve"]) == len(r["grad_norm"]) == len(r["variance"]) == 6
        assert all(0.0 <= x <= 1.0 for x in r["curve"]) and all(1.0 <= x <= 4.0 for x in r["length"])
        # a step whose groups all have the same reward has no learning signal: gradient exactly 0
        for g, z in zip(r["grad_norm"], r["zero_variance_share"]):
            assert g > 0 or z == 1.0
            if z == 1.0:
                assert g == 0.0
    assert not HAS_MPL or (out / "policy_gradient.png").read_bytes()[:4] == b"\x89PNG"
    assert "log-log slope" in capsys.readouterr().out


@pytest.mark.parametrize("extra,msg", [(["--steps", "0"], "--steps must be >= 1"),
                                       (["--group", "1"], "--group must be >= 2"),
                                       (["--runs", "ppo"], "--runs must be"),
                                       (["--max-target", "99"], "--max-target must be")])
def test_bad_input_is_one_line(tmp_path, capsys, extra, msg):
    assert main(TINY + ["--out", str(tmp_path / "x")] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and err.count("\n") == 0
    assert not (tmp_path / "x").exists()
