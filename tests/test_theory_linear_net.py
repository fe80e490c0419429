"""The linear network (Eqns 2-4): Theorems 1-3, the reduction to the eigenmode ODE, ODE-simulation agreement."""
import jax
import jax.numpy as jnp
import numpy as np

import byol_jax.spectral
from theory import compare
from theory import config as config_lib
from theory import linear_net as ln
from theory import ode


def _spd(key, n, lo=0.3, hi=2.0):
  u = ln.random_orthogonal(key, n)
  return (u * jnp.linspace(lo, hi, n)) @ u.T


def test_matrix_flow_matches_autodiff_of_population_loss():
  k = jax.random.split(jax.random.PRNGKey(0), 5)
  x, xp = _spd(k[0], 4), 0.3 * _spd(k[1], 4)
  net = ln.Net(jax.random.normal(k[2], (3, 4)), jax.random.normal(k[3], (3, 4)), jax.random.normal(k[4], (3, 3)))
  prm = ln.FlowParams(alpha_p=1.0, eta=0.0, beta=1.0)
  d = ln.flow_rhs(net, 0.0, prm, x, xp)
  g_p, g_w = jax.grad(lambda wp, w: ln.population_loss(wp, w, jax.lax.stop_gradient(net.w_a), x, xp),
                      argnums=(0, 1))(net.w_p, net.w)
  np.testing.assert_allclose(d.w_p, -g_p, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(d.w, -g_w, rtol=1e-4, atol=1e-4)
  # the sampled loss is an unbiased estimate of the population loss
  kb = jax.random.split(jax.random.PRNGKey(1), 3)
  b = 200_000
  xb = jax.random.normal(kb[0], (b, 4)) @ jnp.linalg.cholesky(x).T
  l_half = jnp.linalg.cholesky(xp).T
  x1 = xb + jax.random.normal(kb[1], (b, 4)) @ l_half
  x2 = xb + jax.random.normal(kb[2], (b, 4)) @ l_half
  np.testing.assert_allclose(ln.sampled_loss(net.w_p, net.w, net.w_a, x1, x2),
                             ln.population_loss(net.w_p, net.w, net.w_a, x, xp), rtol=2e-2)


def test_matrix_flow_reduces_to_eigenmode_odes_when_aligned():
  """With X = I, X' = sigma2 I and an aligned start, projecting Eqns 2-4 onto U gives Eqns 11-13 exactly."""
  p0, s0, tau0 = jnp.array([0.1, 0.5, 0.9]), jnp.array([0.4, 0.2, 1.3]), jnp.array([0.3, 0.6, 1.0])
  alpha_p, eta, beta, sigma2 = 1.4, 0.03, 0.7, 0.25
  x, xp = ln.isotropic(5, sigma2)
  net, u = ln.aligned_init(jax.random.PRNGKey(2), p0, s0, tau0, n1=5)
  d = ln.flow_rhs(net, 0.0, ln.FlowParams(alpha_p, eta, beta), x, xp)
  w, w_a, w_p = net
  ds = jnp.diag(u.T @ (d.w @ w.T + w @ d.w.T) @ u)
  dp = jnp.diag(u.T @ d.w_p @ u)
  # tau = (u^T W_a W^T u) / s  =>  dtau = (u^T (dW_a W^T + W_a dW^T) u - tau ds) / s
  dtau = (jnp.diag(u.T @ (d.w_a @ w.T + w_a @ d.w.T) @ u) - tau0 * ds) / s0
  ref = ode.rhs(ode.ModeState(p0, s0, tau0), 0.0, ode.ModeParams(alpha_p, eta, beta, sigma2))
  np.testing.assert_allclose(dp, ref.p, atol=1e-5)
  np.testing.assert_allclose(ds, ref.s, atol=1e-5)
  np.testing.assert_allclose(dtau, ref.tau, atol=1e-5)
  m = ln.mode_metrics(net, x, u)
  np.testing.assert_allclose(m['s'], s0, rtol=1e-5)
  np.testing.assert_allclose(m['p'], p0, rtol=1e-5)
  np.testing.assert_allclose(m['tau'], tau0, rtol=1e-5)


def test_theorem1_balance_is_conserved():
  """Thm 1, general X, X', unaligned start, gradient-trained (asymmetric) W_p, EMA target:
  W W^T - W_p^T W_p / alpha_p is constant when eta = 0, and decays as exp(-2 eta t) when eta > 0."""
  k = jax.random.split(jax.random.PRNGKey(3), 4)
  x, xp = _spd(k[0], 6), 0.2 * _spd(k[1], 6)
  net0 = ln.random_init(k[2], 6, 4, scale_w=1.0, scale_p=0.5)
  net0 = net0._replace(w_a=0.5 * net0.w + 0.3 * jax.random.normal(k[3], net0.w.shape))
  t = jnp.linspace(0.0, 4.0, 9)
  alpha_p = 1.5
  balance = lambda n: n.w @ jnp.swapaxes(n.w, -1, -2) - jnp.swapaxes(n.w_p, -1, -2) @ n.w_p / alpha_p
  for eta in (0.0, 0.1):
    traj = ln.integrate_flow(net0, t, ln.FlowParams(alpha_p, eta, 0.8), x, xp)
    b = balance(traj)
    moved = float(jnp.max(jnp.abs(traj.w[-1] @ traj.w[-1].T - traj.w[0] @ traj.w[0].T)))
    assert moved > 0.3  # W W^T itself changes a lot ...
    expected = jnp.exp(-2 * eta * t)[:, None, None] * b[0]
    np.testing.assert_allclose(b, expected, atol=2e-5)  # ... the balance does not


def test_theorem2_no_stop_gradient_collapses():
  """W_a = W with the gradient through the target: W -> 0 (Thm 2), even with eta = 0; with stop-gradient the
  same start does not collapse."""
  x, xp = ln.isotropic(4, 0.2)
  net0, _ = ln.aligned_init(jax.random.PRNGKey(4), [0.5, 0.7, 0.9, 1.1], [1.0, 0.8, 0.6, 0.5], 1.0)
  kw = dict(num_steps=3000, lr=0.01, x=x, x_prime=xp, predictor='linear', target='online', record_every=300)
  _, m_nosg, _ = ln.train(net0, jax.random.PRNGKey(0), stop_grad=False, **kw)
  _, m_sg, _ = ln.train(net0, jax.random.PRNGKey(0), stop_grad=True, **kw)
  assert float(m_nosg['w_norm'][-1]) < 0.02 * float(m_nosg['w_norm'][0])
  assert float(m_sg['w_norm'][-1]) > 0.9 * float(m_sg['w_norm'][0])
  # and the Thm 2 rhs: d vec(W)/dt = -H vec(W) with H = X' (x) (W_p^T W_p + I) + X (x) Wt^T Wt + eta I
  k = jax.random.split(jax.random.PRNGKey(5), 4)
  xg, xpg = _spd(k[0], 3), 0.4 * _spd(k[1], 3)
  w, w_p, eta = jax.random.normal(k[2], (2, 3)), jax.random.normal(k[3], (2, 2)), 0.07
  wt = w_p - jnp.eye(2)
  h = jnp.kron(xpg, w_p.T @ w_p + jnp.eye(2)) + jnp.kron(xg, wt.T @ wt) + eta * jnp.eye(6)
  vec = lambda a: a.T.reshape(-1)  # column-major vec
  np.testing.assert_allclose(vec(ln.no_stopgrad_rhs(w, w_p, xg, xpg, eta)), -h @ vec(w), rtol=1e-4, atol=1e-5)
  # No predictor (W_p = I) with stop-gradient: dW/dt = -(X' + eta I) W  -> W -> 0.
  d = ln.flow_rhs(ln.Net(w, w, jnp.eye(2)), 0.0, ln.FlowParams(1.0, eta, 1.0), xg, xpg, simsiam=True)
  np.testing.assert_allclose(d.w, -w @ (xpg + eta * jnp.eye(3)), rtol=1e-4, atol=1e-5)


def test_theorem3_commutator_decays_when_k_positive_definite():
  """Symmetric W_p, SimSiam (tau = 1), X = I: ||[F, W_p]|| <= exp(-2 lambda_0 t) ||[F(0), W_p(0)]|| with
  lambda_0 = inf_t lambda_min(K(t)) > 0 (eta = 0.2 makes 1.5 eta > tau^2 / (4(1+sigma2)), so K > 0)."""
  n, sigma2, alpha_p, eta = 4, 0.0, 1.0, 0.2
  x, xp = ln.isotropic(n, sigma2)
  net0 = ln.random_init(jax.random.PRNGKey(6), n, n, scale_w=1.5, scale_p=1.0)
  net0 = net0._replace(w_p=ln.symmetrize(net0.w_p))
  t = jnp.linspace(0.0, 5.0, 26)
  tr = ln.integrate_flow(net0, t, ln.FlowParams(alpha_p, eta, 1.0), x, xp, symmetric=True, simsiam=True)
  f = tr.w @ jnp.swapaxes(tr.w, 1, 2)
  comm = jnp.linalg.norm(f @ tr.w_p - tr.w_p @ f, axis=(1, 2))
  k = (1 + sigma2) * (alpha_p / 2 * f + tr.w_p @ tr.w_p - tr.w_p / (1 + sigma2)) + 1.5 * eta * jnp.eye(n)
  lam0 = float(jnp.min(jnp.linalg.eigvalsh(k)))
  assert lam0 > 0.01
  assert float(comm[0]) > 0.1
  bound = jnp.exp(-2 * lam0 * t) * comm[0]
  assert np.all(np.asarray(comm) <= np.asarray(bound) * (1 + 1e-4) + 1e-6)
  assert float(comm[-1]) < 0.05 * float(comm[0])
  np.testing.assert_allclose(tr.w_p[-1], tr.w_p[-1].T, atol=1e-6)


def _iso_config(**kw):
  c = config_lib.base_config()
  c.update(dict(alpha_p=1.0, eta=0.05, beta=0.5, sigma2=0.2, t_max=6.0, num_modes=4,
                p0=(0.02, 0.2, 0.5, 0.8), s0=(0.0004, 0.2, 0.5, 1.0), tau0=(0.6,)))
  c.sim.update(kw)
  return c


def test_ode_and_simulation_agree_where_assumptions_hold():
  """A1-A3, aligned start, population gradient: the simulation is forward Euler of the ODE, so the error is
  O(lr). Justified tolerance: relative error < 20 * lr (measured ~1.5 lr), and 10x smaller lr gives ~10x
  smaller error (first order)."""
  errs = {}
  for lr in (1e-2, 1e-3):
    c = _iso_config(lr=lr, record_every=int(round(0.2 / lr)))
    out = compare.side_by_side(c, config_lib.validate(c))
    errs[lr] = out['agreement']['max_rel_err']
    assert errs[lr] < 20 * lr, (lr, out['agreement'])
  ratio = errs[1e-2] / errs[1e-3]
  assert 5 < ratio < 20, errs
  # the ODE grew modes 1-3 and collapsed mode 0, so the comparison is not trivial
  s = out['ode']['s']
  assert s[-1, 0] < 0.8 * s[0, 0] and np.all(s[-1, 1:3] > 1.2 * s[0, 1:3])


def test_sampled_minibatches_follow_the_ode_within_noise():
  c = _iso_config(lr=0.01, batch_size=256, record_every=20)
  c.t_max = 4.0
  out = compare.side_by_side(c, config_lib.validate(c))
  ag = out['agreement']
  # noise per coordinate ~ sqrt(lr / B) per unit time: a few percent over t = 4, on p, s and tau
  assert ag['median_rel_err_s'] < 0.1 and ag['max_rel_err_p'] < 0.3, ag
  assert ag['max_rel_err'] > 1e-3  # genuinely noisy (not the population path)


def test_agreement_breaks_outside_assumptions():
  """Non-isotropic X, a large lr, or an unaligned start: the simulation leaves the ODE."""
  base = _iso_config(lr=0.01, record_every=20)
  ok = compare.side_by_side(base, config_lib.validate(base))['agreement']['max_rel_err']
  noniso = _iso_config(lr=0.01, record_every=20, input_dim=6, x_eigenvalues=(3.0, 1.5, 1.0, 0.7, 0.4, 0.2))
  bad_x = compare.side_by_side(noniso, config_lib.validate(noniso))['agreement']['max_rel_err']
  big = _iso_config(lr=0.5, record_every=1)
  bad_lr = compare.side_by_side(big, config_lib.validate(big))['agreement']['max_rel_err']
  rnd = _iso_config(lr=0.01, record_every=20, init='random', init_scale_p=0.8, seed=1)
  rnd.eta = 0.0
  out = compare.side_by_side(rnd, config_lib.validate(rnd))
  bad_align = out['agreement']['max_rel_err']
  assert ok < 0.05
  # measured: ok ~1.5e-3, bad_x ~0.5, bad_lr ~0.16, bad_align ~0.12
  assert bad_x > 0.2 and bad_lr > 0.1 and bad_align > 0.08, (ok, bad_x, bad_lr, bad_align)
  assert min(bad_x, bad_lr, bad_align) > 20 * ok
  assert out['sim']['commutator_rel'][0] > 0.1  # the random start is indeed unaligned


def test_directpred_predictor_is_byol_jax_one():
  assert ln.directpred_predictor is byol_jax.spectral.directpred_predictor
  x, xp = ln.isotropic(4, 0.1)
  net0 = ln.random_init(jax.random.PRNGKey(7), 4, 4)
  _, m, net = ln.train(net0, jax.random.PRNGKey(1), num_steps=200, lr=0.05, x=x, x_prime=xp, eta=0.01,
                       beta=2.0, predictor='directpred', directpred_eps=0.1, directpred_rho=0.3,
                       batch_size=64, record_every=50)
  # W_p = U diag(sqrt(s/s_max) + eps) U^T: symmetric, top eigenvalue 1 + eps, aligned with F (commutes).
  np.testing.assert_allclose(net.w_p, net.w_p.T, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.eigvalsh(net.w_p)[-1], 1.1, rtol=1e-4)
  assert float(m['asymmetry'][-1]) < 1e-5
  assert float(m['commutator_rel'][-1]) < 0.2


def test_isoloss_takes_the_predictor_out_of_the_online_gradient():
  """IsoLoss on the linear network: the loss and W_p's gradient unchanged; W's gradient is dJ/dM (M = W_p W), which
  the ordinary gradient W_p^T dJ/dM carries times W_p^T: here dJ/dM = M (X + X') - W_a X, by hand."""
  k = jax.random.split(jax.random.PRNGKey(2), 5)
  x, xp = _spd(k[0], 4), 0.3 * _spd(k[1], 4)
  w, w_a, w_p = jax.random.normal(k[2], (3, 4)), jax.random.normal(k[3], (3, 4)), jax.random.normal(k[4], (3, 3))

  def loss(wp, ww, iso):
    if iso:
      wp, ww = ln.isoloss_weights(wp, ww)
    return ln.population_loss(wp, ww, jax.lax.stop_gradient(w_a), x, xp)

  (g_p, g_w), (i_p, i_w) = (jax.grad(loss, argnums=(0, 1))(w_p, w, iso) for iso in (False, True))
  np.testing.assert_allclose(loss(w_p, w, True), loss(w_p, w, False), rtol=1e-6)
  np.testing.assert_allclose(i_p, g_p, rtol=1e-5, atol=1e-5)
  d_m = w_p @ w @ (x + xp) - w_a @ x
  np.testing.assert_allclose(i_w, d_m, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_w, w_p.T @ d_m, rtol=1e-4, atol=1e-4)
