"""Losses, schedules, EMA and DirectPred's formulas against direct computations."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import config as config_lib, losses, schedules, spectral


def _cfg(**kw):
  return config_lib.override(config_lib.base_config(), kw)


def test_regression_loss_is_two_minus_two_cos_and_scale_free():
  p, z = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7))
  cos = np.sum(p * z, -1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(z, axis=-1)
  chex.assert_trees_all_close(losses.regression_loss(p, z), 2 - 2 * cos, atol=1e-5)
  chex.assert_trees_all_close(losses.regression_loss(3.0 * p, 0.5 * z), losses.regression_loss(p, z), atol=1e-5)
  chex.assert_trees_all_close(losses.regression_loss(p, p), jnp.zeros(5), atol=1e-5)


@pytest.mark.parametrize('method', ['byol', 'simsiam'])
def test_symmetric_loss_is_symmetric_in_the_views(method):
  p1, p2, z1, z2 = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 8))
  a = losses.symmetric_loss(p1, p2, z1, z2, method)
  b = losses.symmetric_loss(p2, p1, z2, z1, method)
  chex.assert_trees_all_close(a, b, atol=1e-6)
  one_way = losses.symmetric_loss(p1, p2, z1, z2, method, symmetric=False)
  other_way = losses.symmetric_loss(p2, p1, z2, z1, method, symmetric=False)
  if method == 'byol':  # summed over the two directions
    chex.assert_trees_all_close(a, one_way + other_way, atol=1e-5)
  else:  # averaged
    chex.assert_trees_all_close(a, 0.5 * (one_way + other_way), atol=1e-5)


def test_tau_schedule_cosine_from_base_to_one():
  c = _cfg(**{'ema.tau_base': 0.99, 'ema.schedule': 'cosine', 'train.steps': 100})
  taus = np.array([schedules.tau(jnp.int32(k), c) for k in (0, 50, 100, 150)])
  np.testing.assert_allclose(taus, [0.99, 0.995, 1.0, 1.0], atol=1e-6)
  assert np.all(np.diff(np.array([schedules.tau(jnp.int32(k), c) for k in range(0, 101, 10)])) >= 0)
  c.ema.schedule = 'constant'
  assert float(schedules.tau(jnp.int32(70), c)) == pytest.approx(0.99)


def test_ema_update():
  target = {'w': jnp.ones(3), 'b': {'x': jnp.zeros(())}}
  online = {'w': jnp.full(3, 3.0), 'b': {'x': jnp.ones(())}}
  out = schedules.ema(target, online, 0.75)
  chex.assert_trees_all_close(out, {'w': jnp.full(3, 1.5), 'b': {'x': jnp.full((), 0.25)}})


def test_learning_rate_warmup_cosine():
  c = _cfg(**{'optim.schedule': 'warmup_cosine', 'optim.warmup_steps': 10, 'train.steps': 110,
              'optim.lr': 0.2, 'optim.scale_by_batch': True, 'train.batch_size': 512})
  lr = schedules.learning_rate(c)
  assert float(lr(0)) == 0.0
  assert float(lr(10)) == pytest.approx(0.4)
  assert float(lr(60)) == pytest.approx(0.2, rel=1e-4)
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-7)


def _random_psd(key, d, rank=None):
  a = jax.random.normal(key, (d, rank or d))
  return a @ a.T / d


@pytest.mark.parametrize('eps,power,inside', [(0.1, 2.0, False), (0.0, 2.0, False), (0.01, 1.0, False),
                                             (-0.05, 2.0, True), (0.1, 2.0, True)])
def test_directpred_matches_eigen_formula(eps, power, inside):
  # Full rank: near s = 0 the square root amplifies float32 eigh round-off (sqrt(1e-7) ~ 3e-4).
  f = np.asarray(_random_psd(jax.random.PRNGKey(2), 12, rank=24), np.float64)
  w = np.asarray(spectral.directpred_predictor(jnp.asarray(f, jnp.float32), eps, power, inside))
  s, u = np.linalg.eigh(f)
  s_norm = np.maximum(s, 0) / s.max()
  if inside:
    p = np.maximum(s_norm + eps, 1e-4) ** (1 / power)
  else:
    p = np.maximum(s_norm ** (1 / power) + eps, 1e-4)
  expected = u @ np.diag(p) @ u.T
  np.testing.assert_allclose(w, expected, atol=2e-5)
  np.testing.assert_allclose(w, w.T, atol=1e-6)
  if not inside and eps >= 0:  # the top eigenvalue of W_p is 1 + eps, the rest at least eps
    assert np.linalg.eigvalsh(w).max() == pytest.approx(1 + eps, abs=1e-4)


def test_directpred_is_invariant_to_the_scale_of_f():
  f = _random_psd(jax.random.PRNGKey(3), 10)
  chex.assert_trees_all_close(spectral.directpred_predictor(f, 0.1), spectral.directpred_predictor(37.0 * f, 0.1),
                              atol=1e-5)


def test_directcopy_is_f_over_top_eigenvalue_plus_eps():
  f = np.asarray(_random_psd(jax.random.PRNGKey(4), 9), np.float64)
  w = spectral.directcopy_predictor(jnp.asarray(f, jnp.float32), 0.2)
  np.testing.assert_allclose(w, f / np.linalg.eigvalsh(f).max() + 0.2 * np.eye(9), atol=1e-5)


def test_correlation_ema_first_step_sets_f_to_batch_estimate():
  f = jax.random.normal(jax.random.PRNGKey(5), (32, 6))
  m = spectral.batch_correlation(f)
  np.testing.assert_allclose(m, np.asarray(f).T @ np.asarray(f) / 32, atol=1e-5)
  old = jnp.eye(6)
  chex.assert_trees_all_close(spectral.update_correlation(old, m, jnp.int32(0), 0.3), m)
  chex.assert_trees_all_close(spectral.update_correlation(old, m, jnp.int32(4), 0.3), 0.3 * old + 0.7 * m,
                              atol=1e-6)
  # cumulative mean of M_1..M_3 = 3 equal parts
  m1, m2, m3 = jnp.eye(6), 2 * jnp.eye(6), 6 * jnp.eye(6)
  f_ = spectral.update_correlation(jnp.zeros((6, 6)), m1, jnp.int32(0), None)
  f_ = spectral.update_correlation(f_, m2, jnp.int32(1), None)
  f_ = spectral.update_correlation(f_, m3, jnp.int32(2), None)
  chex.assert_trees_all_close(f_, 3 * jnp.eye(6), atol=1e-6)


def test_centred_correlation_is_the_covariance():
  f = jax.random.normal(jax.random.PRNGKey(6), (64, 4)) + 3.0
  np.testing.assert_allclose(spectral.batch_correlation(f, centre=True), np.cov(np.asarray(f).T, bias=True),
                             atol=1e-4)


def test_spectral_stats_of_an_aligned_predictor():
  f = _random_psd(jax.random.PRNGKey(7), 8)
  w = spectral.directpred_predictor(f, 0.1)
  st = spectral.spectral_stats(f, w)
  np.testing.assert_allclose(st['alignment'], np.ones(8), atol=1e-4)
  assert float(st['commutator_norm']) < 1e-5 and float(st['asymmetry']) < 1e-6
  assert np.all(np.diff(np.asarray(st['corr_eigenvalues'])) <= 1e-6)  # descending
  skew = jnp.triu(jnp.ones((8, 8)), 1)
  assert float(spectral.spectral_stats(f, w + skew)['asymmetry']) > 0.1
