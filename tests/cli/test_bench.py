"""`losslab bench`: every registered objective at --size small, the --json fields, the peer
paths (ran, skipped because not installed or too large), and one-line errors for bad input.

One timed run after one warm-up run (``--repeat 1 --warmup 1``) on one thread keeps the file
fast; the figures are not checked, only that they are there and sane.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import losslab
from losslab import peers
from losslab.benchmarking import peak_extra_mib
from losslab.cli.main import main

NAMES = losslab.list_losses()
FAST = ["--size", "small", "--repeat", "1", "--warmup", "1", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _forward_only(info) -> bool:
    return (isinstance(info.function, type) or not info.differentiable
            or info.properties.get("returns") == "float")


def _bench_json(capsys, *argv) -> dict:
    assert main(["bench", *argv, "--json"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # one JSON object
    return json.loads(out)


@pytest.mark.parametrize("name", NAMES)
def test_every_objective_benches_at_small_size(name, capsys):
    info = losslab.info(name)
    assert main(["bench", name, *FAST]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"losslab bench {name}  (--size small, float32, ")
    assert ("forward only" in lines[0]) == _forward_only(info) or "does not depend" in lines[0]
    row = next(line for line in lines if line.startswith("losslab."))
    assert " ms " in row and "MiB" in row
    peer = info.peer
    if peer is None:
        assert "peer: none registered" in text
    else:
        assert peer.label in text

    res = _bench_json(capsys, name, *FAST)
    assert res["name"] == name and res["size"] == "small" and res["dtype"] == "float32"
    assert res["mode"] in ("forward+backward", "forward only") and res["why"]
    assert res["repeat"] == 1 and res["warmup"] == 1
    ours = res["losslab"]
    assert ours["status"] == "ok" and ours["time_s"] > 0 and ours["peak_mib"] >= 0
    assert ours["value"] is None or math.isfinite(ours["value"])
    assert res["inputs"] and "float64" not in res["inputs"]  # every floating input cast to --dtype
    if peer is None:
        assert res["peer"] is None and res["time_ratio"] is None
    else:
        assert res["peer"]["label"] == peer.label and res["peer"]["package"] == peer.package
        if res["peer"]["status"] == "ok":
            assert res["peer"]["time_s"] > 0 and res["time_ratio"] == pytest.approx(ours["time_s"] / res["peer"]["time_s"])
            assert math.isfinite(res["peer"]["value"])
        else:  # installed here, so only a documented size limit may skip it at --size small
            assert res["peer"]["status"] == "skipped" and res["peer"]["reason"]


def test_batch_grows_with_size_and_shape_sets_the_main_input(capsys):
    small = _bench_json(capsys, "cross_entropy", *FAST, "--no-memory")
    assert small["inputs"] == "logits (70, 5) float32, target (70,) int64"  # 10 draws of the example's 7 rows
    assert small["memory_method"] == "not measured" and small["losslab"]["peak_mib"] is None
    res = _bench_json(capsys, "cross_entropy", "--shape", "96x1000", "--dtype", "bfloat16", *FAST[2:])
    assert res["inputs"] == "logits (96, 1000) bfloat16, target (96,) int64" and res["shape"] == "96x1000"
    assert res["peer"]["status"] == "ok"
    # every input that shares a resized dimension follows it: the weight's D, the targets' T
    res = _bench_json(capsys, "linear_cross_entropy", "--shape", "3x8x16", *FAST[2:])
    assert res["inputs"] == "hidden (3, 8, 16) float32, weight (11, 16) float32, target (3, 8) int64"
    # covariances resized stay positive definite (the call would raise otherwise)
    res = _bench_json(capsys, "gaussian_kl", "--shape", "5x7", *FAST[2:])
    assert "cov1 (5, 7, 7) float32" in res["inputs"] and math.isfinite(res["losslab"]["value"])
    # fewer classes than the example: class indices stay valid
    res = _bench_json(capsys, "cross_entropy", "--shape", "16x3", *FAST[2:])
    assert res["inputs"] == "logits (16, 3) float32, target (16,) int64"


def test_cross_entropy_text_shows_both_sides_and_ratios(capsys):
    assert main(["bench", "cross_entropy", *FAST]) == 0
    out = capsys.readouterr().out
    assert "losslab.functional.cross_entropy" in out and "torch.nn.functional.cross_entropy" in out
    assert "losslab / peer: time " in out and "x, peak memory" in out


def test_peer_not_installed_is_skipped_not_an_error(capsys, monkeypatch):
    monkeypatch.setattr(peers.Peer, "available", lambda self: False)
    assert main(["bench", "nt_xent", *FAST]) == 0
    out = capsys.readouterr().out
    assert "skipped (not installed: pytorch_metric_learning)" in out
    res = _bench_json(capsys, "nt_xent", *FAST)
    assert res["peer"]["status"] == "skipped" and res["peer"]["reason"] == "not installed: pytorch_metric_learning"
    assert res["losslab"]["time_s"] > 0 and res["time_ratio"] is None


def test_peer_too_large_is_skipped_with_its_reason(capsys):
    res = _bench_json(capsys, "nt_xent", "--shape", "1024x4", *FAST[2:], "--no-memory")
    assert res["peer"]["status"] == "skipped" and "GiB" in res["peer"]["reason"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["crossentropy"], "did you mean 'cross_entropy'"),
        (["not_a_loss"], "no objective named 'not_a_loss'"),
        (["cross_entropy", "--size", "huge"], "argument --size: invalid choice: 'huge'"),
        (["cross_entropy", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
        (["cross_entropy", "--shape", "4096x"], "--shape must be sizes joined by 'x', e.g. 4096x32000"),
        (["cross_entropy", "--shape", "0x10"], "--shape sizes must be positive integers"),
        (["cross_entropy", "--shape", "8x5x3"], "--shape 8x5x3 has 3 dimensions but the first input of "
                                                "cross_entropy, logits, has 2"),
        (["vendi_score_from_kernel", "--shape", "8x3"], "vendi_score_from_kernel cannot take --shape 8x3"),
        (["cross_entropy", "--repeat", "0"], "--repeat must be at least 1"),
    ],
)
def test_bad_input_is_one_line_error(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("losslab: error:") and message in err and "\n" not in err


def test_in_process_peak_memory_sees_a_known_allocation():
    """peak_extra_mib (what losslab bench reports) reads a 64 MiB float32 tensor as 64 MiB, also
    right after an equal allocation was freed (the allocator's free memory is handed back first,
    so it is not reused unseen)."""
    for _ in range(2):
        mib = peak_extra_mib(lambda: torch.ones(16 * 2**20))
        if mib is None:
            pytest.skip("no /proc/self/clear_refs here")
        assert 63 <= mib <= 68
