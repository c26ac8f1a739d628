"""preference experiment: the bandit problem, a tiny run end to end, resume, bad input."""
import importlib.util
import json

import pytest
import torch

from losslab.cli.main import main
from losslab.experiments import preference as pe

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
TINY = ["--prompts", "3", "--responses", "4", "--pairs", "64", "--steps", "40", "--seeds", "2", "--betas", "0.1,1",
        "--quiet"]


def test_problem_is_bradley_terry_from_the_reference():
    prob = pe.make_problem(2, 3, 40_000, seed=0)
    again = pe.make_problem(2, 3, 40_000, seed=0)
    assert all(torch.equal(prob[k], again[k]) for k in prob)
    assert (prob["chosen"] != prob["rejected"]).all()
    # Bradley-Terry: among pairs of responses {a, b} of one prompt, a is chosen with probability σ(R_a - R_b)
    # (40 000 pairs over 2 prompts x 3 unordered pairs: ~6 700 each, binomial std < 0.007; 0.03 is > 4 std).
    r = prob["reward"]
    for p in range(2):
        for a in range(3):
            for b in range(a + 1, 3):
                sel = (prob["prompt"] == p) & (((prob["chosen"] == a) & (prob["rejected"] == b))
                                               | ((prob["chosen"] == b) & (prob["rejected"] == a)))
                won = ((prob["chosen"] == a) & sel).sum() / sel.sum()
                assert abs(float(won) - float(torch.sigmoid(r[p, a] - r[p, b]))) < 0.03


def test_metrics_of_the_reference_and_of_a_greedy_policy():
    prob = pe.make_problem(4, 5, 10, seed=1)
    m = pe.metrics(prob["ref_logits"], prob)
    assert m["kl_to_ref"] == pytest.approx(0.0, abs=1e-12)
    best = torch.full_like(prob["reward"], -1e4).scatter(1, prob["reward"].argmax(1, keepdim=True), 0.0)
    g = pe.metrics(best, prob)
    assert g["expected_reward"] == pytest.approx(float(prob["reward"].max(1).values.mean()))
    assert g["entropy"] == pytest.approx(0.0, abs=1e-9)


def test_tiny_run_improves_reward_writes_files_and_resumes(tmp_path, capsys):
    out = tmp_path / "pref"
    assert main(["run", "preference", "--out", str(out)] + TINY) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    # 4 dpo objectives x 2 betas + simpo, orpo, npo
    assert len(res) == 12 and all(r["seeds"] == 2 for r in res) and res[-1]["objective"] == "reference"
    ref = [pe.metrics(pe.make_problem(3, 4, 64, s)["ref_logits"], pe.make_problem(3, 4, 64, s))["expected_reward"]
           for s in range(2)]
    for r in res:
        if r["objective"].startswith("dpo_") and r["beta"] == 0.1:  # every DPO variant improves the hidden reward
            assert r["expected_reward_mean"] > sum(ref) / 2, r
    assert (out / "results.csv").read_text().startswith("objective,beta,seeds")
    assert not HAS_MPL or (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr()
    assert "E[reward]" in printed.out and "dpo_forward_kl" in printed.out
    # Resume: nothing is retrained, the table is the same.
    assert main(["run", "preference", "--out", str(out)] + TINY) == 0
    again = capsys.readouterr()
    assert "22 of 22 runs already finished" in again.err
    assert json.loads((out / "results.json").read_text())["results"] == res
    # Another configuration in the same folder is refused.
    assert main(["run", "preference", "--out", str(out), *TINY, "--steps", "41"]) == 2
    assert "different configuration" in capsys.readouterr().err


@pytest.mark.parametrize("extra,msg", [(["--objectives", "dpo,kto"], "unknown objective"),
                                       (["--betas", "0,1"], "positive"), (["--responses", "1"], "--responses")])
def test_bad_input(tmp_path, capsys, extra, msg):
    assert main(["run", "preference", "--out", str(tmp_path / "x")] + extra) == 2
    assert msg in capsys.readouterr().err


def test_runs_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pe, "pyplot", lambda: None)
    out = tmp_path / "nompl"
    args = ["--objectives", "dpo_js,npo", "--prompts", "2", "--responses", "3", "--pairs", "16", "--steps", "5",
            "--seeds", "1", "--betas", "0.5", "--quiet"]
    assert main(["run", "preference", "--out", str(out)] + args) == 0
    assert not (out / "tradeoff.png").exists() and (out / "results.json").exists()
    assert "no figure" in capsys.readouterr().out
