"""The peer implementation each objective is compared with (``losslab bench``, the docs).

A :class:`Peer` names the implementation a user would otherwise reach for (torch's own loss,
pytorch-metric-learning, geomloss, POT, torchmetrics, or the hand-written torch expression) and
builds a call of it on losslab's inputs, so that ``losslab bench`` times both side by side.
:attr:`losslab.LossInfo.peer` looks the table up.

Every adapter below is losslab's own code calling the peer's public API; it maps losslab's
arguments (at their defaults unless the inputs carry them) to the peer's. Where the two
define the quantity by different conventions, the adapter converts the peer's value to
losslab's and ``note`` says how.
``tests/test_peers.py`` checks every entry on the registered example.
"""
from __future__ import annotations

import importlib.util
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Peer", "get", "PEERS"]


@dataclass(frozen=True)
class Peer:
    """A peer implementation of one objective.

    Attributes:
        label: what it is, e.g. ``"torch.nn.functional.cross_entropy"``.
        package: the import name of the package it needs (``"torch"``, ``"pytorch_metric_learning"``).
        build: ``build(args, kwargs) -> call``: from losslab's positional inputs and keyword
            arguments (as the registered example makes them, possibly scaled), a zero-argument
            callable computing the peer's loss as a scalar tensor (forward only; the caller
            differentiates it).
        note: the convention by which the peer's value is converted to losslab's, if any.
        skip_reason: ``skip_reason(args, kwargs) -> str | None``: why the peer cannot run on
            these inputs (e.g. memory that grows as the cube of the batch), or None.
    """

    label: str
    package: str
    build: Callable[[tuple, dict], Callable[[], torch.Tensor]]
    note: str = ""
    skip_reason: Callable[[tuple, dict], str | None] | None = None

    def available(self) -> bool:
        """Whether the package it needs is installed."""
        return importlib.util.find_spec(self.package) is not None


def get(name: str) -> Peer | None:
    """The peer of the registered objective ``name``, or None."""
    return PEERS.get(name)


def _default(name: str, kwargs: dict, key: str):
    """``kwargs[key]`` if given, else the default of losslab's ``name`` for ``key``."""
    if key in kwargs:
        return kwargs[key]
    from . import registry

    return inspect.signature(registry.get(name)).parameters[key].default


def _float(t: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs as float32 copies, autocast's rule for losses (losslab computes in float32 too)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _unused(kwargs: dict, *allowed: str) -> None:
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise ValueError(f"the peer adapter does not map {', '.join(extra)}")


_GIB = 2 ** 30
_LIMIT = 2 * _GIB  # a peer's intermediates beyond this are not run


def _too_big(entries: float, what: str) -> str | None:
    need = entries * 4
    if need <= _LIMIT:
        return None
    return f"{what}: {entries:.2g} entries, ~{need / _GIB:.0f} GiB at this batch"


# ----------------------------------------------------------------------------- torch
def _cross_entropy(args, kwargs):
    F = torch.nn.functional
    logits, target = args
    _unused(kwargs, "weight", "ignore_index", "label_smoothing")
    c = logits.shape[-1]
    opts = {k: kwargs[k] for k in ("weight", "ignore_index", "label_smoothing") if k in kwargs}
    if target.dtype.is_floating_point:
        return lambda: F.cross_entropy(logits.reshape(-1, c), target.reshape(-1, c), **opts)
    return lambda: F.cross_entropy(logits.reshape(-1, c), target.reshape(-1), **opts)


def _kl_divergence(args, kwargs):
    F = torch.nn.functional
    p_logits, q_logits = args
    _unused(kwargs)
    c = p_logits.shape[-1]
    # D(P || Q): torch's kl_div takes the model Q as input and P as target; "batchmean" over rows
    return lambda: F.kl_div(F.log_softmax(q_logits.reshape(-1, c), -1), F.log_softmax(p_logits.reshape(-1, c), -1),
                            log_target=True, reduction="batchmean")


def _kd_loss(args, kwargs):
    F = torch.nn.functional
    student, teacher = args
    _unused(kwargs, "temperature")
    t = _default("kd_loss", kwargs, "temperature")
    c = student.shape[-1]

    def call():  # Hinton's T^2 KL(teacher || student), averaged over rows
        s, te = _float(student).reshape(-1, c), _float(teacher).reshape(-1, c)
        return t ** 2 * F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(te / t, -1), log_target=True,
                                 reduction="batchmean")
    return call


