"""noisy-labels experiment pieces: bundled data, label noise, the objective table, the stateful contract.

Only the tests that load a dataset need scikit-learn, and only the figure needs matplotlib:
each skips on its own, so the rest runs with the base install.
"""
import argparse
import json

import numpy as np
import pytest
import torch

import losslab
from losslab.data.sklearn_sets import NUM_CLASSES, corrupt_labels, load, max_noise
from losslab.experiments import ExperimentError
from losslab.experiments import noisy_labels as nl


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load("digits")


def test_load_split_is_fixed_stratified_and_standardized(digits):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    s = digits
    # 1797 digits, 30 % test (sklearn rounds the test size up: ceil(0.3 * 1797) = 540).
    assert s.x_train.shape == (1257, 64) and s.x_test.shape == (540, 64) and s.num_classes == 10
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
    # Stratified: per-class test fraction within one sample of 30 %.
    counts, test_counts = np.bincount(y), np.bincount(s.y_test, minlength=10)
    assert np.all(np.abs(test_counts - 0.3 * counts) <= 1)
    # Standardized with the training statistics (constant pixels keep scale 1, i.e. stay 0).
    varying = s.x_train.std(0) > 0
    np.testing.assert_allclose(s.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(0)[varying], 1, rtol=1e-4)
    assert np.all(s.x_train[:, ~varying] == 0)
    # Fixed split: a second load is identical.
    again = load("digits")
    assert np.array_equal(again.x_test, s.x_test) and np.array_equal(again.y_train, s.y_train)
    bc = load("breast-cancer")
    assert bc.num_classes == NUM_CLASSES["breast-cancer"] == 2 and bc.x_train.shape[1] == 30
    with pytest.raises(ValueError, match="unknown dataset"):
        load("mnist")


def test_symmetric_noise_flips_to_a_uniform_other_class():
    y = np.arange(10).repeat(2000)
    noisy = corrupt_labels(y, 10, 0.4, "symmetric", np.random.default_rng(0))
    flipped = noisy != y
    # Binomial(20000, 0.4): std 0.0035, so 0.02 is more than 5 standard deviations.
    assert abs(flipped.mean() - 0.4) < 0.02
    # Flipped labels are spread uniformly over the 9 other classes: offsets 1..9 each ~1/9.
    offsets = np.bincount((noisy - y)[flipped] % 10, minlength=10)
    assert offsets[0] == 0
    np.testing.assert_allclose(offsets[1:] / flipped.sum(), 1 / 9, atol=0.02)
    assert np.array_equal(corrupt_labels(y, 10, 0.0, "symmetric", np.random.default_rng(0)), y)
    # Deterministic for a given generator state, different for another seed.
    assert np.array_equal(noisy, corrupt_labels(y, 10, 0.4, "symmetric", np.random.default_rng(0)))
    assert not np.array_equal(noisy, corrupt_labels(y, 10, 0.4, "symmetric", np.random.default_rng(1)))


def test_asymmetric_noise_is_the_next_class():
    y = np.arange(10).repeat(2000)
    noisy = corrupt_labels(y, 10, 0.3, "asymmetric", np.random.default_rng(0))
    flipped = noisy != y
    assert abs(flipped.mean() - 0.3) < 0.02
    assert np.array_equal(noisy[flipped], (y[flipped] + 1) % 10)
    # Per class the rate is the same (class-dependent target, class-independent rate).
    per_class = np.array([flipped[y == k].mean() for k in range(10)])
    assert np.all(np.abs(per_class - 0.3) < 0.05)


def test_max_noise_is_where_the_true_class_stops_being_the_plurality():
    for c in (2, 3, 10):
        for kind in ("symmetric", "asymmetric"):
            limit = max_noise(c, kind)
            # Observed-label distribution for true class 0: keep 1 - e, the rest as the noise spreads it.
            def margin(e):  # P(observed = true class) - P(observed = the likeliest other class)
                return (1 - e) - (e / (c - 1) if kind == "symmetric" else e)

            assert margin(limit - 1e-3) > 0 and margin(limit + 1e-3) < 0
            assert margin(limit) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError):
        max_noise(10, "pairflip")


def test_objective_table_maps_short_names_to_registered_objectives():
    # Every short name of the table whose objective is registered resolves and runs a step.
    registered = set(losslab.list_losses())
    names = [s for s, (reg, _) in nl.OBJECTIVES.items() if reg in registered]
    assert "ce" in names
    resolved = nl.resolve(",".join(names), 10)
    assert [(s, r, k) for s, r, k in resolved] == [(s, *nl.OBJECTIVES[s]) for s in names]
    # Registered names work directly, with overrides; overrides win over the table.
    assert nl.resolve("cross_entropy:label_smoothing=0.1", 10) == [
        ("cross_entropy:label_smoothing=0.1", "cross_entropy", {"label_smoothing": 0.1})]
    assert nl.resolve("ce:label_smoothing=0.1:softcap=none", 10)[0][2] == {"label_smoothing": 0.1, "softcap": None}
    for missing in set(nl.DEFAULT_LOSSES.split(",")) - set(names):
        with pytest.raises(ExperimentError, match="not registered"):
            nl.resolve(missing, 10)


