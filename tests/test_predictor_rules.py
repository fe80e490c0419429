"""DirectPred's alternatives studied in configs/study/directpred_why.py: the reference's general eigensolver, the
projection rule, and IsoLoss's gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import losses, spectral


def _rank_deficient_corr(rank=9, d=128, batch=256, seed=0):
  """F = z^T z / B of float32 projector outputs that span `rank` of d dimensions: a dimensionally collapsed F."""
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=(batch, rank)) @ rng.normal(size=(rank, d))).astype(np.float32)
  return z.T @ z / batch


def test_general_solver_equals_eigh_on_a_well_separated_spectrum():
  rng = np.random.default_rng(1)
  u, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  corr = ((u * np.logspace(0, -3, 16)) @ u.T).astype(np.float32)
  for power, eps in ((2.0, 0.1), (4.0, 0.5), (1.0, 0.0)):
    general = spectral.directpred_predictor_general(jnp.asarray(corr), eps, power)
    exact = spectral.directpred_predictor(jnp.asarray(corr), eps, power)
    np.testing.assert_allclose(general, exact, atol=1e-5)


def test_general_solver_keeps_lapacks_real_layout_for_complex_pairs():
  """A rotation has eigenvalues +-i: sgeev stores Re v and Im v of the +i eigenvector in columns 0 and 1, and the
  real parts of the eigenvalues (0) are what the reference keeps."""
  a = np.array([[0.0, -1.0], [1.0, 0.0]], np.float32)
  s, q = jax.device_get(spectral.general_eig(jnp.asarray(a)))
  np.testing.assert_allclose(s, [0.0, 0.0], atol=1e-7)
  v = q[:, 0] + 1j * q[:, 1]
  np.testing.assert_allclose(a @ v, 1j * v, atol=1e-6)
  assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)


def test_general_solver_reproduces_the_references_anisotropic_floor_on_a_collapsed_corr():
  """On F's ~119 dead modes eigh gives W_p = eps on every mode; the general solver's complex pairs and
  non-orthogonal vectors give an anisotropic block (the reference's W_p there), while the live modes agree."""
  corr = _rank_deficient_corr()
  general = np.asarray(jax.jit(lambda f: spectral.directpred_predictor_general(f, 0.1))(jnp.asarray(corr)))
  exact = np.asarray(spectral.directpred_predictor(jnp.asarray(corr), 0.1))
  _, u = np.linalg.eigh(corr.astype(np.float64))
  dead, live = u[:, :-9], u[:, -9:]
  dead_exact = np.linalg.eigvalsh(dead.T @ exact @ dead)
  dead_general = np.linalg.eigvalsh(dead.T @ general @ dead)
  assert dead_exact.min() > 0.0999 and dead_exact.max() < 0.101  # eps I: isotropic
  assert dead_general.max() - dead_general.min() > 0.2  # anisotropic: ~0 to ~0.5
  assert np.trace(dead.T @ general @ dead) < 0.9 * np.trace(dead.T @ exact @ dead)
  np.testing.assert_allclose(live.T @ general @ live, live.T @ exact @ live, atol=1e-4)


def test_projection_rule_gives_one_on_live_modes_and_eps_below():
  s = jnp.array([0.0, 1e-4, 5e-3, 2e-2, 0.3, 1.0]) * 7.0
  p = spectral.directpred_eigenvalues(s, 0.1, projection=1e-2)
  np.testing.assert_allclose(p, [0.1, 0.1, 0.1, 1.0, 1.0, 1.0])
  corr = jnp.diag(s)
  np.testing.assert_allclose(spectral.predictor_weights(corr, 0.1, 2.0, False, 'eigh'), jnp.diag(jnp.sqrt(s / 7.0) + 0.1),
                             atol=1e-6)
  w, _ = spectral.predictor_weights_and_ok(corr, 0.1, projection=1e-2)
  np.testing.assert_allclose(w, jnp.diag(p), atol=1e-6)


def _byol_grad_p(p, t):
  """d/dp of BYOL's 2 - 2 cos(p, t), by hand: -2 (t/|t| - cos p/|p|) / |p|."""
  cos = p @ t / (np.linalg.norm(p) * np.linalg.norm(t))
  return -2.0 * (t / np.linalg.norm(t) - cos * p / np.linalg.norm(p)) / np.linalg.norm(p)


def test_isoloss_sends_dl_dp_to_the_predictor_input_and_keeps_the_predictors_gradient():
  """One example, d = 3, a non-symmetric W_p: the loss's value is BYOL's; z gets dL/dp (not W_p^T dL/dp); W_p
  gets its usual gradient dL/dp z^T; both against the hand computation."""
  w = np.array([[1.0, 0.3, 0.0], [-0.2, 0.5, 0.1], [0.0, 0.4, 2.0]], np.float32)
  z1, z2 = np.array([[0.5, -1.0, 0.3]], np.float32), np.array([[0.2, 0.8, -0.6]], np.float32)
  t1, t2 = np.array([[1.0, 0.1, -0.4]], np.float32), np.array([[-0.3, 0.9, 0.2]], np.float32)

  def loss(z, w, isoloss):
    p = (jax.lax.stop_gradient(z) if isoloss else z) @ w.T
    return losses.ssl_loss(p[:1], p[1:], t1, t2, z, 'byol', True, isoloss)

  z = jnp.concatenate([z1, z2])
  g1 = _byol_grad_p(w @ z1[0], t2[0])  # p1 predicts the other view's target
  g2 = _byol_grad_p(w @ z2[0], t1[0])
  value, (grad_z, grad_w) = jax.value_and_grad(loss, (0, 1))(z, jnp.asarray(w), True)
  plain_value, (plain_z, plain_w) = jax.value_and_grad(loss, (0, 1))(z, jnp.asarray(w), False)
  assert value == pytest.approx(float(plain_value), abs=1e-6)
  np.testing.assert_allclose(grad_z, np.stack([g1, g2]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(plain_z, np.stack([w.T @ g1, w.T @ g2]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_w, np.outer(g1, z1[0]) + np.outer(g2, z2[0]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_w, plain_w, rtol=1e-5, atol=1e-6)
