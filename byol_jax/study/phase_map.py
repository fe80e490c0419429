"""A study's weight decay x EMA rate grid beside the theory's collapse phase diagram (paper Sec. 4, Fig. 5).

study.write_results calls `write`. When the study's rows form such a grid (`grid_from_results`), it writes
  phase_diagram.png   left: the real network's final z_std·√d (mean over seeds) per (weight decay, EMA rate)
                      cell, collapsed cells crossed, cells not run grey; then, per map below, log10 s_j(t_end)
                      of one theory mode over a continuous (eta, beta) grid, the runs' mapped points marked
                      by the real verdict, eta_c and the theory's collapse boundary;
  phase_diagram.json  per cell: wd, tau, the angular step (below), the real z_std·√d and verdict, and per map
                      eta, beta, the theory's s_j(t_end), its verdict and whether the two agree; and whether
                      one threshold on the angular step separates the collapsed cells from the others.

A grid: every row's run config is a BYOL run (stop-gradient on) with a gradient-trained linear predictor
(`linear` or `linear_symmetric`: the one the ODE describes), constant lr and EMA rate, the predictor's
weight decay following the trunk's (the ODE has one eta), EMA rate < 1, and one lr, step count and alpha_p
for all rows (one theory time); and the rows' (weight decay, EMA rate) pairs are exactly the product of
>= 2 weight decays and >= 2 EMA rates, one row each. Anything else: no figure (configs/study/phase_diagram.py
is the study that has one).

Two maps from a run to the theory (alpha_p = predictor.lr_mult and sigma2 = 0 in both), one theory panel each:
  paper  the paper's mapping of its ODEs to discrete training (alpha beta = 1 - gamma_a, eta_bar = alpha
         eta): with lr alpha, eta = wd / alpha, beta = (1 - tau_ema) / alpha, t_end = alpha * steps. It reads
         the weight decay hyperparameter as a per-step shrink factor and ignores momentum.
  sgd    what the optimizer does (byol_jax/optim.py, as torch SGD): wd * w is added to the gradient before
         momentum m and the lr, so at a steady state one step moves the weights by lr / (1 - m) times the
         gradient flow's velocity, weight decay included: t = steps * lr / (1 - m), eta = wd,
         beta = (1 - tau_ema) (1 - m) / lr.
tau_ema = 0 gives the largest beta of a map (the target equals the online network after every step). The maps
place the runs; neither is a fit. Which one predicts the real network's collapse is a measurement (docs/study.md,
"The lr sweep at fixed eta").
Beside the maps, a quantity neither holds: the angular step per update of a weight behind BatchNorm at its norm
equilibrium, sqrt(2·lr·wd / (1 + m)) (byol_jax/study/lr_sweep.py says why; at one lr it grows with wd alone, so
only an lr sweep tells it from eta).

The theory mode: p_j(0) = 0.4, s_j(0) = p_j(0)^2 (on the invariant parabola, c_j = 0: where weight decay
drives every mode, so the map needs no c_j we cannot measure), tau_j(0) = 0.1 when the target starts
independent of the online network (`ema.target_init='independent'`, the study base), 1 when it is a copy.
p_j(0) = 0.4 is notebooks/03's middle panel: its basin edge at tau = 1, eta = p(1 - p) = 0.24, sits just
below eta_c = 1/4, so with a fast EMA the theory's boundary is eta_c itself and what moves it at small beta
is the EMA (Obs#10).
"""
from __future__ import annotations

import functools
import json
import math

import numpy as np

from byol_jax import collapse


LINEAR_KINDS = ('linear', 'linear_symmetric')
MODE_P0 = 0.4
MODE_TAU0 = {'independent': 0.1, 'copy': 1.0}
SIGMA2 = 0.0
THEORY_COLLAPSE_S = 1e-4   # s_j(t_end) below this: collapsed (notebooks/03)
LOG_S_FLOOR = -8.0         # colour scale floor, log10 s (notebooks/03)
GRID_ETA, GRID_BETA = 40, 32


