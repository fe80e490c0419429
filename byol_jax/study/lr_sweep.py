"""An lr sweep at fixed theory parameters beside the theory under both maps: which map describes the network.

study.write_results calls `write`. When the study's rows form such a sweep (`sweep_from_results`), it writes
  lr_sweep.png   left: the real network's final z_std·√d against lr, one line per eta = wd / lr; then, per map
                 of byol_jax/study/phase_map.py, log10 s_j(t_end) of the theory mode against lr (a curve over a
                 continuous lr range, the runs' lrs marked by their real verdict);
  lr_sweep.json  per row: lr, wd, tau, steps, the real z_std·√d and verdict, and per map eta, beta, s_j(t_end),
                 its verdict and whether it agrees with the real one.
Beside both maps, a quantity neither holds: the angular step per update of a weight behind BatchNorm once weight
decay balances its growth, sqrt(2·lr·wd / (1 + m)) radians (Wan et al. 2021, "Spherical Motion Dynamics"; such a
weight's direction is all that matters, so this is its effective step). It grows with lr at fixed wd / lr and at
fixed wd. The figure's second panel puts the real verdicts against it, and lr_sweep.json says whether a single
threshold on it separates the collapsed rows with weight decay from the others (without weight decay there is no
equilibrium: the step shrinks as the norm grows, and the panel draws such rows at 0).

A sweep: every row maps to the theory (phase_map.row_setting), all rows share momentum, alpha_p, the target's
initialisation, beta = (1 - tau) / lr and the theory time lr * steps, and they span >= 2 lrs. Rows with the same
wd / lr form one line. Why: under the paper's map (eta = wd / lr, beta = (1 - tau) / lr, t = lr * steps) such
rows are one point of the theory each line, so the theory's verdict cannot change along a line; under the map of
the optimizer (eta = wd) the weight decay grows with lr along it. A real verdict that changes with lr at fixed
wd / lr is what the paper's map cannot describe, and one that stays is what the optimizer's cannot where its eta
crosses eta_c. configs/study/lr_sweep.py is the study.
"""
from __future__ import annotations

import json
import math

import numpy as np

from byol_jax import collapse
from byol_jax.study import phase_map

CURVE_POINTS = 33
SAME = 1e-3  # relative tolerance for "the same" beta and theory time (steps are whole numbers)


def _same(values) -> bool:
  values = list(values)
  return max(values) - min(values) <= SAME * max(abs(v) for v in values) if values else True


def sweep_from_results(res: dict, configs: dict) -> dict | None:
  """The sweep, or None when the rows do not form one (see the module docstring). res: results.json's content;
  configs: row -> the row's run config (seed 0) as JSON. Returns {'momentum', 'alpha_p', 'tau0', 'beta',
  't_end' (per map), 'etas' (sorted wd / lr), 'rows': [{row, lr, wd, tau, steps, eta, theory: {map: {eta, beta}},
  real_*}]}."""
  settings = {r: phase_map.row_setting(configs[r]) for r in res['rows']}
  if not settings or any(s is None for s in settings.values()):
    return None
  shared = {k: {s[k] for s in settings.values()} for k in ('momentum', 'alpha_p', 'target_init')}
  if any(len(v) != 1 for v in shared.values()) or len({s['lr'] for s in settings.values()}) < 2:
    return None
  momentum, alpha_p, target_init = (next(iter(shared[k])) for k in ('momentum', 'alpha_p', 'target_init'))
  betas = [(1.0 - s['tau']) / s['lr'] for s in settings.values()]
  times = [s['lr'] * s['steps'] for s in settings.values()]
  if not (_same(betas) and _same(times)):
    return None
  rows = []
  for row, s in settings.items():
    e = res['rows'][row]
    rows.append({'row': row, 'lr': s['lr'], 'wd': s['wd'], 'tau': s['tau'], 'steps': s['steps'],
                 'eta': float(f'{s["wd"] / s["lr"]:.6g}'), 'angular_step': phase_map.angular_step(s['lr'], s['wd'], momentum),
                 'theory': {m: dict(zip(('eta', 'beta'), phase_map.to_theory(s['wd'], s['tau'], s['lr'], momentum, m)))
                            for m in phase_map.MAPS},
                 'real_z_std_times_sqrt_d': e['z_std_times_sqrt_d']['mean'], 'real_collapsed': e['collapsed'],
                 'real_state': phase_map.real_state(e), 'real_verdict': e['verdict']})
  t_end = {m: float(np.mean([phase_map.theory_time(s['lr'], s['steps'], momentum, m) for s in settings.values()]))
           for m in phase_map.MAPS}
  return {'momentum': momentum, 'alpha_p': alpha_p, 'tau0': phase_map.MODE_TAU0[target_init],
          'beta': float(np.mean(betas)), 'etas': sorted({r['eta'] for r in rows}), 't_end': t_end, 'rows': rows}


