"""ips_value and doubly_robust_value.

References: explicit loops over the estimators' formulas (IPS, clipped IPS, SNIPS with the
delta-method standard error, DR); Monte Carlo over repeated logged data sets of a bandit whose
target-policy value is known exactly (sum over contexts and actions of pi * expected reward),
with tolerances from the estimators' own spread over the repeats.
"""
import math

import numpy as np
import pytest
import torch

import losslab
from losslab.estimators import Estimate, doubly_robust_value, ips_value


def _loop(rewards, actions, pi, mu, q=None, clip=None, self_normalized=False):
    n = len(rewards)
    w = []
    for i in range(n):
        wi = float(pi[i, actions[i]]) / float(mu[i, actions[i]])
        w.append(min(wi, clip) if clip is not None else wi)
    r = [float(v) for v in rewards]
    if q is not None:
        terms = [sum(float(pi[i, a]) * float(q[i, a]) for a in range(pi.shape[1]))
                 + w[i] * (r[i] - float(q[i, actions[i]])) for i in range(n)]
    elif self_normalized:
        sw = sum(w)
        v = sum(wi * ri for wi, ri in zip(w, r)) / sw
        return v, math.sqrt(sum(wi ** 2 * (ri - v) ** 2 for wi, ri in zip(w, r))) / sw
    else:
        terms = [wi * ri for wi, ri in zip(w, r)]
    m = sum(terms) / n
    return m, math.sqrt(sum((t - m) ** 2 for t in terms) / (n - 1) / n)


def _logged(gen, n=40, a=5):
    pi = torch.softmax(torch.randn(n, a, generator=gen, dtype=torch.float64), -1)
    mu = torch.softmax(torch.randn(n, a, generator=gen, dtype=torch.float64), -1)
    actions = torch.multinomial(mu, 1, generator=gen).squeeze(1)
    rewards = torch.randn(n, generator=gen, dtype=torch.float64)
    q = torch.randn(n, a, generator=gen, dtype=torch.float64)
    return rewards, actions, pi, mu, q


@pytest.mark.parametrize("clip", [None, 1.5])
@pytest.mark.parametrize("self_normalized", [False, True])
def test_ips_matches_the_loop(clip, self_normalized):
    r, act, pi, mu, _ = _logged(torch.Generator().manual_seed(0))
    est = ips_value(r, act, pi, mu, clip=clip, self_normalized=self_normalized)
    assert isinstance(est, Estimate)
    np.testing.assert_allclose([float(est.value), float(est.stderr)],
                               _loop(r, act, pi, mu, clip=clip, self_normalized=self_normalized), rtol=1e-12)


@pytest.mark.parametrize("clip", [None, 1.5])
def test_doubly_robust_matches_the_loop(clip):
    r, act, pi, mu, q = _logged(torch.Generator().manual_seed(1))
    est = doubly_robust_value(r, act.int(), pi, mu, q, clip=clip)  # any integer dtype for actions
    np.testing.assert_allclose([float(est.value), float(est.stderr)], _loop(r, act, pi, mu, q=q, clip=clip),
                               rtol=1e-12)


def test_gradient_in_the_target_policy_is_the_importance_weighted_reward():
    """d IPS / d pi(a_i | x_i) = r_i / (N mu(a_i | x_i)); zero for the actions not logged."""
    r, act, pi, mu, _ = _logged(torch.Generator().manual_seed(2), n=6, a=3)
    pi = pi.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ips_value(r, act, pi, mu).value, pi)
    expected = torch.zeros_like(pi)
    for i in range(6):
        expected[i, act[i]] = r[i] / (6 * mu[i, act[i]])
    torch.testing.assert_close(g, expected)


# --------------------------------------------------------------------------- a bandit with a known value
C, A = 6, 4


def _bandit():
    gen = torch.Generator().manual_seed(10)
    mean_reward = torch.rand(C, A, generator=gen, dtype=torch.float64)  # Bernoulli reward means
    logging = torch.softmax(torch.randn(C, A, generator=gen, dtype=torch.float64), -1)
    target = torch.softmax(3.0 * mean_reward, -1)  # a better-than-logging policy
    value = float((target * mean_reward).sum(1).mean())  # contexts uniform: the exact target value
    return mean_reward, logging, target, value


def _draw(gen, reps, n):
    mean_reward, logging, target, _ = _bandit()
    ctx = torch.randint(0, C, (reps, n), generator=gen)
    mu, pi = logging[ctx], target[ctx]  # (reps, n, A)
    act = torch.multinomial(mu.reshape(-1, A), 1, generator=gen).reshape(reps, n)
    p = mean_reward[ctx].gather(-1, act.unsqueeze(-1)).squeeze(-1)
    rew = torch.bernoulli(p, generator=gen)
    return ctx, act, rew, pi, mu


def _spread(ests):
    values = torch.stack([e.value for e in ests])
    return values, float(values.var()), float(torch.stack([e.stderr for e in ests]).pow(2).mean())


