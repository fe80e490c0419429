"""Per-eigenmode dynamics of the linear BYOL/SimSiam model (paper Eqns 11-16) and their closed forms.

Each mode j carries p_j (eigenvalue of the predictor W_p), s_j (eigenvalue of F = W X W^T) and tau_j
(ratio of the target to the online weights along that mode, W_a = tau W). Parameters (paper symbols):

  alpha_p  predictor learning-rate ratio,   eta  weight decay,
  beta     EMA rate (alpha * beta = 1 - gamma_a),   sigma2  augmentation variance (X' = sigma2 I).

  dp/dt   = alpha_p s (tau - (1+sigma2) p) - eta p                         (Eqn 11)
  ds/dt   = 2 p s (tau - (1+sigma2) p) - 2 eta s                           (Eqn 12)
  dtau/dt = beta (1 - tau) - tau * ds/dt / (2 s)                           (Eqn 13)
          = beta (1 - tau) - tau (p (tau - (1+sigma2) p) - eta)   (no division by s)

SimSiam is tau == 1 (`simsiam=1.0`: dtau/dt is multiplied by 1 - simsiam). All functions are pure,
work on arrays of modes and can be `jax.vmap`-ped over parameter grids (`ModeParams` is a pytree).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.ode import odeint


class ModeParams(NamedTuple):
  """Parameters of Eqns 11-13. Leaves are scalars (or arrays, for `vmap` over a grid)."""
  alpha_p: jax.Array | float = 1.0
  eta: jax.Array | float = 0.0
  beta: jax.Array | float = 1.0
  sigma2: jax.Array | float = 0.0
  simsiam: jax.Array | float = 0.0  # 1.0: tau is frozen (SimSiam, W_a = W).


class ModeState(NamedTuple):
  p: jax.Array
  s: jax.Array
  tau: jax.Array


def growth(p, tau, eta, sigma2):
  """Delta_j = p (tau - (1+sigma2) p) - eta: ds/dt = 2 Delta s, so s grows iff Delta > 0."""
  return p * (tau - (1.0 + sigma2) * p) - eta


def rhs(state: ModeState, t, params: ModeParams) -> ModeState:
  """Right-hand side of Eqns 11-13 for all modes at once. `t` is unused (autonomous system)."""
  del t
  p, s, tau = state
  a = tau - (1.0 + params.sigma2) * p
  dp = params.alpha_p * s * a - params.eta * p
  ds = 2.0 * p * s * a - 2.0 * params.eta * s
  dtau = params.beta * (1.0 - tau) - tau * (p * a - params.eta)
  dtau = dtau * (1.0 - params.simsiam)
  return ModeState(dp, ds, dtau)


def as_state(p0, s0, tau0, num_modes: int | None = None, dtype=None) -> ModeState:
  """Broadcast initial values (scalars or per-mode sequences) to arrays of shape [num_modes]."""
  arrs = [jnp.asarray(v, dtype=dtype) for v in (p0, s0, tau0)]
  if dtype is None:
    dt = jnp.result_type(*arrs, jnp.float32)
    arrs = [a.astype(dt) for a in arrs]
  shape = jnp.broadcast_shapes(*(a.shape for a in arrs), (num_modes,) if num_modes else ())
  return ModeState(*(jnp.broadcast_to(a, shape) for a in arrs))


def integrate(state0: ModeState, t: jax.Array, params: ModeParams, rtol: float = 1e-6,
              atol: float = 1e-8) -> ModeState:
  """Integrate Eqns 11-13 with `jax.experimental.ode.odeint` (adaptive Dormand-Prince).

  Returns a ModeState of arrays [T, num_modes], evaluated at the times `t` (t[0] is the initial time).
  Differentiable, jit-able and vmap-able over `state0`/`params` (see `integrate_grid`).
  """
  return odeint(rhs, state0, t, params, rtol=rtol, atol=atol)


def integrate_grid(state0: ModeState, t: jax.Array, params: ModeParams, rtol: float = 1e-6,
                   atol: float = 1e-8, chunk_size: int | None = None) -> ModeState:
  """`integrate` vmapped over a leading grid axis of `params` (and of `state0` if it has one).

  Every leaf of `params` must have the same leading size G (use `jnp.broadcast_to`/`meshgrid`);
  `state0` leaves are [M] (shared) or [G, M]. Returns arrays [G, T, M].

  A vmapped adaptive solver steps every lane until the slowest one is done, so one huge batch pays for
  its hardest setting G times over and spills out of cache. `chunk_size` (dividing G) runs the vmapped
  solve on chunks in sequence with `lax.map`, still in one traced call; on a 2-core CPU 250 was ~3x faster
  than one 10,000-wide batch.
  """
  g = jax.tree_util.tree_leaves(params)[0].shape[0]
  state_axis = 0 if state0.p.ndim == 2 and state0.p.shape[0] == g else None
  fn = lambda s0, prm: integrate(s0, t, prm, rtol, atol)
  vfn = jax.vmap(fn, in_axes=(state_axis, 0))
  if not chunk_size or chunk_size >= g:
    return vfn(state0, params)
  if g % chunk_size:
    raise ValueError(f'chunk_size={chunk_size} must divide the grid size {g}')
  split = lambda a: a.reshape((g // chunk_size, chunk_size) + a.shape[1:])
  chunks = jax.tree_util.tree_map(split, params)
  if state_axis is None:
    out = jax.lax.map(lambda prm: vfn(state0, prm), chunks)
  else:
    out = jax.lax.map(lambda a: vfn(*a), (jax.tree_util.tree_map(split, state0), chunks))
  return jax.tree_util.tree_map(lambda a: a.reshape((g,) + a.shape[2:]), out)


def euler(state0: ModeState, dt: float, num_steps: int, params: ModeParams,
          record_every: int = 1) -> ModeState:
  """Forward-Euler Eqns 11-13 (what the paper's Fig. 5 does, dt = 0.01). Returns [num_steps // record_every + 1, M]."""

  def step(y, _):
    dy = rhs(y, 0.0, params)
    return jax.tree_util.tree_map(lambda a, b: a + dt * b, y, dy), None

  def block(y, _):
    y, _ = jax.lax.scan(step, y, None, length=record_every)
    return y, y

  _, ys = jax.lax.scan(block, state0, None, length=num_steps // record_every)
  return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), state0, ys)


