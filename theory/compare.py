"""ODE (Eqns 11-13) beside the simulated linear network (Eqns 2-4, discrete), from the same start.

`run_ode` and `run_sim` build both from a validated config; `agreement` measures how closely the
simulated p_j, s_j, tau_j follow the ODE over time.

Why they should agree, and how closely: with X = I, X' = sigma2 I (A2), a symmetric predictor (A3),
W_a = tau W per mode (A1) and an aligned start (F and W_p diagonal in one basis U), the matrix flow
stays diagonal in U and reduces *exactly* to Eqns 11-13 (substitute W = U diag(sqrt s) V^T into Eqns
2-4). The population-gradient simulation is then forward Euler of that ODE with step alpha (t = step *
alpha), whose global error is O(alpha): |y_sim - y_ode| <~ alpha/2 * t * max|y''| ~ a few alpha in
relative terms over t ~ O(10). With alpha = 1e-3 the relative error stays below ~1%, and it shrinks
linearly with alpha (tests check both). Sampled minibatches add noise of relative size ~ sqrt(alpha/B)
per unit time. Outside those assumptions (non-isotropic X, large alpha, unaligned start) the error grows.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory import linear_net
from theory import ode


def params_from_config(config) -> ode.ModeParams:
  return ode.ModeParams(alpha_p=float(config.alpha_p), eta=float(config.eta), beta=float(config.beta),
                        sigma2=float(config.sigma2), simsiam=1.0 if config.simsiam else 0.0)


def _dtype(config):
  return jnp.float64 if config.x64 else jnp.float32


def run_ode(config, p0, s0, tau0, t=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Integrate Eqns 11-13 at times t (default linspace(0, t_max, num_points)). Returns (t, {p, s, tau})."""
  dtype = _dtype(config)
  if t is None:
    t = np.linspace(0.0, config.t_max, config.num_points)
  state0 = ode.ModeState(*(jnp.asarray(v, dtype) for v in (p0, s0, tau0)))
  fn = jax.jit(lambda y0, tt, prm: ode.integrate(y0, tt, prm, config.rtol, config.atol))
  params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), params_from_config(config))
  ys = fn(state0, jnp.asarray(t, dtype), params)
  return np.asarray(t), {k: np.asarray(v) for k, v in ys._asdict().items()}


def sim_data(config, resolved) -> tuple[jax.Array, jax.Array]:
  dtype = _dtype(config)
  n1 = resolved['input_dim']
  x = jnp.diag(jnp.asarray(resolved['x_eigenvalues'], dtype))
  return x, config.sigma2 * jnp.eye(n1, dtype=dtype)


def run_sim(config, resolved) -> dict[str, Any]:
  """Discrete training of the linear network as the config's `sim` block says.

  Returns {'t': [R], 'metrics': {name: [R, ...]}, 'p0','s0','tau0': the measured start per mode}.
  An aligned start reproduces the config's p0/s0/tau0; a random start defines them (F's eigenbasis).
  """
  s = config.sim
  dtype = _dtype(config)
  x, x_prime = sim_data(config, resolved)
  key = jax.random.PRNGKey(s.seed)
  k_init, k_train = jax.random.split(key)
  if s.init == 'aligned':
    net0, basis = linear_net.aligned_init(k_init, resolved['p0'], resolved['s0'], resolved['tau0'],
                                          resolved['input_dim'], x, dtype)
  else:
    net0 = linear_net.random_init(k_init, resolved['input_dim'], config.num_modes,
                                  scale_w=float(np.sqrt(np.mean(resolved['s0']))),
                                  scale_p=s.init_scale_p, dtype=dtype)
    if s.predictor == 'symmetric':
      net0 = net0._replace(w_p=linear_net.symmetrize(net0.w_p))
    basis = None
  t, metrics, _ = linear_net.train(
      net0, k_train, num_steps=resolved['num_steps'], lr=s.lr, alpha_p=config.alpha_p, eta=config.eta,
      beta=config.beta, x=x, x_prime=x_prime, batch_size=s.batch_size or None, predictor=s.predictor,
      stop_grad=s.stop_grad, target='online' if config.simsiam else 'ema',
      directpred_eps=s.directpred_eps, directpred_power=s.directpred_power,
      directpred_rho=s.directpred_rho, record_every=s.record_every, basis=basis)
  metrics = {k: np.asarray(v) for k, v in metrics.items()}
  return {'t': t, 'metrics': metrics, 'p0': metrics['p'][0], 's0': metrics['s'][0],
          'tau0': metrics['tau'][0]}


def relative_error(sim: np.ndarray, ref: np.ndarray, floor_frac: float = 1e-2) -> np.ndarray:
  """|sim - ref| / max(|ref|, floor), floor = floor_frac * max|ref| per mode (so that modes collapsing
  to 0 are judged on the scale they had, not on ratios of tiny numbers). Shape of the inputs."""
  scale = np.max(np.abs(ref), axis=0, keepdims=True)
  floor = np.maximum(floor_frac * scale, 1e-12)
  return np.abs(sim - ref) / np.maximum(np.abs(ref), floor)


def agreement(ode_traj: dict[str, np.ndarray], sim_metrics: dict[str, np.ndarray],
              floor_frac: float = 1e-2) -> dict[str, Any]:
  """Relative error of the simulated p, s, tau against the ODE at the same times.

  Returns per variable: `rel_err_<v>` [T] (max over modes), `max_rel_err_<v>` and `median_rel_err_<v>`
  (scalars over time and modes), and `max_rel_err` over all three.
  """
  out: dict[str, Any] = {}
  worst = 0.0
  for v in ('p', 's', 'tau'):
    err = relative_error(sim_metrics[v], ode_traj[v], floor_frac)
    err = np.where(np.isfinite(err), err, np.inf)  # a diverged run must not read as agreement
    out[f'rel_err_{v}'] = err.max(axis=1)
    out[f'max_rel_err_{v}'] = float(err.max())
    out[f'median_rel_err_{v}'] = float(np.median(err))
    worst = max(worst, float(err.max()))
  out['max_rel_err'] = worst
  return out


def side_by_side(config, resolved) -> dict[str, Any]:
  """Simulate, then integrate the ODE from the simulation's measured start at the simulation's times."""
  sim = run_sim(config, resolved)
  _, traj = run_ode(config, sim['p0'], sim['s0'], sim['tau0'], t=sim['t'])
  return {'t': sim['t'], 'ode': traj, 'sim': sim['metrics'],
          'agreement': agreement(traj, sim['metrics'])}
