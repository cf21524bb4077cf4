"""Independent oracles for the RL building blocks of metarl.rl: numpy loops and closed forms, nothing reused.

Every reference below is written out here (plain numpy, per episode, per step) and never calls the function under
test or its helpers: returns-to-go with masks and discount, rllab's linear-feature baseline solved with
``numpy.linalg.lstsq``, advantage normalisation, the vanilla policy-gradient loss, and ProMP's clipped surrogate with
its gradient on both sides of the clip range for positive and negative advantages.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl.rl import advantages, clipped_surrogate_loss, linear_baseline, returns_to_go, vpg_loss

LENGTHS = [100, 37, 1, 64, 100]  # real steps per episode; padded to T = 100 (episodes end early or run to H)
T = 100


def padded_episodes(seed: int, obs_dim: int = 3):
    """(E, T) rewards with garbage on the padding, a prefix mask, (E, T, D) observations (some beyond ±10)."""
    rng = np.random.default_rng(seed)
    E = len(LENGTHS)
    mask = np.zeros((E, T))
    for e, n in enumerate(LENGTHS):
        mask[e, :n] = 1.0
    rewards = rng.normal(size=(E, T)) + 100.0 * (1.0 - mask)  # padding rewards must be ignored
    obs = rng.normal(scale=6.0, size=(E, T, obs_dim))  # |o| > 10 in a few percent of the entries: the clip matters
    return obs, rewards, mask


# ---- the references ------------------------------------------------------------------------------------------------
def ref_returns(rewards, lengths, gamma):
    """R_t = Σ_{t'=t}^{n-1} γ^{t'-t} r_t' for t < n (episode length n), 0 on padding: a double loop."""
    out = np.zeros_like(rewards)
    for e, n in enumerate(lengths):
        for t in range(n):
            out[e, t] = sum(gamma ** (k - t) * rewards[e, k] for k in range(t, n))
    return out


def rllab_features(obs_episode):
    """rllab ``LinearFeatureBaseline._features`` for one path: [o, o², al, al², al³, 1], o clipped to ±10."""
    o = np.clip(obs_episode, -10, 10)
    al = np.arange(len(o)).reshape(-1, 1) / 100.0
    return np.concatenate([o, o**2, al, al**2, al**3, np.ones((len(o), 1))], axis=1)


def ref_baseline(obs, returns, lengths, reg=1e-5):
    """rllab ``LinearFeatureBaseline.fit`` + ``predict``: lstsq(FᵀF + reg·I, Fᵀy) over the concatenated paths."""
    featmat = np.concatenate([rllab_features(obs[e, :n]) for e, n in enumerate(lengths)])
    y = np.concatenate([returns[e, :n] for e, n in enumerate(lengths)])
    coeffs = np.linalg.lstsq(featmat.T @ featmat + reg * np.identity(featmat.shape[1]), featmat.T @ y, rcond=None)[0]
    out = np.zeros(returns.shape)
    for e, n in enumerate(lengths):
        out[e, :n] = rllab_features(obs[e, :n]) @ coeffs
    return out


def ref_normalise(adv, lengths):
    """(A - mean) / (std + 1e-8) over the real steps only (population std), 0 on padding."""
    real = np.concatenate([adv[e, :n] for e, n in enumerate(lengths)])
    mean, std = real.mean(), real.std()
    out = np.zeros_like(adv)
    for e, n in enumerate(lengths):
        out[e, :n] = (adv[e, :n] - mean) / (std + 1e-8)
    return out


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


# ---- returns-to-go -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.99, 0.5, 1.0])
def test_returns_to_go_equals_a_double_loop(gamma):
    _, rewards, mask = padded_episodes(0)
    got = returns_to_go(t64(rewards), t64(mask), gamma=gamma).numpy()
    np.testing.assert_allclose(got, ref_returns(rewards, LENGTHS, gamma), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_returns_to_go_of_a_constant_reward_is_the_geometric_sum(gamma):
    """r_t = 1 on n real steps: R_t = (1 - γ^{n-t}) / (1 - γ) (= n - t for γ = 1); padding stays 0."""
    n, horizon = 7, 10
    mask = t64([[1.0] * n + [0.0] * (horizon - n)])
    got = returns_to_go(torch.ones(1, horizon, dtype=torch.float64) * 5.0 * (2 - mask), mask, gamma=gamma).numpy()[0]
    k = np.arange(n, 0, -1)  # steps left: n - t
    expected = 5.0 * (k if gamma == 1.0 else (1 - gamma**k) / (1 - gamma))
    np.testing.assert_allclose(got, np.r_[expected, np.zeros(horizon - n)], rtol=1e-13)


# ---- the linear-feature baseline -----------------------------------------------------------------------------------
@pytest.mark.parametrize("obs_dim", [1, 3])
def test_linear_baseline_equals_rllab_fit_solved_with_lstsq(obs_dim):
    obs, rewards, mask = padded_episodes(1, obs_dim)
    ret = ref_returns(rewards, LENGTHS, 0.99)
    # returns with a strong cubic time trend: a baseline without the t³ feature cannot fit this
    ret = ret + 40.0 * (np.arange(T) / 100.0) ** 3 * mask
    got = linear_baseline(t64(obs), t64(ret), t64(mask)).numpy()
    expected = ref_baseline(obs, ret, LENGTHS)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert np.all(got[mask == 0] == 0)
    # least squares: the residual is (up to the ridge) orthogonal to every feature column
    featmat = np.concatenate([rllab_features(obs[e, :n]) for e, n in enumerate(LENGTHS)])
    resid = np.concatenate([(ret - got)[e, :n] for e, n in enumerate(LENGTHS)])
    assert np.abs(featmat.T @ resid).max() < 1e-3 * np.abs(featmat.T @ np.concatenate(
        [ret[e, :n] for e, n in enumerate(LENGTHS)])).max()


def test_linear_baseline_is_fitted_in_float64_from_float32_inputs():
    obs, rewards, mask = padded_episodes(2)
    ret = ref_returns(rewards, LENGTHS, 0.99)
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    got = linear_baseline(f32(obs), f32(ret), f32(mask))
    assert got.dtype == torch.float64
    expected = ref_baseline(obs.astype(np.float32).astype(np.float64), ret.astype(np.float32).astype(np.float64),
                            LENGTHS)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-8)