def _curve_lrs(sweep: dict) -> np.ndarray:
  lrs = [r['lr'] for r in sweep['rows']]
  return np.geomspace(min(lrs) / 1.5, max(lrs) * 1.5, CURVE_POINTS)


def theory(sweep: dict, map_name: str) -> dict:
  """s_j(t_end) of the theory mode under one map: at the rows ('rows', in sweep['rows'] order) and along each
  line over a continuous lr range ('curves': eta -> s_end at 'lrs'), from one integration."""
  lrs = _curve_lrs(sweep)
  points = [phase_map.to_theory(eta * lr, 1.0 - sweep['beta'] * lr, lr, sweep['momentum'], map_name)
            for eta in sweep['etas'] for lr in lrs]
  points += [(r['theory'][map_name]['eta'], r['theory'][map_name]['beta']) for r in sweep['rows']]
  s = phase_map.theory_s_end(tuple(p[0] for p in points), tuple(p[1] for p in points),
                             sweep['t_end'][map_name], sweep['alpha_p'], sweep['tau0'])
  n = len(lrs)
  return {'lrs': lrs, 'curves': {eta: s[i * n:(i + 1) * n] for i, eta in enumerate(sweep['etas'])},
          'rows': s[len(sweep['etas']) * n:]}


def summary(sweep: dict, theories: dict, study: str = '', collapse_rule: str = '') -> dict:
  """lr_sweep.json's content; theories: map name -> theory(sweep, name)."""
  rows = []
  for i, r in enumerate(sweep['rows']):
    mapped = {}
    for m, th in theories.items():
      s = float(th['rows'][i])
      collapsed = bool(s < phase_map.THEORY_COLLAPSE_S)
      mapped[m] = {**r['theory'][m], 's_end': s, 'collapsed': collapsed,
                   'agree': None if r['real_collapsed'] is None else bool(r['real_collapsed']) == collapsed}
    rows.append({**r, 'theory': mapped})
  agreement = {}
  for m in theories:
    compared = [r['theory'][m]['agree'] for r in rows if r['theory'][m]['agree'] is not None]
    agreement[m] = {'rows_compared': len(compared), 'rows_agreeing': sum(compared)}
  return {'study': study, 'maps': {m: {'definition': phase_map.MAPS[m], 't_end': sweep['t_end'][m]} for m in theories},
          'beta_paper_map': sweep['beta'], 'momentum': sweep['momentum'], 'alpha_p': sweep['alpha_p'],
          'theory_mode': {'p0': phase_map.MODE_P0, 's0': phase_map.MODE_P0 ** 2, 'tau0': sweep['tau0']},
          'theory_collapse_rule': f's_j(t_end) < {phase_map.THEORY_COLLAPSE_S:g}',
          'real_collapse_rule': collapse_rule, 'agreement': agreement,
          'angular_step': {'definition': phase_map.ANGULAR_STEP, **phase_map.angular_separation(sweep['rows'])},
          'rows': rows}