MAPS = {
    'paper': 'eta = wd / lr, beta = (1 - tau) / lr, t = lr * steps',
    'sgd': 'eta = wd, beta = (1 - tau)(1 - m) / lr, t = lr * steps / (1 - m) (m: SGD momentum)',
}


def row_setting(config: dict) -> dict | None:
  """(wd, tau, lr, momentum, steps, alpha_p, target_init) of a run config (as JSON), or None when the theory's map does
  not apply to the run (see the module docstring)."""
  pred, optim, ema = config['predictor'], config['optim'], config['ema']
  wd = optim['weight_decay']
  if (pred['kind'] not in LINEAR_KINDS or config['method'] != 'byol' or not config['stop_gradient']
      or optim['schedule'] != 'constant' or ema['schedule'] != 'constant' or ema['tau_base'] >= 1.0
      or pred.get('weight_decay') not in (None, wd) or optim['name'] != 'sgd'):
    return None
  return {'wd': float(wd), 'tau': float(ema['tau_base']), 'lr': float(optim['lr']),
          'momentum': float(optim['momentum']),
          'steps': int(config['train']['steps']), 'alpha_p': float(pred['lr_mult']),
          'target_init': ema['target_init']}


def to_theory(wd: float, tau: float, lr: float, momentum: float = 0.0, map_name: str = 'paper'):
  """(eta, beta) of a run with weight decay wd, EMA rate tau, lr and SGD momentum, by one of MAPS."""
  if map_name == 'paper':
    return wd / lr, (1.0 - tau) / lr
  return wd, (1.0 - tau) * (1.0 - momentum) / lr


ANGULAR_STEP = ('sqrt(2 lr wd / (1 + momentum)), radians per update at the norm equilibrium; '
                'separation over the rows with weight decay')


def angular_step(lr: float, wd: float, momentum: float) -> float:
  """Radians per update of a scale-invariant weight (one behind BatchNorm) at the norm equilibrium of SGD with
  momentum and weight decay: sqrt(2·lr·wd / (1 + m))."""
  return math.sqrt(2.0 * lr * wd / (1.0 + momentum))


def angular_separation(rows: list[dict]) -> dict:
  """Whether the collapsed rows are exactly those above some angular step: the largest step of a surviving row
  against the smallest of a collapsed one. Left out: rows without a real verdict, and rows without weight decay,
  whose weight norm grows through the whole run (no equilibrium: their step shrinks as the norm grows)."""
  judged = [r for r in rows if r['real_collapsed'] is not None and r['wd'] > 0]
  alive = [r['angular_step'] for r in judged if not r['real_collapsed']]
  dead = [r['angular_step'] for r in judged if r['real_collapsed']]
  largest_alive, smallest_dead = (max(alive) if alive else None), (min(dead) if dead else None)
  return {'largest_surviving': largest_alive, 'smallest_collapsed': smallest_dead,
          'separates': bool(alive and dead and largest_alive < smallest_dead)}


def theory_time(lr: float, steps: int, momentum: float = 0.0, map_name: str = 'paper') -> float:
  """The theory time a run of `steps` steps reaches, by one of MAPS."""
  return lr * steps if map_name == 'paper' else lr * steps / (1.0 - momentum)


def real_state(entry: dict) -> str:
  """The row's real outcome in one word-group: collapsed / not collapsed / diverged / not run."""
  if entry['collapsed'] is None:
    return 'diverged' if entry['seeds_diverged'] else 'not run'
  return 'collapsed' if entry['collapsed'] else 'not collapsed'