# ---- advantages: R - b, normalised over the real steps -------------------------------------------------------------
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("gamma", [0.99, 0.9])
def test_advantages_equal_returns_minus_baseline_normalised(normalize, gamma):
    obs, rewards, mask = padded_episodes(3)
    batch = {"obs": t64(obs), "rewards": t64(rewards), "mask": t64(mask)}
    ret = ref_returns(rewards, LENGTHS, gamma)
    adv = ret - ref_baseline(obs, ret, LENGTHS)
    expected = ref_normalise(adv, LENGTHS) if normalize else adv
    got = advantages(batch, gamma=gamma, normalize=normalize).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    if normalize:
        real = got[mask == 1]
        assert abs(real.mean()) < 1e-10 and real.std() == pytest.approx(1.0, rel=1e-7)
        assert np.all(got[mask == 0] == 0)


# ---- the inner loss and the clipped surrogate ----------------------------------------------------------------------
def test_vpg_loss_and_its_gradient():
    rng = np.random.default_rng(4)
    logp, adv = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=float)
    lp = t64(logp).requires_grad_()
    loss = vpg_loss(lp, t64(adv), t64(mask))
    loss.backward()
    n = mask.sum()
    assert float(loss.detach()) == pytest.approx(-sum(logp[i, j] * adv[i, j] for i in range(2) for j in range(6)
                                             if mask[i, j]) / n, rel=1e-13)
    np.testing.assert_allclose(lp.grad.numpy(), -mask * adv / n, rtol=1e-13)


EPS = 0.2
RATIOS = [0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.6]  # below, at the edge of (0.8 excluded), inside, above [1-ε, 1+ε]


def ref_surrogate_terms(ratio, adv, eps):
    """Per step: the objective min(r A, clip(r) A) by cases, and its derivative w.r.t. log r (= r A or 0)."""
    value, dvalue_dlogp = [], []
    for r, a in zip(ratio, adv):
        if a >= 0:  # the objective stops rewarding r beyond 1 + ε
            value.append(min(r, 1 + eps) * a)
            dvalue_dlogp.append(r * a if r < 1 + eps else 0.0)
        else:  # ... and stops rewarding r below 1 - ε
            value.append(max(r, 1 - eps) * a)
            dvalue_dlogp.append(r * a if r > 1 - eps else 0.0)
    return np.array(value), np.array(dvalue_dlogp)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clipped_surrogate_value_and_gradient_inside_and_outside_the_clip_range(sign):
    ratio = np.array(RATIOS * 2)
    adv = sign * np.r_[np.full(len(RATIOS), 1.3), np.full(len(RATIOS), 0.4)]
    mask = np.ones_like(ratio)
    mask[-1] = 0.0  # a padded step counts in neither the value nor the gradient
    logp_old = np.random.default_rng(5).normal(size=ratio.shape)
    lp = t64(logp_old + np.log(ratio)).requires_grad_()
    loss = clipped_surrogate_loss(lp, t64(logp_old), t64(adv), t64(mask), clip=EPS)
    loss.backward()
    value, dvalue = ref_surrogate_terms(ratio, adv, EPS)
    n = mask.sum()
    assert float(loss.detach()) == pytest.approx(-(value * mask).sum() / n, rel=1e-12)
    np.testing.assert_allclose(lp.grad.numpy(), -dvalue * mask / n, rtol=1e-12, atol=1e-15)
    clipped = dvalue == 0
    assert clipped.any() and (~clipped).any(), "both branches are exercised"


def test_clipped_surrogate_closed_form_at_single_ratios():
    """Hand-computed cases, ε = 0.2: value -min(rA, clip(r)A) and d/dlogp."""
    cases = [  # ratio, advantage, loss, dloss/dlogp
        (1.5, 2.0, -2.4, 0.0),  # A > 0, r > 1+ε: clipped at 1.2 · 2
        (0.5, 2.0, -1.0, -1.0),  # A > 0, r < 1-ε: NOT clipped (min picks r A)
        (1.5, -2.0, 3.0, 3.0),  # A < 0, r > 1+ε: NOT clipped (min picks r A = -3)
        (0.5, -2.0, 1.6, 0.0),  # A < 0, r < 1-ε: clipped at 0.8 · -2
        (1.1, -2.0, 2.2, 2.2),  # inside: r A
    ]
    for r, a, loss_value, grad in cases:
        lp = torch.tensor([np.log(r)], dtype=torch.float64, requires_grad=True)
        loss = clipped_surrogate_loss(lp, t64([0.0]), t64([a]), t64([1.0]), clip=EPS)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(loss_value, rel=1e-12), (r, a)
        assert float(lp.grad) == pytest.approx(grad, rel=1e-12, abs=1e-15), (r, a)