def _gaussian_nll(args, kwargs):
    pred, target, var = args
    _unused(kwargs)
    return lambda: torch.nn.functional.gaussian_nll_loss(pred, target, var)


def _entropy(args, kwargs):
    (logits,) = args
    _unused(kwargs)
    return lambda: torch.distributions.Categorical(logits=_float(logits)).entropy().mean()


def _gaussian_kl(args, kwargs):
    mean1, cov1, mean2, cov2 = args
    _unused(kwargs)
    D = torch.distributions

    def call():
        p = D.MultivariateNormal(_float(mean1), covariance_matrix=_float(cov1))
        q = D.MultivariateNormal(_float(mean2), covariance_matrix=_float(cov2))
        return D.kl_divergence(p, q).mean()
    return call


def _dpo_loss(args, kwargs):
    pc, pr, rc, rr = args
    _unused(kwargs)
    beta = _default("dpo_loss", kwargs, "beta")
    F = torch.nn.functional
    # the sigmoid DPO loss as training scripts write it (losslab's default loss_type)
    return lambda: -F.logsigmoid(beta * ((_float(pc) - _float(rc)) - (_float(pr) - _float(rr)))).mean()


def _materialized_logits(hidden, weight):
    return _float(hidden) @ _float(weight).T


def _linear_cross_entropy(args, kwargs):
    hidden, weight, target = args
    _unused(kwargs)
    F = torch.nn.functional
    return lambda: F.cross_entropy(_materialized_logits(hidden, weight).reshape(-1, weight.shape[0]),
                                   target.reshape(-1))


def _token_logprobs(hidden, weight, target):
    logp = torch.log_softmax(_materialized_logits(hidden, weight), -1)
    keep = target != -100
    return torch.where(keep, logp.gather(-1, (target * keep).unsqueeze(-1)).squeeze(-1), torch.zeros(()))


def _linear_token_logprobs(args, kwargs):
    hidden, weight, target = args
    _unused(kwargs)
    return lambda: _token_logprobs(hidden, weight, target)


def _sequence_logprobs(args, kwargs):
    hidden, weight, target = args
    _unused(kwargs)
    return lambda: _token_logprobs(hidden, weight, target).sum(-1)


# ----------------------------------------------------------------------------- pytorch-metric-learning
def _pml_cube(args, kwargs, factor: float) -> str | None:
    b = args[0].shape[0]
    return _too_big(factor * b ** 3, "pytorch-metric-learning's NTXentLoss builds a (positive pairs) x "
                    "(negative pairs) matrix")


def _nt_xent(args, kwargs):
    from pytorch_metric_learning import losses

    query, key = args
    _unused(kwargs, "temperature")
    fn = losses.SelfSupervisedLoss(losses.NTXentLoss(temperature=_default("nt_xent", kwargs, "temperature")),
                                   symmetric=True)  # both views pooled: SimCLR's 2B - 2 negatives
    return lambda: fn(query, key)


def _info_nce(args, kwargs):
    from pytorch_metric_learning import losses

    query, key = args
    _unused(kwargs, "temperature")
    fn = losses.SelfSupervisedLoss(losses.NTXentLoss(temperature=_default("info_nce", kwargs, "temperature")),
                                   symmetric=False)
    # losslab's default symmetric=True averages the query->key and key->query directions (CLIP)
    return lambda: 0.5 * (fn(query, key) + fn(key, query))


def _supcon(args, kwargs):
    from pytorch_metric_learning import losses

    embeddings, labels = args
    _unused(kwargs, "temperature")
    fn = losses.SupConLoss(temperature=_default("supcon_loss", kwargs, "temperature"))
    return lambda: fn(embeddings, labels)