def test_ips_and_dr_are_unbiased_and_dr_has_lower_variance_on_a_known_bandit():
    reps, n = 300, 200
    mean_reward, _, _, truth = _bandit()
    ctx, act, rew, pi, mu = _draw(torch.Generator().manual_seed(11), reps, n)
    noise = torch.randn(C, A, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    models = {
        "exact": mean_reward,  # the true reward means
        "noisy": mean_reward + 0.1 * noise,  # a reward model with errors
        "wrong": torch.full((C, A), 0.5, dtype=torch.float64) + 0.3 * noise,  # far off
    }
    ips = [ips_value(rew[r], act[r], pi[r], mu[r]) for r in range(reps)]
    snips = [ips_value(rew[r], act[r], pi[r], mu[r], self_normalized=True) for r in range(reps)]
    dr = {k: [doubly_robust_value(rew[r], act[r], pi[r], mu[r], m[ctx[r]]) for r in range(reps)]
          for k, m in models.items()}
    for ests in [ips, snips, *dr.values()]:
        values, var, mean_se2 = _spread(ests)
        # unbiased (SNIPS: its O(1/n) bias is far below this bound) within 4 standard errors of
        # the mean over repeats
        assert abs(float(values.mean()) - truth) < 4 * math.sqrt(var / reps)
        # the reported stderr matches the actual spread: a variance estimated from 300 repeats is
        # within +-25 % of its expectation (3.5 sigma, sigma ~ sqrt(2 / 299) = 8 %)
        assert mean_se2 == pytest.approx(var, rel=0.25)
    var_ips = _spread(ips)[1]
    # with a good reward model the weights multiply only the residuals: far less variance
    assert _spread(dr["exact"])[1] < 0.25 * var_ips  # observed 0.13
    assert _spread(dr["noisy"])[1] < 0.25 * var_ips  # observed 0.14


def test_clipping_trades_bias_for_variance():
    reps, n = 300, 200
    *_, truth = _bandit()
    _, act, rew, pi, mu = _draw(torch.Generator().manual_seed(13), reps, n)
    plain = _spread([ips_value(rew[r], act[r], pi[r], mu[r]) for r in range(reps)])
    clipped = _spread([ips_value(rew[r], act[r], pi[r], mu[r], clip=1.0) for r in range(reps)])
    assert clipped[1] < 0.5 * plain[1]
    # non-negative rewards: clipping can only lower every term, so the estimate is biased down
    assert float(clipped[0].mean()) < truth - 4 * math.sqrt(clipped[1] / reps)


# --------------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument():
    r, act, pi, mu, q = _logged(torch.Generator().manual_seed(3), n=8, a=3)
    mu0 = mu.clone()
    mu0[2] = 0.0
    mu0[2, (act[2] + 1) % 3] = 1.0  # the logged action has propensity 0
    with pytest.raises(ValueError, match="logging_probs must be > 0 at the logged actions"):
        ips_value(r, act, pi, mu0)
    with pytest.raises(ValueError, match="logging_probs must be > 0"):
        doubly_robust_value(r, act, pi, mu0, q)
    with pytest.raises(ValueError, match="rewards"):
        ips_value(r[:-1], act, pi, mu)
    with pytest.raises(ValueError, match="actions"):
        ips_value(r, act[:-1], pi, mu)
    with pytest.raises(ValueError, match="actions"):
        ips_value(r, torch.full_like(act, 3), pi, mu)
    with pytest.raises(ValueError, match="logging_probs"):
        ips_value(r, act, pi, mu[:, :2])
    with pytest.raises(ValueError, match="target_probs must sum to 1"):
        ips_value(r, act, 2 * pi, mu)
    with pytest.raises(ValueError, match="reward_estimates"):
        doubly_robust_value(r, act, pi, mu, q[:-1])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clip"):
            ips_value(r, act, pi, mu, clip=bad)
    one_hot_other = torch.nn.functional.one_hot((act + 1) % 3, 3).double()
    with pytest.raises(ValueError, match="target_probs puts zero probability on every logged action"):
        ips_value(r, act, one_hot_other, mu, self_normalized=True)
    # plain IPS is defined there: 0
    assert float(ips_value(r, act, one_hot_other, mu).value) == 0.0


def test_half_precision_is_computed_in_float32():
    r, act, pi, mu, q = _logged(torch.Generator().manual_seed(4), n=8, a=4)
    # distributions rounded to bfloat16 still sum to 1 within the half-precision check's tolerance
    pi16 = torch.full((8, 4), 0.25, dtype=torch.bfloat16)
    est = doubly_robust_value(r.bfloat16(), act, pi16, pi16, q.bfloat16())
    ref = doubly_robust_value(r.bfloat16().float(), act, pi16.float(), pi16.float(), q.bfloat16().float())
    assert est.value.dtype == torch.float32
    torch.testing.assert_close(torch.stack(est), torch.stack(ref))


def test_registered_as_estimators():
    for name in ("ips_value", "doubly_robust_value"):
        info = losslab.info(name)
        assert info.family == "estimators" and name in losslab.estimators.__all__