def figure(sweep: dict, theories: dict, study: str = ''):
  """The matplotlib Figure: the real network against lr and against the angular step, then the theory against lr
  under each map."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  columns = math.ceil((2 + len(theories)) / 2)  # the real network on top, the theory under it
  fig, axes = plt.subplots(2, columns, figsize=(6.5 * columns, 10.0), constrained_layout=True, squeeze=False)
  axes = list(axes.ravel())
  colours = {eta: plt.get_cmap('viridis')(i / max(1, len(sweep['etas']) - 1) * 0.85)
             for i, eta in enumerate(sweep['etas'])}
  ax = axes[0]
  for eta in sweep['etas']:
    line = sorted((r for r in sweep['rows'] if r['eta'] == eta), key=lambda r: r['lr'])
    ran = [r for r in line if r['real_z_std_times_sqrt_d'] is not None]
    ax.plot([r['lr'] for r in ran], [r['real_z_std_times_sqrt_d'] for r in ran], '-', color=colours[eta],
            label=f'wd / lr = {eta:g}')
    for r in ran:
      style = phase_map.STATE_STYLE[r['real_state']]
      ax.scatter([r['lr']], [r['real_z_std_times_sqrt_d']], s=80, zorder=3, marker=style['marker'],
                 c=style['facecolor'], edgecolors=colours[eta], linewidths=1.5)
  ax.axhline(collapse.Z_STD_THRESHOLD, color='tab:red', ls=':', label=f'collapse below {collapse.Z_STD_THRESHOLD}')
  ax.set(xscale='log', xlabel='lr', ylabel='final z_std·√d (mean over seeds)', title='real network (x: collapsed)')
  ax = axes[1]
  for r in sweep['rows']:
    if r['real_z_std_times_sqrt_d'] is not None:
      style = phase_map.STATE_STYLE[r['real_state']]
      ax.scatter([r['angular_step']], [r['real_z_std_times_sqrt_d']], s=80, zorder=3, marker=style['marker'],
                 c=style['facecolor'], edgecolors=colours[r['eta']], linewidths=1.5)
      ax.annotate(f'lr {r["lr"]:g}', (r['angular_step'], r['real_z_std_times_sqrt_d']), fontsize=7,
                  xytext=(4, 4), textcoords='offset points')
  for eta in sweep['etas']:
    ax.plot([], [], 'o', mfc='none', color=colours[eta], label=f'wd / lr = {eta:g}')
  ax.axhline(collapse.Z_STD_THRESHOLD, color='tab:red', ls=':', label=f'collapse below {collapse.Z_STD_THRESHOLD}')
  ax.set(xlabel='angular step sqrt(2·lr·wd / (1 + m)), rad per update', ylabel='final z_std·√d (mean over seeds)',
         title='real network against the angular step at the norm equilibrium')
  ax.title.set_fontsize(9)
  for ax, (m, th) in zip(axes[2:], theories.items()):
    for eta in sweep['etas']:
      ax.plot(th['lrs'], np.log10(np.maximum(th['curves'][eta], 10.0 ** phase_map.LOG_S_FLOOR)), '-',
              color=colours[eta], label=f'wd / lr = {eta:g}')
    for i, r in enumerate(sweep['rows']):
      style = phase_map.STATE_STYLE[r['real_state']]
      ax.scatter([r['lr']], [math.log10(max(float(th['rows'][i]), 10.0 ** phase_map.LOG_S_FLOOR))], s=80, zorder=3,
                 marker=style['marker'], c=style['facecolor'], edgecolors=colours[r['eta']], linewidths=1.5)
    ax.axhline(math.log10(phase_map.THEORY_COLLAPSE_S), color='k', ls='--', lw=1.2, label='theory: collapsed below')
    ax.set(xscale='log', xlabel='lr', ylabel=f'log10 s_j(t_end = {sweep["t_end"][m]:g})',
           ylim=(phase_map.LOG_S_FLOOR - 0.3, 0.5), title=f'theory, {m} map: {phase_map.MAPS[m]}')
    ax.title.set_fontsize(8)
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='best')
  fig.suptitle(f'{study}: lr sweep at fixed wd / lr and (1 - tau) / lr = {sweep["beta"]:.3g}, fixed lr·steps '
               f'(markers: real verdict; theory mode p_j(0) = {phase_map.MODE_P0:g} on the parabola)')
  return fig


def fits(res: dict, configs: dict) -> bool:
  """Whether the rows form an lr sweep at fixed wd / lr (results.json's content and the rows' run configs as JSON)."""
  return sweep_from_results(res, configs) is not None


def write(res: dict, configs: dict, save, workdir: str = '') -> bool:
  """Writes lr_sweep.json and lr_sweep.png when the rows form a sweep; returns whether it did. save(name, writer)
  is study.write_results' atomic writer."""
  sweep = sweep_from_results(res, configs)
  if sweep is None:
    return False
  theories = {m: theory(sweep, m) for m in phase_map.MAPS}
  content = summary(sweep, theories, res.get('study', ''), res.get('collapse_rule', ''))

  def write_json(path):
    with open(path, 'w') as f:
      json.dump(content, f, indent=2)

  def write_png(path):
    import matplotlib.pyplot as plt
    fig = figure(sweep, theories, res.get('study', ''))
    fig.savefig(path, dpi=100, format='png')
    plt.close(fig)

  save('lr_sweep.json', write_json)
  save('lr_sweep.png', write_png)
  return True