def _multi_similarity(args, kwargs):
    from pytorch_metric_learning import losses, miners

    embeddings, labels = args
    _unused(kwargs)
    fn = losses.MultiSimilarityLoss(alpha=_default("multi_similarity_loss", kwargs, "alpha"),
                                    beta=_default("multi_similarity_loss", kwargs, "beta"),
                                    base=_default("multi_similarity_loss", kwargs, "base"))
    miner = miners.MultiSimilarityMiner(epsilon=_default("multi_similarity_loss", kwargs, "epsilon"))
    return lambda: fn(embeddings, labels, miner(embeddings, labels))  # the miner inside the step, as in training


def _triplet_count(args, kwargs) -> str | None:
    labels = args[1]
    same = (labels[:, None] == labels[None, :]).sum(1).double()
    triplets = float(((same - 1) * (labels.numel() - same)).sum())
    return _too_big(4 * triplets, "pytorch-metric-learning's TripletMarginLoss indexes every triplet")


def _triplet(args, kwargs):
    from pytorch_metric_learning import losses

    embeddings, labels = args
    _unused(kwargs, "margin")
    fn = losses.TripletMarginLoss(margin=_default("triplet_margin_loss", kwargs, "margin"))
    return lambda: fn(embeddings, labels)


def _contrastive_pair(args, kwargs):
    from pytorch_metric_learning import losses

    embeddings, labels = args
    _unused(kwargs, "pos_margin", "neg_margin")
    fn = losses.ContrastiveLoss(pos_margin=_default("contrastive_pair_loss", kwargs, "pos_margin"),
                                neg_margin=_default("contrastive_pair_loss", kwargs, "neg_margin"))
    return lambda: fn(embeddings, labels)


def _threshold_consistent(args, kwargs):
    from pytorch_metric_learning import losses

    embeddings, labels = args
    keys = ("lambda_plus", "lambda_minus", "margin_plus", "margin_minus")
    _unused(kwargs, *keys)
    fn = losses.ThresholdConsistentMarginLoss(**{k: _default("threshold_consistent_margin_loss", kwargs, k)
                                                 for k in keys})
    return lambda: fn(embeddings, labels)


def _normalized_softmax(args, kwargs):
    from pytorch_metric_learning import losses

    embeddings, labels, proxies = args
    _unused(kwargs, "temperature")
    fn = losses.NormalizedSoftmaxLoss(num_classes=proxies.shape[0], embedding_size=proxies.shape[1],
                                      temperature=_default("normalized_softmax_loss", kwargs, "temperature"))
    del fn.W  # PML keeps the proxies as a (D, C) parameter: use losslab's (C, D) proxies instead
    fn.W = proxies.T
    return lambda: fn(embeddings, labels)


# ----------------------------------------------------------------------------- POT, geomloss
def _sinkhorn(args, kwargs):
    import ot

    x, y = args
    _unused(kwargs, "epsilon", "tol", "max_iter")
    if x.dim() != 2:
        raise ValueError("POT's solve takes one problem per call; the inputs are batched")
    eps = _default("sinkhorn", kwargs, "epsilon")
    tol = _default("sinkhorn", kwargs, "tol")
    max_iter = _default("sinkhorn", kwargs, "max_iter")

    def call():
        xf, yf = _float(x), _float(y)
        a = torch.full((x.shape[0],), 1 / x.shape[0], dtype=xf.dtype)
        b = torch.full((y.shape[0],), 1 / y.shape[0], dtype=xf.dtype)
        M = ot.dist(xf, yf)  # squared Euclidean, losslab's default cost
        # the entropic value <P, C> + eps KL(P || a b^T), gradients by the envelope theorem
        return ot.solve(M, a, b, reg=eps, reg_type="KL", tol=tol, max_iter=max_iter, grad="envelope").value
    return call


def _pot_too_slow(args, kwargs) -> str | None:
    n, m = args[0].shape[-2], args[1].shape[-2]
    if n * m <= 2048 ** 2:
        return None
    return (f"POT's log-domain Sinkhorn (no epsilon-scaling) on a {n} x {m} cost matrix runs up to "
            f"{_default('sinkhorn', kwargs, 'max_iter')} full iterations: minutes per call; use --shape for a "
            "smaller problem")


GEOMLOSS_SCALING = 0.9