# ----------------------------------------------------------------------------------- closed forms


def invariant_c(p, s, alpha_p):
  """c_j = s_j - p_j^2 / alpha_p (Eqn 14 at t = 0)."""
  return s - p ** 2 / alpha_p


def invariant_s(p, t, c, alpha_p, eta):
  """Eqn 14: s_j(t) = p_j(t)^2 / alpha_p + exp(-2 eta t) c_j (holds for any tau(t))."""
  return p ** 2 / alpha_p + jnp.exp(-2.0 * eta * t) * c


def critical_eta(tau=1.0, sigma2=0.0):
  """eta_c = tau^2 / (4 (1+sigma2)): above it every mode collapses (Obs#5)."""
  return tau ** 2 / (4.0 * (1.0 + sigma2))


def fixed_points(tau=1.0, eta=0.0, sigma2=0.0):
  """(p*_-, p*_+) = [tau -/+ sqrt(tau^2 - 4 eta (1+sigma2))] / (2 (1+sigma2)) of Eqn 16.

  p*_- is unstable (the edge of the collapse basin), p*_+ stable; p* = 0 is the third (stable) one.
  Both are NaN when eta > eta_c (no non-collapsed fixed point). Works with numpy or jax inputs.
  """
  xp = jnp if any(isinstance(v, jax.Array) for v in (tau, eta, sigma2)) else np
  disc = tau ** 2 - 4.0 * eta * (1.0 + sigma2)
  root = xp.sqrt(xp.where(disc >= 0, disc, xp.nan))
  den = 2.0 * (1.0 + sigma2)
  return (tau - root) / den, (tau + root) / den


def parabola_rhs(p, tau=1.0, eta=0.0, sigma2=0.0):
  """Eqn 16, dp/dt on the invariant parabola s = p^2/alpha_p: p^2 (tau - (1+sigma2) p) - eta p."""
  return p ** 2 * (tau - (1.0 + sigma2) * p) - eta * p


def in_collapse_basin(p, tau=1.0, eta=0.0, sigma2=0.0):
  """True where p < p*_- (for eta > eta_c: everywhere). Valid on the parabola (eta > 0, late times)."""
  lo, _ = fixed_points(tau, eta, sigma2)
  xp = jnp if isinstance(p, jax.Array) else np
  return xp.where(xp.isnan(lo), True, p < lo)


def eta_zero_steady_state(p0, s0, tau=1.0, alpha_p=1.0, sigma2=0.0):
  """With eta = 0 and fixed tau, the non-collapsed end point: p = tau/(1+sigma2), s = s0 + (p^2 - p0^2)/alpha_p.

  Returns (p_inf, s_inf); s_inf <= 0 means the mode collapses instead (s -> 0 with p frozen).
  """
  p_inf = tau / (1.0 + sigma2) + 0.0 * p0
  return p_inf, s0 + (p_inf ** 2 - p0 ** 2) / alpha_p


def alignment_stable(p, s, tau=1.0, alpha_p=1.0, eta=0.0, sigma2=0.0):
  """Eqn 17: Delta_j < (alpha_p (1+sigma2) s_j + eta) / 2, the per-mode condition for K > 0."""
  return growth(p, tau, eta, sigma2) < 0.5 * (alpha_p * (1.0 + sigma2) * s + eta)
