"""Contrastive objectives against pytorch-metric-learning and loops over the definitions."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from losslab import functional as LF

F64 = torch.float64


def _views(seed=0, b=6, d=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=F64), torch.randn(b, d, generator=g, dtype=F64)


def test_nt_xent_equals_pml_self_supervised_symmetric():
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    z1, z2 = _views()
    for tau in (0.07, 0.5):
        ref = losses.SelfSupervisedLoss(losses.NTXentLoss(temperature=tau), symmetric=True)(z1, z2)
        torch.testing.assert_close(LF.nt_xent(z1, z2, temperature=tau), ref, rtol=1e-10, atol=1e-12)


def test_supcon_equals_pml():
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    g = torch.Generator().manual_seed(1)
    e = torch.randn(10, 4, generator=g, dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3, 1, 4])  # classes 3 and 4 have no positive
    for tau in (0.1, 0.7):
        torch.testing.assert_close(LF.supcon_loss(e, y, temperature=tau), losses.SupConLoss(temperature=tau)(e, y),
                                   rtol=1e-10, atol=1e-12)
    none = LF.supcon_loss(e, y, reduction="none")
    assert none[7] == 0 and none[9] == 0


def test_info_nce_is_cross_entropy_on_similarity_rows():
    q, k = _views(2)
    tau = 0.2
    s = TF.normalize(q, dim=-1) @ TF.normalize(k, dim=-1).T / tau
    t = torch.arange(6)
    rows = [-(s[i, i] - torch.logsumexp(s[i], 0)).item() for i in range(6)]
    cols = [-(s[i, i] - torch.logsumexp(s[:, i], 0)).item() for i in range(6)]
    np.testing.assert_allclose(LF.info_nce(q, k, temperature=tau, symmetric=False, reduction="none").numpy(), rows, rtol=1e-12)
    np.testing.assert_allclose(LF.info_nce(q, k, temperature=tau, reduction="none").numpy(),
                               0.5 * (np.array(rows) + np.array(cols)), rtol=1e-12)
    neg = torch.randn(3, 5, generator=torch.Generator().manual_seed(9), dtype=F64)
    extra = TF.normalize(q, dim=-1) @ TF.normalize(neg, dim=-1).T / tau
    torch.testing.assert_close(LF.info_nce(q, k, temperature=tau, symmetric=False, negatives=neg),
                               TF.cross_entropy(torch.cat([s, extra], 1), t))


def test_alignment_uniformity_tolerance_match_loops():
    x, y = _views(3, b=7)
    xn, yn = TF.normalize(x, dim=-1).numpy(), TF.normalize(y, dim=-1).numpy()
    np.testing.assert_allclose(LF.alignment(x, y, alpha=2).item(), np.mean(((xn - yn) ** 2).sum(-1)), rtol=1e-12)
    np.testing.assert_allclose(LF.alignment(x, y, alpha=1).item(), np.mean(np.sqrt(((xn - yn) ** 2).sum(-1))), rtol=1e-12)
    pairs = [math.exp(-2 * ((xn[i] - xn[j]) ** 2).sum()) for i in range(7) for j in range(i + 1, 7)]
    np.testing.assert_allclose(LF.uniformity(x, t=2).item(), math.log(np.mean(pairs)), rtol=1e-10)
    labels = torch.tensor([0, 1, 0, 1, 2, 0, 3])
    sims = [float(xn[i] @ xn[j]) for i in range(7) for j in range(7) if i != j and labels[i] == labels[j]]
    np.testing.assert_allclose(LF.tolerance(x, labels).item(), np.mean(sims), rtol=1e-12)
    # "none": per sample, the sum of its same-class similarities; "sum" over all pairs
    per = [sum(float(xn[i] @ xn[j]) for j in range(7) if j != i and labels[i] == labels[j]) for i in range(7)]
    np.testing.assert_allclose(LF.tolerance(x, labels, reduction="none").numpy(), per, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(LF.tolerance(x, labels, reduction="sum").item(), np.sum(sims), rtol=1e-12)
    aligned = [float(((xn[i] - yn[i]) ** 2).sum()) for i in range(7)]
    np.testing.assert_allclose(LF.alignment(x, y, reduction="none").numpy(), aligned, rtol=1e-12)


def test_vocabulary_names_as_keywords():
    """Paired embeddings are query/key, labelled ones embeddings/labels, one set embeddings (issue 8)."""
    x, y = _views(3, b=5)
    labels = torch.tensor([0, 1, 0, 1, 2])
    torch.testing.assert_close(LF.nt_xent(query=x, key=y), LF.nt_xent(x, y))
    torch.testing.assert_close(LF.info_nce(query=x, key=y), LF.info_nce(x, y))
    torch.testing.assert_close(LF.alignment(query=x, key=y), LF.alignment(x, y))
    torch.testing.assert_close(LF.uniformity(embeddings=x, t=2.0), LF.uniformity(x))
    torch.testing.assert_close(LF.tolerance(embeddings=x, labels=labels), LF.tolerance(x, labels))
    torch.testing.assert_close(LF.supcon_loss(embeddings=x, labels=labels), LF.supcon_loss(x, labels))


def test_tolerance_without_pairs_is_zero_with_zero_gradient():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    out = LF.tolerance(x, torch.tensor([0, 1, 2]))
    out.backward()
    assert out.item() == 0.0 and not x.grad.any()


def test_alignment_of_identical_pairs_has_finite_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    out = LF.alignment(x, x.detach().clone(), alpha=1.0)
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(x.grad).all()


def test_memory_is_quadratic_not_cubic():
    """B = 2048 pooled views: one (4096 x 4096) matrix; a cubic intermediate would need 550 GB."""
    z = torch.randn(2048, 32)
    out = LF.nt_xent(z, z + 0.1 * torch.randn(2048, 32))
    assert torch.isfinite(out)


def test_bad_input_and_no_positive_warning():
    x, y = _views()
    with pytest.raises(ValueError, match="temperature"):
        LF.nt_xent(x, y, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        LF.info_nce(x, y[:4])
    with pytest.raises(ValueError, match="labels must have shape"):
        LF.supcon_loss(x, torch.tensor([0, 1]))
    with pytest.warns(UserWarning, match="no anchor has a positive"):
        out = LF.supcon_loss(x, torch.arange(6))
    assert out.item() == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        LF.uniformity(x[:1])


def test_batch_of_one_pair_warns_that_there_is_no_negative():
    """nt_xent (and info_nce without extra negatives) warn like supcon_loss: the loss is 0, not a signal."""
    x, y = _views(b=1)
    for fn in (LF.nt_xent, LF.info_nce):
        with pytest.warns(UserWarning, match="one pair has no negatives"):
            out = fn(x, y)
        assert abs(out.item()) < 1e-12  # log-sum-exp over the positive alone minus the positive logit
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LF.info_nce(x, y, negatives=torch.randn(2, 5, dtype=F64))  # extra negatives: a real loss, no warning
        LF.nt_xent(*_views(b=2))
        import losslab

        with losslab.validation(False):
            LF.nt_xent(x, y)


def test_labels_of_any_integer_dtype():
    x, _ = _views(b=6)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(LF.supcon_loss(x, y.to(dtype)), LF.supcon_loss(x, y), rtol=0, atol=0)
        torch.testing.assert_close(LF.tolerance(x, y.to(dtype)), LF.tolerance(x, y), rtol=0, atol=0)


def test_supcon_compiles_to_one_graph():
    """Regression: the self-similarity path passed the same tensor twice to an autograd.Function
    (dynamo refuses it) and torch.unique has a value-dependent size: both broke fullgraph compile."""
    g = torch.Generator().manual_seed(3)
    e = torch.randn(9, 4, generator=g, dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3, 5])
    fn = torch.compile(lambda a, b: LF.supcon_loss(a, b, temperature=0.3), backend="aot_eager", fullgraph=True)
    a1, a2 = e.clone().requires_grad_(True), e.clone().requires_grad_(True)
    import losslab

    with losslab.validation(False):
        torch.testing.assert_close(fn(a1, y), LF.supcon_loss(a2, y, temperature=0.3))
    (g1,) = torch.autograd.grad(fn(a1, y), a1)
    (g2,) = torch.autograd.grad(LF.supcon_loss(a2, y, temperature=0.3), a2)
    torch.testing.assert_close(g1, g2)


def test_modules_check_hyperparameters_at_construction():
    import losslab.nn as N

    with pytest.raises(ValueError, match="temperature"):
        N.NTXentLoss(temperature=0.0)
    with pytest.raises(TypeError, match="symmetric"):
        N.InfoNCELoss(symmetric="yes")
    with pytest.raises(TypeError, match="gather"):
        N.SupConLoss(gather=1)
    with pytest.raises(ValueError, match="reduction"):
        N.InfoNCELoss(reduction="avg")
    with pytest.raises(TypeError, match="negatives"):
        N.InfoNCELoss(negatives=torch.randn(2, 3))  # per batch: a forward argument
    q, k, neg = torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3)
    torch.testing.assert_close(N.InfoNCELoss(temperature=0.2)(q, k, negatives=neg),
                               LF.info_nce(q, k, temperature=0.2, negatives=neg), rtol=0, atol=0)


def _plain_losses(z1, z2, e, y, tau):
    """The B x B formulations (one full similarity matrix, F.cross_entropy / log_softmax)."""
    b = z1.shape[0]
    z = TF.normalize(torch.cat([z1, z2]), dim=1)
    s = (z @ z.T / tau).masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    nt = TF.cross_entropy(s, torch.cat([torch.arange(b, 2 * b), torch.arange(b)]))
    q, k = TF.normalize(z1, dim=1), TF.normalize(z2, dim=1)
    logits = q @ k.T / tau
    t = torch.arange(b)
    info = 0.5 * (TF.cross_entropy(logits, t) + TF.cross_entropy(logits.T, t))
    en = TF.normalize(e, dim=1)
    eye = torch.eye(e.shape[0], dtype=torch.bool)
    lp = torch.log_softmax((en @ en.T / tau).masked_fill(eye, float("-inf")), dim=1)
    pos = (y[:, None] == y[None, :]) & ~eye
    per = -torch.where(pos, lp, torch.zeros((), dtype=lp.dtype)).sum(1) / pos.sum(1).clamp_min(1)
    sup = per[pos.any(1)].mean()
    return nt, info, sup


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 22])
def test_blockwise_log_sum_exp_equals_full_matrix_values_and_gradients(monkeypatch, block):
    """Any block size (1 similarity per block up to the whole matrix) gives the full-matrix values and gradients."""
    from losslab.functional import contrastive as C

    monkeypatch.setattr(C, "_BLOCK_ELEMS", block)
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(9, 3, generator=g, dtype=F64), torch.randn(9, 3, generator=g, dtype=F64)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 4])
    tau = 0.25
    leaves = [t.clone().requires_grad_(True) for t in (z1, z2)]
    ours = (LF.nt_xent(*leaves, temperature=tau), LF.info_nce(*leaves, temperature=tau),
            LF.supcon_loss(leaves[0], y, temperature=tau))
    ref_leaves = [t.clone().requires_grad_(True) for t in (z1, z2)]
    refs = _plain_losses(ref_leaves[0], ref_leaves[1], ref_leaves[0], y, tau)
    for o, r in zip(ours, refs):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
        go = torch.autograd.grad(o, leaves, allow_unused=True)
        gr = torch.autograd.grad(r, ref_leaves, allow_unused=True)
        for a, b in zip(go, gr):
            if b is None:
                assert a is None or torch.count_nonzero(a) == 0
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_info_nce_with_negatives_gradient_matches_cross_entropy():
    q, k = _views(4)
    neg = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, neg)]
    out = LF.info_nce(*leaves[:2], negatives=leaves[2], temperature=0.3)
    ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, neg)]
    qn, kn, nn_ = (TF.normalize(t, dim=-1) for t in ref_leaves)
    s = qn @ kn.T / 0.3
    t = torch.arange(6)
    ref = 0.5 * (TF.cross_entropy(torch.cat([s, qn @ nn_.T / 0.3], 1), t) + TF.cross_entropy(s.T, t))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out, leaves), torch.autograd.grad(ref, ref_leaves)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_not_twice_differentiable_raises_instead_of_silently_wrong():
    """The block recomputation in backward is not differentiable: create_graph must fail, not drop terms."""
    z = torch.randn(4, 3, dtype=F64, requires_grad=True)
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(LF.nt_xent(z, z.flip(0)), z, create_graph=True)


def test_single_sample_supcon_has_zero_loss_and_finite_gradient():
    e = torch.randn(1, 3, dtype=F64, requires_grad=True)
    with pytest.warns(UserWarning, match="no anchor has a positive"):
        out = LF.supcon_loss(e, torch.tensor([0]))
    out.backward()
    assert out.item() == 0.0 and torch.equal(e.grad, torch.zeros_like(e))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(2, 9), tau=st.floats(0.02, 2.0), scale=st.floats(0.01, 100.0))
def test_properties_from_the_definitions(seed, b, tau, scale):
    """Scale invariance (cosine similarity), symmetry of the pooled/symmetric forms, and the bounds
    0 <= loss <= log(#candidates) + 2/tau (-log of a softmax whose logits lie in [-1/tau, 1/tau])."""
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(b, 4, generator=g, dtype=F64), torch.randn(b, 4, generator=g, dtype=F64)
    y = torch.randint(0, 3, (b,), generator=g)
    nt = LF.nt_xent(z1, z2, temperature=tau)
    torch.testing.assert_close(LF.nt_xent(scale * z1, z2, temperature=tau), nt, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LF.nt_xent(z2, z1, temperature=tau), nt, rtol=1e-10, atol=1e-12)
    info = LF.info_nce(z1, z2, temperature=tau)
    torch.testing.assert_close(LF.info_nce(z2, z1, temperature=tau), info, rtol=1e-10, atol=1e-12)
    assert -1e-12 <= nt <= math.log(2 * b - 1) + 2 / tau + 1e-9
    assert -1e-12 <= info <= math.log(b) + 2 / tau + 1e-9
    if (y[:, None] == y[None, :]).sum() > b:  # some anchor has a positive
        sup = LF.supcon_loss(z1, y, temperature=tau)
        assert -1e-12 <= sup <= math.log(b - 1) + 2 / tau + 1e-9
    assert -4 * 2 - 1e-9 <= LF.uniformity(z1, t=2) <= 1e-12
    assert -1 - 1e-12 <= LF.tolerance(z1, y) <= 1 + 1e-12


def test_more_bad_input():
    x, y = _views()
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    for tau in (0.0, -0.1, float("inf"), float("nan")):
        for call in (lambda: LF.info_nce(x, y, temperature=tau), lambda: LF.supcon_loss(x, labels, temperature=tau)):
            with pytest.raises(ValueError, match="temperature"):
                call()
    with pytest.raises(ValueError, match="labels must have shape"):
        LF.tolerance(x, labels[:5])
    with pytest.raises(TypeError, match="integer"):
        LF.supcon_loss(x, labels.double())
    with pytest.raises(ValueError, match="2 dimensions"):
        LF.nt_xent(x[0], y[0])
    with pytest.raises(ValueError, match="negatives must have 5 features"):
        LF.info_nce(x, y, negatives=torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="same shape"):
        LF.alignment(x, y[:, :3])
    with pytest.raises(ValueError, match="alpha"):
        LF.alignment(x, y, alpha=0)