def _sinkhorn_divergence(args, kwargs):
    import geomloss

    x, y = args
    _unused(kwargs, "epsilon", "tol", "max_iter")
    eps = _default("sinkhorn_divergence", kwargs, "epsilon")
    # geomloss's cost is |x - y|^2 / 2 with epsilon = blur^2: the same problem as losslab's
    # |x - y|^2 at epsilon has blur = sqrt(epsilon / 2) and half the value. geomloss anneals
    # epsilon by GEOMLOSS_SCALING per iteration and stops at the end of its schedule (no
    # convergence test): closer to 1 is closer to the converged value, and slower.
    fn = geomloss.SamplesLoss("sinkhorn", p=2, blur=(eps / 2) ** 0.5, debias=True, scaling=GEOMLOSS_SCALING,
                              backend="tensorized")
    if x.dim() == 2:
        return lambda: 2 * fn(_float(x), _float(y))
    return lambda: 2 * fn(_float(x), _float(y)).mean()


def _sliced_wasserstein(args, kwargs):
    import ot

    x, y = args
    _unused(kwargs, "projections")
    projections = kwargs.get("projections")
    if projections is None:
        raise ValueError("needs the projections= of losslab's call (random directions differ per library)")
    p = _default("sliced_wasserstein", kwargs, "p")
    return lambda: ot.sliced_wasserstein_distance(_float(x), _float(y), projections=_float(projections), p=p)


def _gaussian_wasserstein2(args, kwargs):
    import ot

    mean1, cov1, mean2, cov2 = args
    _unused(kwargs)
    # POT returns W2; losslab's default (squared=True) is W2^2
    return lambda: ot.gaussian.bures_wasserstein_distance(_float(mean1), _float(mean2), _float(cov1), _float(cov2),
                                                          paired=True).square().mean()


# ----------------------------------------------------------------------------- torchmetrics
def _ece(args, kwargs):
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    probs, target = args
    _unused(kwargs, "n_bins", "norm")
    n_bins = _default("expected_calibration_error", kwargs, "n_bins")
    norm = _default("expected_calibration_error", kwargs, "norm")
    if probs.dim() == target.dim():
        return lambda: binary_calibration_error(_float(probs), target, n_bins=n_bins, norm=norm)
    c = probs.shape[-1]
    return lambda: multiclass_calibration_error(_float(probs).reshape(-1, c), target.reshape(-1), num_classes=c,
                                                n_bins=n_bins, norm=norm)


def _calibration_error(args, kwargs):
    from torchmetrics.classification import MulticlassCalibrationError

    probs, target = args
    _unused(kwargs)
    c = probs.shape[-1]

    def call():  # a fresh metric, one update, compute: what losslab's streaming estimator is timed on
        m = MulticlassCalibrationError(num_classes=c, n_bins=15, norm="l1")
        m.update(_float(probs).reshape(-1, c), target.reshape(-1))
        return m.compute()
    return call


def _mann_whitney_auc(args, kwargs):
    from torchmetrics.functional.classification import multilabel_auroc

    scores, labels = args
    _unused(kwargs)
    if scores.dim() == 1:
        from torchmetrics.functional.classification import binary_auroc

        return lambda: binary_auroc(_float(scores), labels)
    def call():
        # one query per row: torchmetrics' labels are columns, so each query is a label. A query
        # without both classes has no AUC: torchmetrics scores it 0 (with a warning), losslab
        # leaves it out of the mean, so the mean is taken here over the queries that have both.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_query = multilabel_auroc(_float(scores).T, labels.T.int(), num_labels=scores.shape[0], average=None)
        pos = labels.bool()
        return per_query[pos.any(-1) & (~pos).any(-1)].mean()
    return call


