"""Eigenmode ODEs (Eqns 11-16): closed forms, fixed points, collapse vs weight decay, vmap, config checks."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from theory import config as config_lib
from theory import ode


def _integrate(p0, s0, tau0, t_max, n=201, **params):
  t = jnp.linspace(0.0, t_max, n)
  y = ode.integrate(ode.as_state(np.atleast_1d(p0), s0, tau0), t, ode.ModeParams(**params))
  return np.asarray(t), jax.tree_util.tree_map(np.asarray, y)


def test_invariant_eqn14_holds_with_ema_and_weight_decay():
  """s_j(t) = p_j(t)^2/alpha_p + exp(-2 eta t) c_j for any tau(t) (here tau rises from 0.3 by EMA)."""
  p0, s0 = np.array([0.05, 0.3, 0.7, -0.2]), np.array([0.2, 0.5, 0.4, 0.3])
  alpha_p, eta = 1.7, 0.04
  t, y = _integrate(p0, s0, 0.3, 15.0, alpha_p=alpha_p, eta=eta, beta=0.5, sigma2=0.2)
  c = ode.invariant_c(p0, s0, alpha_p)
  pred = ode.invariant_s(y.p, t[:, None], c, alpha_p, eta)
  assert np.max(np.abs(y.s - s0)) > 0.1  # the trajectory actually moves
  np.testing.assert_allclose(y.s, pred, atol=2e-5)


def test_fixed_points_where_formula_puts_them():
  tau, eta, sigma2 = 1.0, 0.1, 0.2
  lo, hi = ode.fixed_points(tau, eta, sigma2)
  # closed form vs. the roots of Eqn 16: p^2 (tau - (1+s2) p) - eta p = 0  <=>  (1+s2) p^2 - tau p + eta = 0
  roots = np.sort(np.roots([1 + sigma2, -tau, eta]).real)
  np.testing.assert_allclose([lo, hi], roots, rtol=1e-12)
  np.testing.assert_allclose(ode.parabola_rhs(np.array([0.0, lo, hi]), tau, eta, sigma2), 0.0, atol=1e-12)
  # (p*, p*^2/alpha_p) is a fixed point of the full 2-D flow (tau frozen).
  alpha_p = 2.0
  prm = ode.ModeParams(alpha_p, eta, 0.0, sigma2, 1.0)
  d = ode.rhs(ode.as_state(jnp.array([lo, hi]), jnp.array([lo, hi]) ** 2 / alpha_p, 1.0), 0.0, prm)
  np.testing.assert_allclose(np.asarray(d.p), 0.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(d.s), 0.0, atol=1e-6)
  # Stability: on the parabola, p*_- +/- delta go to p*_+ and to 0; near p*_+ stays there.
  p0 = np.array([lo - 0.01, lo + 0.01, hi - 0.1, hi + 0.1])
  _, y = _integrate(p0, p0 ** 2 / alpha_p, 1.0, 400.0, alpha_p=alpha_p, eta=eta, sigma2=sigma2, simsiam=1.0)
  np.testing.assert_allclose(y.p[-1, 1:], hi, atol=1e-3)
  assert abs(y.p[-1, 0]) < 1e-3 and y.s[-1, 0] < 1e-5
  # no fixed point above eta_c
  assert np.all(np.isnan(ode.fixed_points(1.0, ode.critical_eta(1.0, 0.2) * 1.01, 0.2)))


def test_collapse_above_critical_eta_and_survival_below():
  """Obs#5 over a vmapped grid: eta = 1.05 eta_c kills every mode (even p0 = p*_+ of eta_c), 0.9 eta_c keeps
  the modes that start above p*_-, which converge to p*_+."""
  sigma2 = 0.3
  eta_c = ode.critical_eta(1.0, sigma2)
  np.testing.assert_allclose(eta_c, 1.0 / (4 * 1.3))
  p0 = jnp.array([0.3, 0.38, 0.5, 0.8])
  etas = jnp.array([0.9 * eta_c, 1.05 * eta_c])
  g = etas.shape[0]
  params = ode.ModeParams(jnp.ones(g), etas, jnp.zeros(g), jnp.full(g, sigma2), jnp.ones(g))
  y = ode.integrate_grid(ode.as_state(p0, p0 ** 2, 1.0), jnp.linspace(0.0, 600.0, 3), params)
  s_end = np.asarray(y.s[:, -1])
  lo, hi = ode.fixed_points(1.0, 0.9 * eta_c, sigma2)
  assert lo < 0.3 and hi > 0.5  # all p0 of the grid start above p*_- at 0.9 eta_c
  np.testing.assert_allclose(np.asarray(y.p[0, -1]), hi, atol=2e-3)
  assert np.all(s_end[0] > 0.1)
  assert np.all(s_end[1] < 1e-4), s_end[1]
  # and below eta_c, a start under p*_- on the parabola collapses
  _, y2 = _integrate(lo - 0.02, (lo - 0.02) ** 2, 1.0, 600.0, eta=0.9 * eta_c, sigma2=sigma2, simsiam=1.0)
  assert y2.s[-1, 0] < 1e-5
  assert bool(ode.in_collapse_basin(np.array(lo - 0.02), 1.0, 0.9 * eta_c, sigma2))


def test_eta_zero_end_point_and_sufficient_condition():
  """eta = 0, tau fixed: p -> tau/(1+sigma2) and s(inf) = s0 + (p_inf^2 - p0^2)/alpha_p; s0 > p0^2/alpha_p
  never collapses; with alpha_p large, s barely grows (Obs#2)."""
  p0, s0, alpha_p, sigma2 = np.array([0.1, 0.5, 1.2]), np.array([0.2, 0.05, 0.3]), 1.5, 0.25
  _, y = _integrate(p0, s0, 1.0, 200.0, alpha_p=alpha_p, sigma2=sigma2, simsiam=1.0)
  p_inf, s_inf = ode.eta_zero_steady_state(p0, s0, 1.0, alpha_p, sigma2)
  assert s_inf[0] > 0 and s_inf[1] > 0 and s_inf[2] < 0  # mode 2 starts with s0 < p0^2/alpha_p ...
  np.testing.assert_allclose(y.p[-1, :2], p_inf[:2], atol=1e-4)
  np.testing.assert_allclose(y.s[-1, :2], s_inf[:2], atol=1e-4)
  assert y.s[-1, 2] < 1e-4 and y.p[-1, 2] > p_inf[2]  # ... and collapses: s -> 0, p freezes above p_inf
  _, y_big = _integrate(0.1, 0.2, 1.0, 200.0, alpha_p=100.0, simsiam=1.0)
  assert y_big.s[-1, 0] - 0.2 < 0.011  # (1 - 0.01)/100


def test_simsiam_freezes_tau_and_ema_drives_tau_to_one():
  _, y = _integrate([0.3, 0.6], [0.5, 0.5], 1.0, 5.0, eta=0.01, simsiam=1.0)
  np.testing.assert_array_equal(y.tau, 1.0)
  _, y = _integrate([0.3, 0.6], [0.5, 0.5], 0.0, 60.0, eta=0.01, beta=0.5)
  assert np.all(y.tau[5] < 0.9)
  np.testing.assert_allclose(y.tau[-1], 1.0, atol=1e-2)


def test_integrate_grid_matches_single_runs_and_euler():
  y0 = ode.as_state(jnp.array([0.1, 0.6]), jnp.array([0.3, 0.2]), 0.5)
  t = jnp.linspace(0.0, 5.0, 6)
  grid = ode.ModeParams(jnp.array([1.0, 2.0, 0.5]), jnp.array([0.0, 0.02, 0.1]), jnp.array([1.0, 0.3, 2.0]),
                        jnp.array([0.0, 0.1, 0.5]), jnp.zeros(3))
  ys = ode.integrate_grid(y0, t, grid)
  assert ys.p.shape == (3, 6, 2)
  for g in range(3):
    one = ode.integrate(y0, t, jax.tree_util.tree_map(lambda a: a[g], grid))
    np.testing.assert_allclose(ys.s[g], one.s, rtol=1e-5)
  eu = ode.euler(y0, 1e-3, 5000, jax.tree_util.tree_map(lambda a: a[1], grid), record_every=1000)
  np.testing.assert_allclose(eu.s, ys.s[1], rtol=5e-3)


def test_alignment_condition_eqn17_is_k_positive():
  rng = np.random.default_rng(0)
  p, s, tau = rng.uniform(-1, 2, 500), rng.uniform(0, 2, 500), rng.uniform(0, 1, 500)
  alpha_p, eta, sigma2 = 1.3, 0.05, 0.2
  k = (1 + sigma2) * (alpha_p / 2 * s + p ** 2 - tau / (1 + sigma2) * p) + 1.5 * eta
  np.testing.assert_array_equal(ode.alignment_stable(p, s, tau, alpha_p, eta, sigma2), k > 0)


# ----------------------------------------------------------------------------------------- config


def _cfg(**kw):
  c = config_lib.base_config()
  c.update(kw)
  return c


def test_config_broadcasts_single_values_and_tuples():
  out = config_lib.validate(_cfg(num_modes=3, p0=(0.2,), s0=(0.1, 0.2, 0.3), tau0=(0.5,)))
  np.testing.assert_array_equal(out['p0'], [0.2, 0.2, 0.2])
  np.testing.assert_array_equal(out['s0'], [0.1, 0.2, 0.3])
  np.testing.assert_array_equal(out['tau0'], [0.5] * 3)
  assert out['num_steps'] == 1000
  np.testing.assert_array_equal(config_lib.per_mode('p0', 0.3, 2), [0.3, 0.3])


@pytest.mark.parametrize('kw, match', [
    (dict(sigma2=-0.1), 'sigma2'),
    (dict(beta=-1.0), 'beta'),
    (dict(eta=-0.01), 'eta'),
    (dict(alpha_p=0.0), 'alpha_p'),
    (dict(num_modes=3, p0=(0.1, 0.2)), 'p0 has 2 values but num_modes=3'),
    (dict(num_modes=2, p0=(0.1,), s0=(0.1, 0.2, 0.3)), 's0 has 3 values'),
    (dict(s0=(-1.0,)), 's0 must be >= 0'),
    (dict(simsiam=True, tau0=(0.5,)), 'simsiam'),
])
def test_config_rejects_bad_parameters(kw, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(_cfg(**kw))


def test_config_rejects_bad_sim_fields():
  c = _cfg()
  c.sim.predictor = 'mlp'
  with pytest.raises(ValueError, match='sim.predictor'):
    config_lib.validate(c)
  c = _cfg()
  c.sim.x_eigenvalues = (1.0, 2.0)
  with pytest.raises(ValueError, match='x_eigenvalues'):
    config_lib.validate(c)
  assert isinstance(c, ml_collections.ConfigDict)