def test_mlp_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = nl.make_mlp(64, 10, torch.Generator().manual_seed(3))
    b = nl.make_mlp(64, 10, torch.Generator().manual_seed(3))
    c = nl.make_mlp(64, 10, torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    # nn.Linear's default scale: weights and biases in +-1/sqrt(fan_in).
    first = a[0]
    assert first.weight.abs().max() <= 1 / 8 and first.bias.abs().max() <= 1 / 8
    assert first.weight.abs().max() > 0.9 / 8


def test_stateful_objective_gets_its_module_and_dataset_indices(digits, monkeypatch):
    """The stateful contract: module(num_samples=N_train, **kwargs)(logits, target, index)."""
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, num_samples, **kwargs):
            super().__init__()
            seen["init"] = (num_samples, kwargs)
            seen["index"] = []

        def forward(self, logits, target, index):
            seen["index"].append(index.clone())
            return torch.nn.functional.cross_entropy(logits, target)

    class FakeInfo:
        properties = {"stateful_module": True}
        module = Spy

    monkeypatch.setattr(losslab, "info", lambda name: FakeInfo())
    args = argparse.Namespace(epochs=2, batch_size=64, lr=1e-3)
    nl.train_one(digits, digits.y_train, "fake", {"lam0": 5.0}, 0, args)
    n = digits.x_train.shape[0]
    assert seen["init"] == (n, {"lam0": 5.0})
    per_epoch = len(seen["index"]) // 2
    for epoch in (seen["index"][:per_epoch], seen["index"][per_epoch:]):
        assert torch.equal(torch.sort(torch.cat(epoch)).values, torch.arange(n))  # each sample once per epoch


@pytest.mark.skipif("aldr_kl_loss" not in losslab.list_losses(), reason="aldr_kl_loss not registered")
def test_aldr_kl_state_is_updated_during_training(digits, monkeypatch):
    modules = []
    real = nl._loss_callable

    def keep(reg, kwargs, n):
        m = real(reg, kwargs, n)
        modules.append(m)
        return m

    monkeypatch.setattr(nl, "_loss_callable", keep)
    args = argparse.Namespace(epochs=1, batch_size=64, lr=1e-3)
    nl.train_one(digits, digits.y_train, "aldr_kl_loss", {}, 0, args)
    (module,) = modules
    lam = dict(module.named_buffers())
    assert any(b.shape == (digits.x_train.shape[0],) for b in lam.values())
    # Every sample was visited once, so every per-sample lambda moved off its initial lam0 = 10.
    (buf,) = [b for b in lam.values() if b.shape == (digits.x_train.shape[0],)]
    assert torch.all(buf < 10.0)


def _fake_runs(out, labels, seeds, config, epochs=3):
    """Per-run files as run() writes them, with hand-chosen accuracies."""
    for j, label in enumerate(labels):
        for seed in range(seeds):
            acc = [0.5 + 0.1 * e + 0.01 * j + 0.001 * seed for e in range(epochs)]
            (out / "runs").mkdir(parents=True, exist_ok=True)
            (out / "runs" / f"{label}-seed{seed}.json").write_text(json.dumps({
                "test_accuracy": acc, "train_loss": [1.0] * epochs, "objective": label, "registered": label,
                "hyperparameters": {}, "seed": seed, "config": config, "observed_noise": 0.4}))


def test_summarize_writes_results_without_needing_matplotlib(tmp_path, monkeypatch):
    """The table, results.json and results.csv come from the run files; the figure is optional."""
    config = {"epochs": 3, "dataset": "digits", "noise_type": "symmetric", "noise": 0.4}
    _fake_runs(tmp_path, ["ce", "gce"], 2, config)
    monkeypatch.setattr(nl, "_plot", lambda *a: False)  # as without matplotlib
    rows = nl.summarize(tmp_path, [("ce", "ce", {}), ("gce", "gce", {})], 2, config)
    assert [r["objective"] for r in rows] == ["ce", "gce"]
    # final epoch 0.5 + 0.2 + 0.01 j + 0.001 seed: mean over seeds 0, 1 adds 0.0005
    assert rows[1]["final_test_accuracy_mean"] == pytest.approx(0.7105)
    assert rows[0]["final_test_accuracy_std"] == pytest.approx(np.std([0.7, 0.701], ddof=1))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["curves"]["gce"] == pytest.approx([0.5105, 0.6105, 0.7105])
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("objective,registered")
    assert not (tmp_path / "accuracy.png").exists()
    assert "gce" in nl.format_table(rows, config)


def test_plot_is_a_png_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    config = {"epochs": 3, "dataset": "digits", "noise_type": "symmetric", "noise": 0.4}
    assert nl._plot(tmp_path, {"ce": [0.5, 0.6, 0.7]}, config) is True
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert nl._plot(tmp_path, {"ce": [0.5]}, {"dataset": "digits", "noise_type": "symmetric", "noise": 0.4}) is False
    assert not (tmp_path / "accuracy.png").exists()