def grid_from_results(res: dict, configs: dict) -> dict | None:
  """The grid, or None when the rows do not form one. res: results.json's content; configs: row -> the
  row's run config (seed 0) as JSON. Returns {'wds', 'taus' (sorted), 'lr', 'momentum', 'steps', 'alpha_p',
  't_end' (per map), 'tau0', 'cells': [{row, wd, tau, theory: {map: {eta, beta}}, real_*}]}."""
  settings = {r: row_setting(configs[r]) for r in res['rows']}
  if not settings or any(s is None for s in settings.values()):
    return None
  keys = ('lr', 'momentum', 'steps', 'alpha_p', 'target_init')
  shared = {k: {s[k] for s in settings.values()} for k in keys}
  if any(len(v) != 1 for v in shared.values()):
    return None
  lr, momentum, steps, alpha_p, target_init = (next(iter(shared[k])) for k in keys)
  pairs = [(s['wd'], s['tau']) for s in settings.values()]
  wds, taus = sorted({w for w, _ in pairs}), sorted({t for _, t in pairs})
  if len(wds) < 2 or len(taus) < 2 or len(set(pairs)) != len(pairs) or len(pairs) != len(wds) * len(taus):
    return None
  cells = []
  for row, s in settings.items():
    e = res['rows'][row]
    mapped = {m: dict(zip(('eta', 'beta'), to_theory(s['wd'], s['tau'], lr, momentum, m))) for m in MAPS}
    cells.append({'row': row, 'wd': s['wd'], 'tau': s['tau'], 'theory': mapped,
                  'angular_step': angular_step(lr, s['wd'], momentum),
                  'real_z_std_times_sqrt_d': e['z_std_times_sqrt_d']['mean'],
                  'real_seeds': e['z_std_times_sqrt_d']['n'], 'real_collapsed': e['collapsed'],
                  'real_state': real_state(e), 'real_verdict': e['verdict']})
  return {'wds': wds, 'taus': taus, 'lr': lr, 'momentum': momentum, 'steps': steps, 'alpha_p': alpha_p,
          't_end': {m: theory_time(lr, steps, momentum, m) for m in MAPS}, 'tau0': MODE_TAU0[target_init],
          'cells': cells}


# ----------------------------------------------------------------------------------------------- theory
def _symlog(x, lin):
  """The symlog axis' coordinate (matplotlib's with linscale 1): linear up to lin, one unit per decade after."""
  x = np.asarray(x, np.float64)
  return np.where(x <= lin, x / lin, 1.0 + np.log10(np.maximum(x, lin) / lin))


def _symlog_inverse(u, lin):
  u = np.asarray(u, np.float64)
  return np.where(u <= 1.0, u * lin, lin * 10.0 ** (u - 1.0))


def theory_axes(etas, betas, n_eta: int = GRID_ETA, n_beta: int = GRID_BETA) -> dict:
  """The continuous (eta, beta) grid covering the run points: eta from 0 to 1.5 x max(largest eta, eta_c),
  uniform on a symlog axis whose linear part ends at the smallest positive eta (so eta = 0 and a span of
  decades both show); beta log-uniform from half the smallest to twice the largest. Cell centres and edges."""
  from theory import ode
  lin = min(e for e in etas if e > 0)
  top = 1.5 * max(max(etas), ode.critical_eta(1.0, SIGMA2))
  u = np.linspace(0.0, float(_symlog(top, lin)), n_eta)
  du = u[1] - u[0]
  v = np.linspace(math.log10(min(betas) / 2), math.log10(max(betas) * 2), n_beta)
  dv = v[1] - v[0]
  return {'eta': _symlog_inverse(u, lin), 'eta_edges': _symlog_inverse(np.append(u - du / 2, u[-1] + du / 2), lin),
          'beta': 10.0 ** v, 'beta_edges': 10.0 ** np.append(v - dv / 2, v[-1] + dv / 2), 'eta_linthresh': lin}


@functools.lru_cache(maxsize=None)
def _solver():
  """One jitted, vmapped ODE solve (compiled once per process and grid size)."""
  import jax
  from theory import ode
  return jax.jit(lambda state0, params, t: ode.integrate_grid(state0, t, params, rtol=1e-5, atol=1e-9))


