"""Validation of theory configs: clear ValueErrors, and per-mode broadcasting of p0 / s0 / tau0.

A config (see configs/theory/*.py) holds the paper's symbols alpha_p, eta, beta, sigma2, t_max,
num_modes, p0, s0, tau0 (each initial value a tuple: one number for all modes, or one per mode),
plus ODE settings and an optional `sim` block for the discrete linear-network simulation.
"""
from __future__ import annotations

import math
from typing import Any

import ml_collections
import numpy as np


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default; configs/theory/*.py start from this and change what they need."""
  c = ml_collections.ConfigDict()
  c.alpha_p = 1.0       # predictor lr ratio
  c.eta = 0.0           # weight decay
  c.beta = 1.0          # EMA rate (alpha * beta = 1 - gamma_a)
  c.sigma2 = 0.0        # augmentation variance, X' = sigma2 I
  c.simsiam = False     # tau == 1 (W_a = W)
  c.t_max = 10.0
  c.num_points = 201    # ODE output times, linspace(0, t_max)
  c.num_modes = 3
  # One value for all modes, or one per mode. A single number on the command line (--config.p0=0.1)
  # arrives as a 1-tuple.
  c.p0 = (0.05, 0.3, 0.6)
  c.s0 = (1.0,)
  c.tau0 = (1.0,)
  c.rtol = 1e-6
  c.atol = 1e-8
  c.x64 = False
  c.collapse_threshold = 1e-3   # a mode "collapsed" if s(t_max) < threshold * s(0)

  c.sim = ml_collections.ConfigDict()
  c.sim.enabled = True
  c.sim.lr = 0.01                # alpha; t = step * alpha
  c.sim.batch_size = 0           # 0: population (expected) gradient; > 0: sampled minibatches
  c.sim.predictor = 'symmetric'  # linear | symmetric | directpred
  c.sim.stop_grad = True
  c.sim.init = 'aligned'         # aligned (the ODE's regime) | random
  c.sim.input_dim = 0            # n1; 0: num_modes
  c.sim.x_eigenvalues = (1.0,)   # eigenvalues of X (1 for all: isotropic, A2); per input dim otherwise
  c.sim.record_every = 10
  c.sim.seed = 0
  c.sim.init_scale_p = 0.1       # random init only
  c.sim.directpred_eps = 0.1
  c.sim.directpred_power = 2.0
  c.sim.directpred_rho = 0.3
  return c


def _tuple(name: str, value: Any) -> tuple[float, ...]:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = (value,)
  try:
    out = tuple(float(v) for v in value)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{name} must be a number or a tuple of numbers, got {value!r}') from e
  if not out:
    raise ValueError(f'{name} is empty')
  if not all(math.isfinite(v) for v in out):
    raise ValueError(f'{name} must be finite, got {out}')
  return out


def per_mode(name: str, value: Any, num_modes: int) -> np.ndarray:
  """Broadcast a 1-tuple to num_modes values; a longer tuple must have exactly num_modes entries."""
  vals = _tuple(name, value)
  if len(vals) == 1:
    vals = vals * num_modes
  if len(vals) != num_modes:
    raise ValueError(f'{name} has {len(vals)} values but num_modes={num_modes}: give one value '
                     f'for all modes or exactly one per mode')
  return np.asarray(vals)


def validate(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Check a config and return the resolved values (per-mode arrays p0, s0, tau0, x_eigenvalues).

  Raises ValueError naming the bad field.
  """
  def check(cond, msg):
    if not cond:
      raise ValueError(msg)

  c = config
  for name in ('alpha_p', 'eta', 'beta', 'sigma2', 't_max'):
    v = c[name]
    check(isinstance(v, (int, float)) and math.isfinite(v), f'{name} must be a finite number, got {v!r}')
  check(c.alpha_p > 0, f'alpha_p must be > 0 (predictor lr ratio), got {c.alpha_p}')
  check(c.eta >= 0, f'eta (weight decay) must be >= 0, got {c.eta}')
  check(c.beta >= 0, f'beta (EMA rate) must be >= 0, got {c.beta}')
  check(c.sigma2 >= 0, f'sigma2 (augmentation variance) must be >= 0, got {c.sigma2}')
  check(c.t_max > 0, f't_max must be > 0, got {c.t_max}')
  check(isinstance(c.num_modes, int) and c.num_modes >= 1, f'num_modes must be an int >= 1, got {c.num_modes!r}')
  check(isinstance(c.num_points, int) and c.num_points >= 2, f'num_points must be an int >= 2, got {c.num_points!r}')
  out = dict(
      p0=per_mode('p0', c.p0, c.num_modes),
      s0=per_mode('s0', c.s0, c.num_modes),
      tau0=per_mode('tau0', c.tau0, c.num_modes),
  )
  check(np.all(out['s0'] >= 0), f's0 must be >= 0 (s is an eigenvalue of W X W^T), got {out["s0"]}')
  if c.simsiam:
    check(np.all(out['tau0'] == 1.0), f'simsiam=True needs tau0 = 1, got {out["tau0"]}')
  s = c.sim
  if s.enabled:
    from theory import linear_net  # here, not at the top: loading a config (configs/theory/) must not import JAX
    check(s.lr > 0, f'sim.lr must be > 0, got {s.lr}')
    check(s.lr * c.beta <= 1.0, f'sim.lr * beta = 1 - gamma_a must be <= 1, got {s.lr * c.beta}')
    check(s.batch_size >= 0, f'sim.batch_size must be >= 0 (0: population gradient), got {s.batch_size}')
    check(s.predictor in linear_net.PREDICTORS,
          f'sim.predictor must be one of {linear_net.PREDICTORS}, got {s.predictor!r}')
    check(s.init in ('aligned', 'random'), f"sim.init must be 'aligned' or 'random', got {s.init!r}")
    check(s.record_every >= 1, f'sim.record_every must be >= 1, got {s.record_every}')
    n1 = s.input_dim or c.num_modes
    check(n1 >= c.num_modes, f'sim.input_dim ({n1}) must be >= num_modes ({c.num_modes})')
    out['input_dim'] = n1
    out['x_eigenvalues'] = per_mode('sim.x_eigenvalues', s.x_eigenvalues, n1)
    check(np.all(out['x_eigenvalues'] > 0), f'sim.x_eigenvalues must be > 0, got {out["x_eigenvalues"]}')
    out['num_steps'] = int(round(c.t_max / s.lr))
    check(out['num_steps'] >= s.record_every,
          f't_max / sim.lr = {out["num_steps"]} steps, fewer than sim.record_every={s.record_every}')
  return out
