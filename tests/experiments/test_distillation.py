"""The distillation experiment: bad input, a tiny resumable run, outputs and the objective table."""
import argparse
import json

import pytest

import losslab
from losslab.experiments import ExperimentError
from losslab.experiments import distillation as dx


def _args(tmp_path, **kw):
    p = argparse.ArgumentParser()
    dx.add_arguments(p)
    argv = ["--seeds", "2", "--epochs", "1", "--teacher-epochs", "1", "--losses", "ce,kd_js,sinkd,nd,dhkd",
            "--out", str(tmp_path), "--quiet"]
    args = p.parse_args(argv)
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_every_objective_of_the_table_is_registered_in_the_distillation_family():
    for label, (reg, _kw) in dx.OBJECTIVES.items():
        if reg is not None:
            assert losslab.info(reg).family == "distillation", label
    assert {"kd_kl", "kd_reverse_kl", "kd_js", "kd_total_variation", "sinkd", "nd", "dhkd", "ce"} <= set(dx.OBJECTIVES)


@pytest.mark.parametrize("kw, match", [
    ({"losses": "ce,nope"}, "unknown objective"),
    ({"losses": "ce,ce"}, "twice"),
    ({"seeds": 0}, "--seeds"),
    ({"lr": -1.0}, "--lr"),
    ({"losses": "sinkd", "batch_size": 1}, "batch-size"),
    ({"student_fraction": 0.0}, "--student-fraction"),
    ({"student_fraction": 1.5}, "--student-fraction"),
])
def test_bad_input_is_a_one_line_error(tmp_path, kw, match):
    with pytest.raises(ExperimentError, match=match):
        dx.run(_args(tmp_path, **kw))


def test_tiny_run_writes_results_and_resumes(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    args = _args(tmp_path)
    assert dx.run(args) == 0
    table = capsys.readouterr().out
    assert "(teacher)" in table and "sinkd" in table and "dual_head_kd_loss" in table
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["objective"] for r in res["results"]] == ["ce", "kd_js", "sinkd", "nd", "dhkd"]
    for r in res["results"]:
        assert len(r["test_accuracy_per_seed"]) == 2 and all(0.0 <= a <= 1.0 for a in r["test_accuracy_per_seed"])
    assert (tmp_path / "results.csv").read_text().count("\n") == 6
    assert (tmp_path / "teachers" / "seed1.pt").exists()
    # Resume: nothing is retrained (students nor teachers), and the numbers are the same.
    calls = []
    monkeypatch.setattr(dx, "train_student", lambda *a, **k: calls.append(a) or {})
    monkeypatch.setattr(dx, "train_teacher", lambda *a, **k: calls.append(a))
    assert dx.run(args) == 0
    assert not calls
    assert json.loads((tmp_path / "results.json").read_text())["results"] == res["results"]
    # Another configuration in the same folder is refused.
    with pytest.raises(ExperimentError, match="different configuration"):
        dx.run(_args(tmp_path, epochs=2))


def test_runs_are_reproducible(tmp_path):
    pytest.importorskip("sklearn")
    a = _args(tmp_path / "a", losses="kd_kl", seeds=1)
    b = _args(tmp_path / "b", losses="kd_kl", seeds=1)
    dx.run(a)
    dx.run(b)
    ra = json.loads((tmp_path / "a" / "results.json").read_text())
    rb = json.loads((tmp_path / "b" / "results.json").read_text())
    assert ra["results"] == rb["results"] and ra["teacher_test_accuracy"] == rb["teacher_test_accuracy"]


def test_student_subset_is_fixed_and_per_class():
    import math

    import torch

    y = torch.arange(10).repeat_interleave(torch.arange(5, 15))  # class c has 5 + c samples
    sub = dx.student_subset(y, 0.25)
    assert torch.equal(sub, dx.student_subset(y, 0.25)) and torch.equal(sub, sub.unique())
    counts = torch.bincount(y[sub], minlength=10)
    assert counts.tolist() == [math.ceil(0.25 * (5 + c)) for c in range(10)]
    assert torch.equal(dx.student_subset(y, 1.0), torch.arange(len(y)))