@functools.lru_cache(maxsize=8)
def theory_s_end(etas: tuple, betas: tuple, t_end: float, alpha_p: float, tau0: float) -> np.ndarray:
  """s_j(t_end) of the theory mode at each (eta, beta), one vmapped integration (read-only, cached).

  Where a mode collapses with eta > beta, tau_j (the target's eigenvalue over the online one's) grows like
  exp((eta - beta) t) once s_j has gone, and overflows float32 long before t_end: the solve turns NaN after
  the collapse it was meant to show. So the solve also stops at checkpoints on a log scale, and a mode whose
  s_j turns NaN reads its last finite s_j (already below THEORY_COLLAPSE_S wherever this was seen: s_j
  only decays, at rate 2 eta, once p_j is gone)."""
  import jax.numpy as jnp
  from theory import ode
  g = len(etas)
  params = ode.ModeParams(jnp.full(g, alpha_p), jnp.asarray(etas), jnp.asarray(betas), jnp.full(g, SIGMA2),
                          jnp.zeros(g))
  state0 = ode.as_state(MODE_P0, MODE_P0 ** 2, tau0, 1)
  times = np.concatenate([[0.0], t_end * np.geomspace(1e-3, 1.0, 10)])
  s = np.asarray(_solver()(state0, params, jnp.asarray(times)).s[:, :, 0], np.float64)  # [g, times]
  finite = np.isfinite(s)
  last = finite.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)  # the last finite checkpoint (t = 0 always is)
  out = s[np.arange(g), last]
  out.flags.writeable = False  # cached: shared between callers
  return out


def theory_map(grid: dict, map_name: str = 'paper') -> dict:
  """s_j(t_end) of the theory mode on the continuous grid ('s_end' [n_beta, n_eta]) and at the runs' points
  ('cells', in grid['cells'] order) under one of MAPS, from one integration of Eqns 11-13. Cached:
  write_results runs after every study run and the theory does not change between them."""
  points = [c['theory'][map_name] for c in grid['cells']]
  axes = theory_axes([p['eta'] for p in points], [p['beta'] for p in points])
  e, b = np.meshgrid(axes['eta'], axes['beta'])
  etas = np.concatenate([e.ravel(), [p['eta'] for p in points]])
  betas = np.concatenate([b.ravel(), [p['beta'] for p in points]])
  s = theory_s_end(tuple(etas.tolist()), tuple(betas.tolist()), float(grid['t_end'][map_name]),
             float(grid['alpha_p']), float(grid['tau0']))
  return {**axes, 's_end': s[:e.size].reshape(e.shape), 'cells': s[e.size:], 'map': map_name}


# ------------------------------------------------------------------------------------------------ outputs
def summary(grid: dict, theories: dict, study: str = '', collapse_rule: str = '') -> dict:
  """phase_diagram.json's content; theories: map name -> theory_map(grid, name)."""
  from theory import ode
  cells = []
  for i, c in enumerate(grid['cells']):
    real = c['real_collapsed']
    mapped = {}
    for m, th in theories.items():
      s = float(th['cells'][i])
      collapsed = bool(s < THEORY_COLLAPSE_S)
      mapped[m] = {**c['theory'][m], 's_end': s, 'collapsed': collapsed,
                   'agree': None if real is None else bool(real) == collapsed}
    cells.append({**c, 'theory': mapped})
  agreement = {}
  for m in theories:
    compared = [c['theory'][m]['agree'] for c in cells if c['theory'][m]['agree'] is not None]
    agreement[m] = {'cells_compared': len(compared), 'cells_agreeing': sum(compared)}
  return {
      'study': study,
      'maps': {m: {'definition': MAPS[m], 't_end': grid['t_end'][m]} for m in theories},
      'run': {'lr': grid['lr'], 'momentum': grid['momentum'], 'steps': grid['steps'], 'alpha_p': grid['alpha_p']},
      'sigma2': SIGMA2,
      'theory_mode': {'p0': MODE_P0, 's0': MODE_P0 ** 2, 'tau0': grid['tau0']},
      'eta_c': ode.critical_eta(1.0, SIGMA2),
      'theory_collapse_rule': f's_j(t_end) < {THEORY_COLLAPSE_S:g}',
      'real_collapse_rule': collapse_rule,
      'agreement': agreement,
      'angular_step': {'definition': ANGULAR_STEP, **angular_separation(cells)},
      'cells': cells,
  }


