"""The linear BYOL/SimSiam network itself: matrix gradient flow (paper Eqns 2-4) and discrete training.

Model: online f_1 = W x_1, target f_2a = W_a x_2, predictor W_p; loss J = 1/2 E||W_p f_1 - SG(f_2a)||^2.
Data: x_bar ~ N(0, X), two views x_i = x_bar + n_i with n_i ~ N(0, X'), independent. The population
loss is then (up to the 1/2)

  tr[(W_p W - W_a) X (W_p W - W_a)^T] + tr[W_p W X' W^T W_p^T] + tr[W_a X' W_a^T],

whose stop-gradient flow is Eqns 2-4 (`flow_rhs`). Discrete training (`train`) takes SGD steps with lr
alpha on the population loss (`batch_size=None`: the expected gradient, an Euler step of the flow) or on
sampled minibatches, with an EMA target, stop-gradient on or off, and a predictor that is `linear`
(gradient-trained), `symmetric` (gradient-trained, kept symmetric: assumption A3) or `directpred`
(set every step from the correlation of its input with `byol_jax.spectral.directpred_predictor`).

Discrete -> continuous (paper Sec. 4): predictor lr = alpha * alpha_p, alpha * beta = 1 - gamma_a,
weight decay eta_bar = alpha * eta, t = step * alpha.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.ode import odeint

from byol_jax.spectral import directpred_predictor, spectral_stats, symmetrize, update_correlation

PREDICTORS = ('linear', 'symmetric', 'directpred')
TARGETS = ('ema', 'online')  # 'online' is SimSiam: W_a = W.


class Net(NamedTuple):
  w: jax.Array    # [n2, n1] online weights W
  w_a: jax.Array  # [n2, n1] target weights W_a
  w_p: jax.Array  # [n2, n2] predictor W_p


class FlowParams(NamedTuple):
  alpha_p: float = 1.0
  eta: float = 0.0
  beta: float = 1.0


# ------------------------------------------------------------------------------------------ flow


def flow_rhs(net: Net, t, params: FlowParams, x: jax.Array, x_prime: jax.Array,
             symmetric: bool = False, simsiam: bool = False) -> Net:
  """Eqns 2-4 for general X, X' (stop-gradient, EMA target). `symmetric=True` symmetrises dW_p (A3);
  `simsiam=True` uses W_a = W (tau = 1, stop-gradient kept) and then dW_a = dW."""
  del t
  w, w_a, w_p = net
  if simsiam:
    w_a = w
  resid = -w_p @ w @ (x + x_prime) + w_a @ x   # -W_p W (X+X') + W_a X
  dw_p = params.alpha_p * resid @ w.T - params.eta * w_p
  if symmetric:
    dw_p = symmetrize(dw_p)
  dw = w_p.T @ resid - params.eta * w
  dw_a = dw if simsiam else params.beta * (w - w_a)
  return Net(dw, dw_a, dw_p)


def integrate_flow(net0: Net, t: jax.Array, params: FlowParams, x: jax.Array, x_prime: jax.Array,
                   symmetric: bool = False, simsiam: bool = False, rtol: float = 1e-7,
                   atol: float = 1e-9) -> Net:
  """Integrate Eqns 2-4 with odeint; returns a Net of arrays with a leading time axis [T, ...]."""
  if simsiam:
    net0 = net0._replace(w_a=net0.w)
  fn = lambda y, tt, prm, xx, xxp: flow_rhs(y, tt, prm, xx, xxp, symmetric, simsiam)
  return odeint(fn, net0, t, params, x, x_prime, rtol=rtol, atol=atol)


def population_loss(w_p, w, w_a, x, x_prime):
  """1/2 E||W_p W x_1 - W_a x_2||^2 under the Gaussian data model (no stop-gradient applied here)."""
  d = w_p @ w - w_a
  pw = w_p @ w
  return 0.5 * (jnp.trace(d @ x @ d.T) + jnp.trace(pw @ x_prime @ pw.T)
                + jnp.trace(w_a @ x_prime @ w_a.T))


def sampled_loss(w_p, w, w_a, x1, x2):
  """1/2 mean_b ||W_p W x1_b - W_a x2_b||^2 for views x1, x2 of shape [B, n1]."""
  return 0.5 * jnp.mean(jnp.sum((x1 @ w.T @ w_p.T - x2 @ w_a.T) ** 2, axis=-1))


def isoloss_weights(w_p, w):
  """(I, M) with M = W_p W in value, for the losses above in place of (W_p, W): IsoLoss (Halvagal, Laborieux &
  Zenke 2023; byol_jax/losses.py isotropic_term). W_p still gets dJ/dW_p, but W gets dJ/dM x^T itself instead of
  W_p^T dJ/dM x^T: the predictor's eigenvalue no longer multiplies each mode's gradient."""
  sw = jax.lax.stop_gradient(w)
  return jnp.eye(w_p.shape[0], dtype=w.dtype), w_p @ sw + (w - sw)


def no_stopgrad_rhs(w: jax.Array, w_p: jax.Array, x: jax.Array, x_prime: jax.Array,
                    eta: float) -> jax.Array:
  """Thm 2: dW/dt with W_a = W and the gradient flowing through the target (autodiff)."""
  g = jax.grad(lambda ww: population_loss(w_p, ww, ww, x, x_prime))(w)
  return -g - eta * w


# -------------------------------------------------------------------------------- data / inits


def isotropic(n1: int, sigma2: float, dtype=jnp.float32):
  """X = I, X' = sigma2 I (assumption A2)."""
  eye = jnp.eye(n1, dtype=dtype)
  return eye, sigma2 * eye