PEERS: dict[str, Peer] = {
    "cross_entropy": Peer("torch.nn.functional.cross_entropy", "torch", _cross_entropy),
    "kl_divergence": Peer("torch.nn.functional.kl_div (log_target, batchmean)", "torch", _kl_divergence),
    "kd_loss": Peer("torch: T^2 * F.kl_div(log_softmax(s/T), log_softmax(t/T), batchmean)", "torch", _kd_loss),
    "gaussian_nll": Peer("torch.nn.functional.gaussian_nll_loss", "torch", _gaussian_nll),
    "entropy": Peer("torch.distributions.Categorical(logits).entropy()", "torch", _entropy),
    "gaussian_kl": Peer("torch.distributions.kl_divergence(MultivariateNormal, MultivariateNormal)", "torch",
                        _gaussian_kl),
    "dpo_loss": Peer("torch: -F.logsigmoid(beta * margin).mean() (hand-written)", "torch", _dpo_loss),
    "linear_cross_entropy": Peer("torch: F.cross_entropy(hidden @ weight.T, target) (materialized logits)", "torch",
                                 _linear_cross_entropy),
    "linear_token_logprobs": Peer("torch: log_softmax(hidden @ weight.T).gather(target) (materialized logits)",
                                  "torch", _linear_token_logprobs),
    "sequence_logprobs": Peer("torch: log_softmax(hidden @ weight.T).gather(target).sum(-1) (materialized logits)",
                              "torch", _sequence_logprobs),
    "nt_xent": Peer("pytorch_metric_learning SelfSupervisedLoss(NTXentLoss, symmetric=True)",
                    "pytorch_metric_learning", _nt_xent, skip_reason=lambda a, k: _pml_cube(a, k, 8.0)),
    "info_nce": Peer("pytorch_metric_learning SelfSupervisedLoss(NTXentLoss, symmetric=False), both directions",
                     "pytorch_metric_learning", _info_nce, skip_reason=lambda a, k: _pml_cube(a, k, 2.0)),
    "supcon_loss": Peer("pytorch_metric_learning.losses.SupConLoss", "pytorch_metric_learning", _supcon),
    "multi_similarity_loss": Peer("pytorch_metric_learning MultiSimilarityLoss + MultiSimilarityMiner",
                                  "pytorch_metric_learning", _multi_similarity),
    "triplet_margin_loss": Peer("pytorch_metric_learning.losses.TripletMarginLoss (all triplets)",
                                "pytorch_metric_learning", _triplet, skip_reason=_triplet_count),
    "contrastive_pair_loss": Peer("pytorch_metric_learning.losses.ContrastiveLoss", "pytorch_metric_learning",
                                  _contrastive_pair),
    "threshold_consistent_margin_loss": Peer("pytorch_metric_learning.losses.ThresholdConsistentMarginLoss",
                                             "pytorch_metric_learning", _threshold_consistent),
    "normalized_softmax_loss": Peer("pytorch_metric_learning.losses.NormalizedSoftmaxLoss",
                                    "pytorch_metric_learning", _normalized_softmax),
    "sinkhorn": Peer("ot.solve(reg=epsilon, grad='envelope').value", "ot", _sinkhorn, skip_reason=_pot_too_slow),
    "sinkhorn_divergence": Peer(f"geomloss.SamplesLoss('sinkhorn', p=2, debias=True, scaling={GEOMLOSS_SCALING})",
                                "geomloss", _sinkhorn_divergence,
                                note="geomloss's cost is |x - y|^2 / 2 at blur^2 = epsilon / 2: its value x 2; "
                                     "it stops at the end of its annealing schedule, not at a tolerance"),
    "sliced_wasserstein": Peer("ot.sliced_wasserstein_distance (same projections)", "ot", _sliced_wasserstein),
    "gaussian_wasserstein2": Peer("ot.gaussian.bures_wasserstein_distance (paired), squared", "ot",
                                  _gaussian_wasserstein2, note="POT returns W2: squared here"),
    "expected_calibration_error": Peer("torchmetrics multiclass_calibration_error", "torchmetrics", _ece,
                                       note="torchmetrics computes in float32"),
    "CalibrationError": Peer("torchmetrics.classification.MulticlassCalibrationError (update + compute)",
                             "torchmetrics", _calibration_error),
    "mann_whitney_auc": Peer("torchmetrics multilabel_auroc (one label per query)", "torchmetrics",
                             _mann_whitney_auc,
                             note="averaged over the queries that have both classes (torchmetrics' macro "
                                  "average counts the others as 0)"),
}