STATE_STYLE = {  # real verdict -> marker on the theory panel
    'not collapsed': dict(marker='o', facecolor='white', edgecolor='k'),
    'collapsed': dict(marker='X', facecolor='tab:red', edgecolor='k'),
    'diverged': dict(marker='^', facecolor='k', edgecolor='k'),
    'not run': dict(marker='o', facecolor='none', edgecolor='0.5'),
}


def _real_panel(ax, grid: dict):
  """Weight decay (x) by EMA rate (y; the slowest EMA, the smallest beta, at the bottom, as on the theory
  panel) with the final z_std·√d."""
  import matplotlib.pyplot as plt
  wds, taus = grid['wds'], sorted(grid['taus'], reverse=True)
  by_pair = {(c['wd'], c['tau']): c for c in grid['cells']}
  z = np.full((len(taus), len(wds)), np.nan)
  for i, tau in enumerate(taus):
    for j, wd in enumerate(wds):
      v = by_pair[(wd, tau)]['real_z_std_times_sqrt_d']
      z[i, j] = np.nan if v is None else v
  cmap = plt.get_cmap('viridis').with_extremes(bad='0.85')  # grey: cells not run
  vmax = max(1.0, float(np.nanmax(z))) if np.isfinite(z).any() else 1.0
  im = ax.imshow(np.ma.masked_invalid(z), cmap=cmap, vmin=0.0, vmax=vmax, origin='lower', aspect='auto')
  cbar = ax.figure.colorbar(im, ax=ax, label='final z_std·√d (mean over seeds)')
  cbar.ax.axhline(collapse.Z_STD_THRESHOLD, color='tab:red', lw=2)
  for i, tau in enumerate(taus):
    for j, wd in enumerate(wds):
      c = by_pair[(wd, tau)]
      if c['real_collapsed']:
        ax.plot(j, i, 'x', color='tab:red', ms=28, mew=3, alpha=0.8)
      text = 'not run' if c['real_state'] == 'not run' else (
          'diverged' if c['real_z_std_times_sqrt_d'] is None else f'{c["real_z_std_times_sqrt_d"]:.2f}')
      dark = np.isfinite(z[i, j]) and z[i, j] < 0.6 * vmax
      ax.text(j, i, text, ha='center', va='center', fontsize=10, color='w' if dark else 'k')
  ax.set_xticks(range(len(wds)))
  ax.set_xticklabels([f'{wd:g}\nθ {angular_step(grid["lr"], wd, grid["momentum"]):.3f}' for wd in wds])
  ax.set_yticks(range(len(taus)))
  ax.set_yticklabels([f'{tau:g}' for tau in taus])
  ax.set_xlabel('weight decay (trunk and predictor); θ: angular step sqrt(2·lr·wd / (1 + m))')
  ax.set_ylabel('EMA rate τ (constant)')
  ax.set_title(f'real network: x collapsed (z_std·√d < {collapse.Z_STD_THRESHOLD} or z eff. rank < '
               f'{collapse.Z_RANK_THRESHOLD}), grey not run', fontsize=10)


AXIS_LABELS = {'paper': (r'weight decay $\eta$ = wd / lr (symlog)', r'EMA rate $\beta$ = (1 - $\tau$) / lr'),
               'sgd': (r'weight decay $\eta$ = wd (symlog)', r'EMA rate $\beta$ = (1 - $\tau$)(1 - m) / lr')}