def random_orthogonal(key, n: int, dtype=jnp.float32) -> jax.Array:
  q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), dtype))
  return q * jnp.sign(jnp.diag(r))


def aligned_init(key, p0, s0, tau0, n1: int | None = None, x: jax.Array | None = None,
                 dtype=jnp.float32) -> tuple[Net, jax.Array]:
  """Matrices whose eigenmodes start at (p0, s0, tau0): F = W X W^T = U diag(s0) U^T, W_p = U diag(p0) U^T,
  W_a = U diag(tau0) U^T W (so A1 holds per mode). Returns (net, U) with U the shared basis [n2, n2].

  n2 = len(p0) modes; n1 >= n2 inputs (default n2). With X = I this is the aligned state that the
  eigenmode ODEs describe exactly.
  """
  p0, s0, tau0 = (jnp.asarray(v, dtype) for v in (p0, s0, tau0))
  n2 = p0.shape[0]
  n1 = n1 or n2
  k1, k2 = jax.random.split(key)
  u = random_orthogonal(k1, n2, dtype)
  v = random_orthogonal(k2, n1, dtype)[:, :n2]
  if x is None:
    x = jnp.eye(n1, dtype=dtype)
  # W = U diag(sqrt s0) V^T X^{-1/2} gives W X W^T = U diag(s0) U^T.
  evals, evecs = jnp.linalg.eigh(x)
  x_inv_half = (evecs / jnp.sqrt(evals)) @ evecs.T
  w = (u * jnp.sqrt(s0)) @ v.T @ x_inv_half
  w_p = (u * p0) @ u.T
  w_a = (u * tau0) @ u.T @ w
  return Net(w, w_a, w_p), u


def random_init(key, n1: int, n2: int, scale_w: float = 1.0, scale_p: float = 0.1,
                w_a_zero: bool = False, dtype=jnp.float32) -> Net:
  """Unaligned Gaussian init (entries N(0, scale^2 / fan_in)); W_a = W or 0."""
  k1, k2 = jax.random.split(key)
  w = scale_w * jax.random.normal(k1, (n2, n1), dtype) / np.sqrt(n1)
  w_p = scale_p * jax.random.normal(k2, (n2, n2), dtype) / np.sqrt(n2)
  return Net(w, jnp.zeros_like(w) if w_a_zero else w, w_p)


# ------------------------------------------------------------------------------------- metrics


def mode_metrics(net: Net, x: jax.Array, basis: jax.Array | None = None) -> dict[str, jax.Array]:
  """What the paper tracks, per mode and overall.

  With `basis=None` the modes are F's eigenvectors u_j sorted by descending s_j; with a fixed basis U
  (e.g. the one from `aligned_init`) mode j is always column j, which is how ODE modes are matched.
  s_j = u_j^T F u_j; p_j = u_j^T W_p u_j; tau_j = u_j^T W_a X W^T u_j / s_j (W_a = tau W along u_j).
  Also: `commutator` ||[F, W_p]||_F, `commutator_rel` (normalised, from spectral_stats), `asymmetry`
  ||W_p - W_p^T||_F / ||W_p||_F, `corr_wa_w` Pearson correlation of the entries of W_a and W, and the
  `alignment` cos(W_p u_j, u_j).
  """
  w, w_a, w_p = net
  f = w @ x @ w.T
  stats = spectral_stats(f, w_p)
  if basis is None:
    _, u = jnp.linalg.eigh(symmetrize(f))
    u = u[:, ::-1]
  else:
    u = basis
  s = jnp.sum(u * (f @ u), axis=0)
  p = jnp.sum(u * (w_p @ u), axis=0)
  cross = w_a @ x @ w.T
  tau = jnp.sum(u * (cross @ u), axis=0) / jnp.where(jnp.abs(s) > 1e-30, s, 1e-30)
  wp_u = w_p @ u
  cos = p / jnp.maximum(jnp.linalg.norm(wp_u, axis=0), 1e-30)
  a = (w_a - jnp.mean(w_a)).ravel()
  b = (w - jnp.mean(w)).ravel()
  corr = jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-30)
  return {
      's': s, 'p': p, 'tau': tau, 'alignment': cos,
      'f_eigenvalues': stats['corr_eigenvalues'],
      'commutator': jnp.linalg.norm(f @ w_p - w_p @ f),
      'commutator_rel': stats['commutator_norm'],
      'asymmetry': stats['asymmetry'],
      'corr_wa_w': corr,
      'w_norm': jnp.linalg.norm(w),
  }


