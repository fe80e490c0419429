r"""Integrate the eigenmode ODEs (and simulate the linear network) for one config; write results.

  python -m theory.main --config=configs/theory/default.py --workdir=/tmp/theory \
      --config.eta=0.01 --config.p0='(0.05, 0.3, 0.6)'

Writes to --workdir:
  eigenmodes.npz  t [T]; p, s, tau [T, num_modes] from the ODE; with a simulation also t_sim [R],
                  p_sim, s_sim, tau_sim [R, num_modes], p_ode_at_sim, ... (the ODE at the simulation
                  times, started from the simulation's measured initial state), commutator_sim, ...
  summary.json    parameters, fixed points p*_-/p*_+ (tau = 1 and each mode's final tau), eta_c, which
                  modes collapsed (ODE and simulation) and which the closed form predicts, agreement figures.
  eigenmodes.png, phase_portrait.png, and with a simulation rel_error.png and alignment.png.
"""
from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from byol_jax import cli

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs: `run` is also a library function (tests, notebooks), and
  importing it must not claim --config or --workdir in a process that defines its own."""
  cli.define_config_file(None, 'Path to a configs/theory/*.py file.')
  flags.DEFINE_string('workdir', None, 'Output directory.')


def _floats(a):
  return [None if not np.isfinite(v) else float(v) for v in np.atleast_1d(np.asarray(a, dtype=float))]


def collapsed(s: np.ndarray, threshold: float) -> list[bool]:
  """Mode j collapsed if s_j(t_max) < threshold * max(s_j(0), tiny)."""
  return [bool(v) for v in s[-1] < threshold * np.maximum(s[0], 1e-30)]


def run(config, workdir: str) -> dict:
  """Everything `main` does, callable from Python (tests, notebooks). Returns the summary dict."""
  # Imports here so that `jax_enable_x64` can be set before any array is made.
  if config.x64:
    jax.config.update('jax_enable_x64', True)
  from theory import compare, ode, plots
  from theory import config as config_lib

  resolved = config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  t, traj = compare.run_ode(config, resolved['p0'], resolved['s0'], resolved['tau0'])
  arrays = {'t': t, **traj}
  # EMA drives tau -> 1, so the asymptotic fixed points are those at tau = 1.
  lo, hi = ode.fixed_points(1.0, config.eta, config.sigma2)
  lo_f, hi_f = ode.fixed_points(traj['tau'][-1], config.eta, config.sigma2)
  c = ode.invariant_c(resolved['p0'], resolved['s0'], config.alpha_p)
  summary = {
      'params': {k: config[k] for k in ('alpha_p', 'eta', 'beta', 'sigma2', 'simsiam', 't_max',
                                        'num_modes')},
      'p0': _floats(resolved['p0']), 's0': _floats(resolved['s0']), 'tau0': _floats(resolved['tau0']),
      'critical_eta': float(ode.critical_eta(1.0, config.sigma2)),
      'eta_above_critical': bool(config.eta > ode.critical_eta(1.0, config.sigma2)),
      'fixed_points_tau1': {'p_minus': _floats(lo)[0], 'p_plus': _floats(hi)[0], 'p_zero': 0.0},
      'fixed_points_final_tau': {'p_minus': _floats(lo_f), 'p_plus': _floats(hi_f)},
      'invariant_c': _floats(c),
      'invariant_max_abs_err': float(np.max(np.abs(
          traj['s'] - ode.invariant_s(traj['p'], t[:, None], c, config.alpha_p, config.eta)))),
      'final': {'p': _floats(traj['p'][-1]), 's': _floats(traj['s'][-1]), 'tau': _floats(traj['tau'][-1])},
      'collapsed_ode': collapsed(traj['s'], config.collapse_threshold),
  }
  if config.eta > 0:
    summary['predicted_collapse_from_p0_on_parabola'] = [
        bool(v) for v in ode.in_collapse_basin(resolved['p0'], 1.0, config.eta, config.sigma2)]
  else:
    _, s_inf = ode.eta_zero_steady_state(resolved['p0'], resolved['s0'], 1.0, config.alpha_p, config.sigma2)
    summary['predicted_s_inf_eta0_tau1'] = _floats(s_inf)

  plots.save(plots.eigenmodes_figure(t, traj, title='Eigenmode ODEs (Eqns 11-13)', log_s=True),
             os.path.join(workdir, 'eigenmodes.png'))
  plots.save(plots.phase_portrait_figure((config.eta,), 1.0, config.alpha_p, config.sigma2),
             os.path.join(workdir, 'phase_portrait.png'))

  if config.sim.enabled:
    out = compare.side_by_side(config, resolved)
    m = out['sim']
    arrays.update({'t_sim': out['t'], 'p_sim': m['p'], 's_sim': m['s'], 'tau_sim': m['tau'],
                   'p_ode_at_sim': out['ode']['p'], 's_ode_at_sim': out['ode']['s'],
                   'tau_ode_at_sim': out['ode']['tau'], 'commutator_sim': m['commutator'],
                   'commutator_rel_sim': m['commutator_rel'], 'asymmetry_sim': m['asymmetry'],
                   'corr_wa_w_sim': m['corr_wa_w']})
    ag = out['agreement']
    summary['simulation'] = {
        'regime': {k: config.sim[k] for k in ('lr', 'batch_size', 'predictor', 'stop_grad', 'init')},
        'isotropic': bool(np.allclose(resolved['x_eigenvalues'], 1.0)),
        'num_steps': resolved['num_steps'],
        'p0': _floats(m['p'][0]), 's0': _floats(m['s'][0]), 'tau0': _floats(m['tau'][0]),
        'agreement': {k: v for k, v in ag.items() if not k.startswith('rel_err_')},
        'collapsed_sim': collapsed(m['s'], config.collapse_threshold),
        'final_commutator_rel': float(m['commutator_rel'][-1]),
        'final_asymmetry': float(m['asymmetry'][-1]),
    }
    plots.save(plots.eigenmodes_figure(out['t'], out['ode'], out['t'], m, log_s=True,
                                       title='ODE (lines) vs simulated linear network (markers)'),
               os.path.join(workdir, 'eigenmodes_vs_sim.png'))
    plots.save(plots.rel_error_figure(out['t'], ag), os.path.join(workdir, 'rel_error.png'))
    plots.save(plots.alignment_figure(out['t'], {config.sim.predictor: m}),
               os.path.join(workdir, 'alignment.png'))

  np.savez(os.path.join(workdir, 'eigenmodes.npz'), **arrays)
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError('--config and --workdir are required')
  from theory import config as config_lib
  try:  # bad values: one line naming the field (run() raises the same ValueError when called from Python)
    config_lib.validate(FLAGS.config)
  except ValueError as e:
    cli.fail(str(e))
  summary = run(FLAGS.config, FLAGS.workdir)
  logging.info('summary: %s', json.dumps(summary))
  print(json.dumps({k: summary[k] for k in ('critical_eta', 'fixed_points_tau1', 'collapsed_ode')}))
  if 'simulation' in summary:
    print(json.dumps({'max_rel_err_sim_vs_ode': summary['simulation']['agreement']['max_rel_err']}))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