# ----------------------------------------------------------------------------- cost and outputs
def _parse(argv):
    p = argparse.ArgumentParser()
    nl.add_arguments(p)
    return p.parse_args(argv)


def test_default_study_cost_is_bounded(digits, monkeypatch):
    """`make demo` runs the default study: its number of training steps is its cost."""
    args = _parse([])
    n_runs = len(args.losses.split(",")) * args.seeds
    steps = nl.training_steps(n_runs, args.epochs, digits.x_train.shape[0], args.batch_size)
    # Budget: one step (forward, backward, Adam) costs ~1.2 ms of one core on average over
    # the default objectives (measured on a shared 2-core machine), and `make demo` must
    # finish well within 60 s on 2 cores, start-up (~10 s) included: 15,000 steps ≈ 18 s.
    assert steps <= 15_000
    # training_steps counts what a run does: one objective call per minibatch.
    calls = []
    real = nl._loss_callable

    def counting(reg, kwargs, n):
        fn = real(reg, kwargs, n)
        return lambda *a: (calls.append(1), fn(*a))[1]

    monkeypatch.setattr(nl, "_loss_callable", counting)
    nl.train_one(digits, digits.y_train, "cross_entropy", {}, 0, argparse.Namespace(epochs=2, batch_size=64, lr=1e-3))
    assert len(calls) == nl.training_steps(1, 2, digits.x_train.shape[0], 64) == 2 * 20  # ceil(1257 / 64) = 20


def test_training_step_reads_no_value_back_to_the_host(digits):
    """No per-step host synchronisation (.item(), bool(), float() of a tensor, value checks):
    only the once-per-epoch reads (finiteness of the epoch's loss, its value, the accuracy)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountSyncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:  # every tensor -> Python number
                self.count += 1
            return func(*args, **(kwargs or {}))

    registered = set(losslab.list_losses())
    for name in ("ce", "aldr_kl"):  # a plain objective and the stateful Module
        reg, kw = nl.OBJECTIVES[name]
        if reg not in registered:
            continue
        counts = []
        for epochs in (1, 3):
            with CountSyncs() as mode:
                nl.train_one(digits, digits.y_train, reg, kw, 0, argparse.Namespace(epochs=epochs, batch_size=64, lr=1e-3))
            counts.append(mode.count)
        per_epoch = (counts[1] - counts[0]) / 2
        assert per_epoch <= 3, (name, counts)  # an epoch has 20 steps: one read per step would give >= 20
    assert losslab.validation_enabled()  # the run switched value checks off and back on


def _run_tiny(tmp_path, capsys, name, *extra):
    out = tmp_path / name
    assert nl.run(_parse(["--epochs", "2", "--seeds", "2", "--losses", "ce,mae", "--quiet", "--out", str(out), *extra])) == 0
    return out, capsys.readouterr().out


def test_final_lines_name_the_table_and_figure(digits, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    out, printed = _run_tiny(tmp_path, capsys, "a")
    lines = printed.strip().splitlines()
    assert lines[-2].startswith(f"table:  {out / 'table.txt'} (") and "results.csv" in lines[-2]
    assert lines[-1] == f"figure: {out / 'accuracy.png'}"
    # The table file holds the table as printed; the figure is a PNG.
    table = (out / "table.txt").read_text()
    assert table.startswith("clean test accuracy after 2 epochs") and table in printed
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without matplotlib the last line says so instead of naming a file that is not there.
    monkeypatch.setattr(nl, "_plot", lambda *a: False)
    out, printed = _run_tiny(tmp_path, capsys, "b")
    assert printed.strip().splitlines()[-1].startswith("figure: not drawn (matplotlib is not installed")
    assert not (out / "accuracy.png").exists() and (out / "table.txt").exists()


def test_parallel_runs_equal_serial_runs_and_restore_settings(digits, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(nl, "_plot", lambda *a: False)  # the figure is tested above
    threads = torch.get_num_threads()
    serial, printed = _run_tiny(tmp_path, capsys, "serial", "--workers", "1")
    assert "(4 new runs in" in printed and "1 at a time)" in printed
    parallel, printed = _run_tiny(tmp_path, capsys, "parallel", "--workers", "2")
    assert "2 at a time)" in printed
    names = sorted(p.name for p in (serial / "runs").glob("*.json"))
    assert names == ["ce-seed0.json", "ce-seed1.json", "mae-seed0.json", "mae-seed1.json"]
    for name in names:  # byte for byte: results do not depend on --workers
        assert (parallel / "runs" / name).read_bytes() == (serial / "runs" / name).read_bytes()
    assert torch.get_num_threads() == threads and losslab.validation_enabled()
    with pytest.raises(ExperimentError, match="--workers must be >= 1"):
        nl.run(_parse(["--workers", "0", "--out", str(tmp_path / "c")]))