def _theory_panel(ax, grid: dict, theory: dict):
  from theory import ode, plots
  m = theory['map']
  log_s = np.log10(np.maximum(theory['s_end'], 10.0 ** LOG_S_FLOOR))
  plots.phase_diagram(ax, theory['eta_edges'], theory['beta_edges'], log_s, *AXIS_LABELS[m],
                      f'theory, {m} map', rf'$\log_{{10}} s_j(t_{{end}} = {grid["t_end"][m]:g})$',
                      vmin=LOG_S_FLOOR, vmax=0.0)
  ax.set_xscale('symlog', linthresh=theory['eta_linthresh'], linscale=1.0)
  ax.set_yscale('log')
  ax.set_xlim(theory['eta_edges'][0], theory['eta_edges'][-1])
  ax.set_ylim(theory['beta_edges'][0], theory['beta_edges'][-1])
  eta_c = ode.critical_eta(1.0, SIGMA2)
  # Magenta and black: visible on the yellow (grown) and the purple (collapsed) ends of the colour scale.
  ax.axvline(eta_c, color='m', ls=':', lw=2.2, label=rf'$\eta_c$ = 1/4: every mode collapses beyond')
  ax.contour(theory['eta'], theory['beta'], log_s, levels=[math.log10(THEORY_COLLAPSE_S)], colors='k',
             linestyles='--', linewidths=1.2)
  ax.plot([], [], 'k--', lw=1.2, label=f'theory: s_j(t_end) = {THEORY_COLLAPSE_S:g} (collapsed to its right)')
  for state, style in STATE_STYLE.items():
    pts = [c for c in grid['cells'] if c['real_state'] == state]
    if pts:
      ax.scatter([c['theory'][m]['eta'] for c in pts], [c['theory'][m]['beta'] for c in pts], s=90,
                 linewidths=1.5, zorder=3,
                 clip_on=False, label=f'run: {state}', marker=style['marker'], c=style['facecolor'],
                 edgecolors=style['edgecolor'])
  ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.13), ncol=3)  # below: not over points


def figure(grid: dict, theories: dict, study: str = ''):
  """The matplotlib Figure: the real grid, then one theory panel per map."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 1 + len(theories), figsize=(7.5 * (1 + len(theories)), 6.5),
                           constrained_layout=True)
  _real_panel(axes[0], grid)
  for ax, theory in zip(axes[1:], theories.values()):
    _theory_panel(ax, grid, theory)
  fig.suptitle(f'{study}: collapse over weight decay x EMA rate, real (SGD lr {grid["lr"]:g}, momentum '
               f'{grid["momentum"]:g}, {grid["steps"]} steps) and theory (σ² = 0, p_j(0) = {MODE_P0:g}, '
               f's_j(0) = p_j(0)², τ_j(0) = {grid["tau0"]:g}, α_p = {grid["alpha_p"]:g})')
  return fig


def fits(res: dict, configs: dict) -> bool:
  """Whether the rows form a weight decay x EMA rate grid (results.json's content and the rows' run configs as JSON)."""
  return grid_from_results(res, configs) is not None


def write(res: dict, configs: dict, save, workdir: str = '') -> bool:
  """Writes phase_diagram.json and phase_diagram.png when the rows form a grid; returns whether it did.
  save(name, writer) is study.write_results' atomic writer: writer(path) writes the file at path."""
  grid = grid_from_results(res, configs)
  if grid is None:
    return False
  theories = {m: theory_map(grid, m) for m in MAPS}
  content = summary(grid, theories, res.get('study', ''), res.get('collapse_rule', ''))

  def write_json(path):
    with open(path, 'w') as f:
      json.dump(content, f, indent=2)

  def write_png(path):
    import matplotlib.pyplot as plt
    fig = figure(grid, theories, res.get('study', ''))
    fig.savefig(path, dpi=100, format='png')  # format: the atomic writer's temporary name has no .png
    plt.close(fig)

  save('phase_diagram.json', write_json)
  save('phase_diagram.png', write_png)
  return True
