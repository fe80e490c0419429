"""Benchmark: a sweep of eigenmode-ODE settings in one jitted, vmapped odeint call vs a scipy loop.

  python -m theory.bench                      # 10,000 settings x 3 modes, float64, rtol = atol = 1e-7
  python -m theory.bench --settings=2000 --scipy_settings=200   # quicker; scipy time then extrapolated

The JAX side is one jitted call: `vmap` of odeint over chunks of `--chunk_size` settings, chunks run in
sequence by `lax.map` (see `ode.integrate_grid`). Both sides solve Eqns 11-13 with the same method (Dormand-Prince 5(4): jax.experimental.ode.odeint and
scipy's RK45), the same tolerances, in float64, at the same output times. Accuracy: `max_abs_diff` is
max |jax - scipy| over all settings, modes, variables and times, and `jax_err_vs_ref` / `scipy_err_vs_ref`
compare both with a tight DOP853 reference (rtol 1e-12) on a subset. `jax_seconds` is a warm call
(compile time separately in `jax_compile_seconds`). Prints, last, one JSON object.
"""
from __future__ import annotations

import json
import platform
import time

from absl import app
from absl import flags
import jax

flags.DEFINE_integer('settings', 10_000, 'Number of parameter settings in the sweep.')
flags.DEFINE_integer('scipy_settings', 0, 'Run scipy on this many settings and extrapolate (0: all).')
flags.DEFINE_integer('ref_settings', 50, 'Settings checked against the tight reference solution.')
flags.DEFINE_float('rtol', 1e-7, 'Relative tolerance (both solvers).')
flags.DEFINE_float('atol', 1e-7, 'Absolute tolerance (both solvers).')
flags.DEFINE_float('t_max', 10.0, 'Integration horizon.')
flags.DEFINE_integer('seed', 0, 'Seed of the random parameter settings.')
flags.DEFINE_integer('chunk_size', 250, 'Settings per vmapped chunk inside the one jitted call (0: all at once).')
FLAGS = flags.FLAGS

NUM_MODES = 3


def make_settings(n: int, seed: int):
  import numpy as np
  rng = np.random.default_rng(seed)
  params = dict(alpha_p=rng.uniform(0.2, 5.0, n), eta=rng.uniform(0.0, 0.3, n),
                beta=rng.uniform(0.1, 2.0, n), sigma2=rng.uniform(0.0, 0.5, n))
  y0 = dict(p=rng.uniform(-0.2, 1.0, (n, NUM_MODES)), s=rng.uniform(0.01, 1.0, (n, NUM_MODES)),
            tau=rng.uniform(0.0, 1.0, (n, NUM_MODES)))
  return params, y0


def scipy_rhs(t, y, alpha_p, eta, beta, sigma2):
  import numpy as np
  p, s, tau = y[:NUM_MODES], y[NUM_MODES:2 * NUM_MODES], y[2 * NUM_MODES:]
  a = tau - (1.0 + sigma2) * p
  return np.concatenate([alpha_p * s * a - eta * p, 2.0 * p * s * a - 2.0 * eta * s,
                         beta * (1.0 - tau) - tau * (p * a - eta)])


def scipy_solve(params, y0, idx, t_eval, rtol, atol, method='RK45'):
  import numpy as np
  from scipy.integrate import solve_ivp
  out = np.empty((len(idx), len(t_eval), 3, NUM_MODES))
  for k, i in enumerate(idx):
    y = np.concatenate([y0['p'][i], y0['s'][i], y0['tau'][i]])
    args = tuple(params[n][i] for n in ('alpha_p', 'eta', 'beta', 'sigma2'))
    sol = solve_ivp(scipy_rhs, (t_eval[0], t_eval[-1]), y, method=method, t_eval=t_eval, args=args,
                    rtol=rtol, atol=atol)
    assert sol.success, sol.message
    out[k] = sol.y.T.reshape(len(t_eval), 3, NUM_MODES)
  return out


def main(argv):
  del argv
  jax.config.update('jax_enable_x64', True)
  import jax.numpy as jnp
  import numpy as np
  from theory import ode

  n = FLAGS.settings
  params_np, y0_np = make_settings(n, FLAGS.seed)
  t_eval = np.linspace(0.0, FLAGS.t_max, 11)
  params = ode.ModeParams(**{k: jnp.asarray(v) for k, v in params_np.items()}, simsiam=jnp.zeros(n))
  y0 = ode.ModeState(*(jnp.asarray(y0_np[k]) for k in ('p', 's', 'tau')))

  @jax.jit
  def sweep(y0, params):
    return ode.integrate_grid(y0, jnp.asarray(t_eval), params, rtol=FLAGS.rtol, atol=FLAGS.atol,
                            chunk_size=FLAGS.chunk_size or None)

  t0 = time.perf_counter()
  ys = jax.block_until_ready(sweep(y0, params))
  compile_and_run = time.perf_counter() - t0
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    ys = jax.block_until_ready(sweep(y0, params))
    times.append(time.perf_counter() - t0)
  jax_seconds = min(times)
  jax_out = np.stack([np.asarray(ys.p), np.asarray(ys.s), np.asarray(ys.tau)], axis=2)  # [n, T, 3, M]

  m = FLAGS.scipy_settings or n
  idx = np.arange(m)
  t0 = time.perf_counter()
  sp_out = scipy_solve(params_np, y0_np, idx, t_eval, FLAGS.rtol, FLAGS.atol)
  scipy_measured = time.perf_counter() - t0
  scipy_seconds = scipy_measured * n / m

  r = min(FLAGS.ref_settings, m)
  ref = scipy_solve(params_np, y0_np, idx[:r], t_eval, 1e-12, 1e-12, method='DOP853')
  result = {
      'settings': n,
      'chunk_size': FLAGS.chunk_size,
      'modes_per_setting': NUM_MODES,
      'dtype': 'float64',
      'rtol': FLAGS.rtol, 'atol': FLAGS.atol, 't_max': FLAGS.t_max,
      'jax_seconds': jax_seconds,
      'jax_compile_seconds': compile_and_run - jax_seconds,
      'scipy_seconds': scipy_seconds,
      'scipy_settings_run': m,
      'scipy_extrapolated': m < n,
      'max_abs_diff': float(np.max(np.abs(jax_out[idx] - sp_out))),
      'jax_err_vs_ref': float(np.max(np.abs(jax_out[:r] - ref))),
      'scipy_err_vs_ref': float(np.max(np.abs(sp_out[:r] - ref))),
      'speedup': scipy_seconds / jax_seconds,
      'speedup_incl_compile': scipy_seconds / compile_and_run,
      'machine': f'{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, '
                 f'{jax.device_count()} device(s)',
      'jax_version': jax.__version__,
  }
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
