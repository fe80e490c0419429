"""Eigh-free DirectPred predictor (byol_jax/spectral.py): accuracy against the eigh reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import spectral

TOL = 1e-3  # relative Frobenius error against directpred_predictor


def _spectrum(d, kind):
  if kind == 'loguniform':
    return np.logspace(0, -6, d)
  if kind == 'rank_half':  # exact zeros
    return np.concatenate([np.logspace(0, -6, d // 2), np.zeros(d - d // 2)])
  if kind == 'rank_quarter':
    return np.concatenate([np.logspace(0, -3, d // 4), np.zeros(d - d // 4)])
  if kind == 'near_degenerate':  # top pair 1e-5 apart
    s = np.logspace(0, -6, d)
    s[1], s[2] = 1 - 1e-5, 1 - 1e-3
    return s
  if kind == 'loguniform8':  # below the Newton-Schulz design floor
    return np.logspace(0, -8, d)
  raise ValueError(kind)


def _corr(d, kind, n, seed=0):
  """F = E[f f^T] of n samples with covariance spectrum `kind` (n=None: F with exactly that spectrum)."""
  rng = np.random.default_rng(seed)
  s = _spectrum(d, kind)
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  if n is None:
    return np.float32((q * s) @ q.T * 3.0)
  x = rng.standard_normal((n, d)) @ (q * np.sqrt(s)).T * 3.0
  return np.float32(x.T @ x / n)


_ref = jax.jit(spectral.directpred_predictor, static_argnames=('power', 'eps_inside'))
_fast = jax.jit(spectral.directpred_predictor_fast, static_argnames=('power', 'eps_inside'))
_dispatch = jax.jit(spectral.predictor_weights, static_argnames=('power', 'eps_inside', 'solver'))


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize('d,kind,n', [
    (128, 'loguniform', 512), (128, 'rank_half', 512), (128, 'rank_quarter', None),
    (128, 'near_degenerate', None), (128, 'loguniform8', 8192),
    (256, 'rank_half', None)])
def test_matches_eigh(d, kind, n):
  f = jnp.asarray(_corr(d, kind, n))
  for eps in (0.0, 0.01, 0.1):
    ref = _ref(f, eps, power=2.0)
    fast = _fast(f, eps, power=2.0)
    assert _rel(fast, ref) < TOL, (eps, _rel(fast, ref))
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(fast).T)
  w = _dispatch(f, 0.01, power=2.0, solver='newton_schulz')
  assert _rel(w, _ref(f, 0.01, power=2.0)) < TOL
  # power 1 (DirectCopy-like): only lambda_max is approximated
  assert _rel(_fast(f, 0.0, power=1.0), _ref(f, 0.0, power=1.0)) < TOL


@pytest.mark.parametrize('d,kind,n', [(128, 'loguniform', 512), (128, 'rank_half', None),
                                      (256, 'near_degenerate', None)])
def test_top_eigenvalue(d, kind, n):
  f = _corr(d, kind, n)
  want = np.linalg.eigvalsh(np.float64(f))[-1]
  got = float(jax.jit(spectral.top_eigenvalue)(jnp.asarray(f)))
  assert abs(got - want) / want < 1e-4


def test_top_eigenvalue_zero_matrix():
  assert float(spectral.top_eigenvalue(jnp.zeros((8, 8)))) == 0.0


def test_sqrtm_newton_schulz_plain_and_scaled():
  f = _corr(64, 'loguniform', None)
  a = f / np.linalg.eigvalsh(np.float64(f))[-1]
  s, u = np.linalg.eigh(np.float64(a))
  want = (u * np.sqrt(np.maximum(s, 0))) @ u.T
  scaled = spectral.sqrtm_newton_schulz(jnp.asarray(a, jnp.float32))
  plain = spectral.sqrtm_newton_schulz(jnp.asarray(a, jnp.float32), iters=24, min_eigenvalue=None)
  assert _rel(scaled, want) < 5e-4
  assert _rel(plain, want) < 5e-4
  # the scaled schedule ends in plain Newton-Schulz steps
  assert spectral.newton_schulz_schedule(12)[-1] == pytest.approx((1.5, -0.5), abs=1e-6)


def test_unsupported_options_raise_and_dispatch_to_eigh():
  f = jnp.asarray(_corr(32, 'loguniform', 256))
  with pytest.raises(ValueError):
    spectral.directpred_predictor_fast(f, 0.1, power=2.0, eps_inside=True)
  with pytest.raises(ValueError):
    spectral.directpred_predictor_fast(f, 0.1, power=3.0)
  with pytest.raises(ValueError):
    spectral.predictor_weights(f, 0.1, solver='svd')
  for power, inside in ((2.0, True), (3.0, False)):
    np.testing.assert_array_equal(
        np.asarray(spectral.predictor_weights(f, 0.1, power, inside, solver='newton_schulz')),
        np.asarray(spectral.directpred_predictor(f, 0.1, power, inside)))
  np.testing.assert_array_equal(np.asarray(spectral.predictor_weights(f, 0.1, solver='eigh')),
                                np.asarray(spectral.directpred_predictor(f, 0.1)))


def test_falls_back_to_eigh_on_negative_eigenvalue():
  """A clearly indefinite F makes Newton-Schulz diverge; the solver must then return the eigh result."""
  d = 64
  s = np.concatenate([np.logspace(0, -6, d // 2), np.zeros(d - d // 2)])
  s[-1] = -1e-4
  q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))
  f = jnp.asarray(np.float32((q * s) @ q.T))
  assert not np.all(np.isfinite(np.asarray(spectral.directpred_predictor_fast(f, 0.01)))) or \
      _rel(spectral.directpred_predictor_fast(f, 0.01), _ref(f, 0.01)) > 1.0
  w = _dispatch(f, 0.01, power=2.0, solver='newton_schulz')
  np.testing.assert_allclose(np.asarray(w), np.asarray(_ref(f, 0.01)), atol=1e-6)
  # The training step's form: no lax.cond, the given fallback (the current W_p) and ok = False.
  current = jnp.asarray(np.random.default_rng(1).standard_normal((d, d)), jnp.float32)
  w, ok = jax.jit(lambda c, w0: spectral.predictor_weights_and_ok(c, 0.01, solver='newton_schulz', fallback=w0))(
      f, current)
  assert not bool(ok)
  np.testing.assert_array_equal(np.asarray(w), np.asarray(current))
  # and a healthy F passes the check and ignores the fallback.
  g = jnp.asarray(_corr(d, 'loguniform', 256))
  w, ok = spectral.predictor_weights_and_ok(g, 0.01, solver='newton_schulz', fallback=current)
  assert bool(ok) and _rel(w, _ref(g, 0.01)) < TOL


def test_jit_with_traced_eps():
  f = jnp.asarray(_corr(32, 'loguniform', 256))
  fn = jax.jit(lambda c, e: spectral.predictor_weights(c, e, solver='newton_schulz'))
  w = fn(f, jnp.float32(0.01))
  assert _rel(w, spectral.directpred_predictor(f, 0.01)) < TOL


def test_matmul_count():
  assert spectral.newton_schulz_matmuls() == spectral.TOP_EIGENVALUE_ITERS + 1 + 3 * spectral.NS_ITERS - 3
  assert spectral.newton_schulz_matmuls(power=1) == spectral.TOP_EIGENVALUE_ITERS + 1