# ------------------------------------------------------------------------------ discrete training


class TrainState(NamedTuple):
  net: Net
  corr: jax.Array   # DirectPred's running estimate of E[f f^T]
  count: jax.Array
  key: jax.Array


def train(net0: Net, key, *, num_steps: int, lr: float, alpha_p: float = 1.0, eta: float = 0.0,
          beta: float = 1.0, x: jax.Array, x_prime: jax.Array, batch_size: int | None = None,
          predictor: str = 'symmetric', stop_grad: bool = True, target: str = 'ema',
          directpred_eps: float = 0.0, directpred_power: float = 2.0, directpred_rho: float | None = 0.3,
          record_every: int = 10, basis: jax.Array | None = None, directpred_projection: float = 0.0,
          isoloss: bool = False):
  """Discrete training of the linear network; returns (times [R+1], metrics dict of [R+1, ...], final net).

  Per step, with lr alpha: W <- W - alpha (dJ/dW + eta W); W_p <- W_p - alpha alpha_p (dJ/dW_p + eta W_p)
  (symmetrised for `symmetric`; overwritten by DirectPred for `directpred`: `directpred_eps`, `_power` c,
  `_projection` as byol_jax.spectral.directpred_eigenvalues); W_a <- W_a + alpha beta (W - W_a)
  (`target='online'`: W_a = W, SimSiam). `stop_grad=False` lets the gradient flow into the target branch.
  `batch_size=None` uses the population loss (expected gradient); otherwise minibatches are sampled.
  `isoloss=True` trains W with IsoLoss's gradient (`isoloss_weights`). Time of record r is r * record_every * alpha. Jitted end to end (lax.scan).
  """
  if predictor not in PREDICTORS:
    raise ValueError(f'predictor must be one of {PREDICTORS}, got {predictor!r}')
  if target not in TARGETS:
    raise ValueError(f'target must be one of {TARGETS}, got {target!r}')
  n1 = net0.w.shape[1]
  x_half = jnp.linalg.cholesky(x + 1e-12 * jnp.eye(n1, dtype=x.dtype))
  xp_half = jnp.linalg.cholesky(x_prime + 1e-12 * jnp.eye(n1, dtype=x.dtype))

  def loss_fn(w_p, w, w_a, k):
    if target == 'online':
      w_a = w
    if stop_grad:
      w_a = jax.lax.stop_gradient(w_a)
    if isoloss:
      w_p, w = isoloss_weights(w_p, w)
    if batch_size is None:
      return population_loss(w_p, w, w_a, x, x_prime), x + x_prime
    k1, k2, k3 = jax.random.split(k, 3)
    xb = jax.random.normal(k1, (batch_size, n1), x.dtype) @ x_half.T
    x1 = xb + jax.random.normal(k2, (batch_size, n1), x.dtype) @ xp_half.T
    x2 = xb + jax.random.normal(k3, (batch_size, n1), x.dtype) @ xp_half.T
    views = jnp.concatenate([x1, x2])
    return sampled_loss(w_p, w, w_a, x1, x2), views.T @ views / views.shape[0]

  def step(state: TrainState, _):
    (w, w_a, w_p), corr, count, key = state
    key, k = jax.random.split(key)
    (_, in_corr), (g_p, g_w, g_a) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
        w_p, w, w_a, k)
    if predictor == 'directpred':
      # F_hat from the predictor input f = W x (both views), as the reference code does.
      corr = update_correlation(corr, w @ in_corr @ w.T, count, directpred_rho)
      new_w_p = directpred_predictor(corr, directpred_eps, directpred_power, projection=directpred_projection)
    else:
      if predictor == 'symmetric':
        g_p = symmetrize(g_p)
      new_w_p = w_p - lr * alpha_p * (g_p + eta * w_p)
    new_w = w - lr * (g_w + eta * w)
    if target == 'online':
      new_w_a = new_w
    elif stop_grad:
      new_w_a = w_a + lr * beta * (w - w_a)
    else:  # EMA target that also receives gradients (not in the paper; kept for completeness).
      new_w_a = w_a - lr * g_a + lr * beta * (w - w_a)
    return TrainState(Net(new_w, new_w_a, new_w_p), corr, count + 1, key), None

  def block(state, _):
    state, _ = jax.lax.scan(step, state, None, length=record_every)
    return state, mode_metrics(state.net, x, basis)

  @jax.jit
  def run(net, key):
    n2 = net.w.shape[0]
    net = net._replace(w_a=net.w) if target == 'online' else net
    state = TrainState(net, jnp.zeros((n2, n2), net.w.dtype), jnp.zeros((), jnp.int32), key)
    m0 = mode_metrics(net, x, basis)
    state, ms = jax.lax.scan(block, state, None, length=num_steps // record_every)
    ms = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), m0, ms)
    return ms, state.net

  ms, net = run(net0, key)
  times = np.arange(num_steps // record_every + 1) * record_every * lr
  return times, ms, net
