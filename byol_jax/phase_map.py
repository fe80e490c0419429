"""A study's weight decay x EMA rate grid beside the theory's collapse phase diagram (paper Sec. 4, Fig. 5).

study.write_results calls `write`. When the study's rows form such a grid (`grid_from_results`), it writes
  phase_diagram.png   left: the real network's final z_std·√d (mean over seeds) per (weight decay, EMA rate)
                      cell, collapsed cells crossed, cells not run grey; right: log10 s_j(t_end) of one theory
                      mode over a continuous (eta, beta) grid, the runs' mapped points coloured by the real
                      verdict, eta_c and the theory's collapse boundary;
  phase_diagram.json  per cell: wd, tau, eta, beta, the real z_std·√d and verdict, the theory's s_j(t_end)
                      and verdict, and whether the two agree.

A grid: every row's run config is a BYOL run (stop-gradient on) with a gradient-trained linear predictor
(`linear` or `linear_symmetric`: the one the ODE describes), constant lr and EMA rate, the predictor's
weight decay following the trunk's (the ODE has one eta), EMA rate < 1, and one lr, step count and alpha_p
for all rows (one theory time); and the rows' (weight decay, EMA rate) pairs are exactly the product of
>= 2 weight decays and >= 2 EMA rates, one row each. Anything else: no figure (configs/study/phase_diagram.py
is the study that has one).

The map from a run to the theory (shared/design/paper.md, "Mapping to discrete training": alpha beta =
1 - gamma_a, eta_bar = alpha eta): with lr alpha, eta = wd / alpha, beta = (1 - tau_ema) / alpha,
alpha_p = predictor.lr_mult, t_end = alpha * steps, sigma2 = 0. tau_ema = 0 gives beta = 1 / alpha (the
target equals the online network after every step). Caveat: the map reads the weight decay hyperparameter
as the paper's eta_bar; our optimizer adds wd * w to the gradient before the lr (as torch SGD does), so the
weights shrink by lr * wd per step, a rate of wd (not wd / lr) in t = lr * steps; SGD momentum (0.9 in
the studies) is in neither. The map places the runs; it is not a fit.

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


def row_setting(config: dict) -> dict | None:
  """(wd, tau, lr, steps, alpha_p, target_init) of a run config (as JSON), or None when the theory's map does
  not apply to the run (see the module docstring)."""
  pred, optim, ema = config['predictor'], config['optim'], config['ema']
  wd = optim['weight_decay']
  if (pred['kind'] not in LINEAR_KINDS or config['method'] != 'byol' or not config['stop_gradient']
      or optim['schedule'] != 'constant' or ema['schedule'] != 'constant' or ema['tau_base'] >= 1.0
      or pred.get('weight_decay') not in (None, wd)):
    return None
  return {'wd': float(wd), 'tau': float(ema['tau_base']), 'lr': float(optim['lr']),
          'steps': int(config['train']['steps']), 'alpha_p': float(pred['lr_mult']),
          'target_init': ema['target_init']}


def to_theory(wd: float, tau: float, lr: float) -> tuple[float, float]:
  """(eta, beta) of a run with weight decay wd, EMA rate tau and lr (the paper's map)."""
  return wd / lr, (1.0 - tau) / lr


def real_state(entry: dict) -> str:
  """The row's real outcome in one word-group: collapsed / not collapsed / diverged / not run."""
  if entry['collapsed'] is None:
    return 'diverged' if entry['seeds_diverged'] else 'not run'
  return 'collapsed' if entry['collapsed'] else 'not collapsed'


def grid_from_results(res: dict, configs: dict) -> dict | None:
  """The grid, or None when the rows do not form one. res: results.json's content; configs: row -> the
  row's run config (seed 0) as JSON. Returns {'wds', 'taus' (sorted), 'lr', 'steps', 'alpha_p', 't_end',
  'tau0', 'cells': [{row, wd, tau, eta, beta, real_*}]}."""
  settings = {r: row_setting(configs[r]) for r in res['rows']}
  if not settings or any(s is None for s in settings.values()):
    return None
  shared = {k: {s[k] for s in settings.values()} for k in ('lr', 'steps', 'alpha_p', 'target_init')}
  if any(len(v) != 1 for v in shared.values()):
    return None
  lr, steps, alpha_p, target_init = (next(iter(shared[k])) for k in ('lr', 'steps', 'alpha_p', 'target_init'))
  pairs = [(s['wd'], s['tau']) for s in settings.values()]
  wds, taus = sorted({w for w, _ in pairs}), sorted({t for _, t in pairs})
  if len(wds) < 2 or len(taus) < 2 or len(set(pairs)) != len(pairs) or len(pairs) != len(wds) * len(taus):
    return None
  cells = []
  for row, s in settings.items():
    e = res['rows'][row]
    eta, beta = to_theory(s['wd'], s['tau'], lr)
    cells.append({'row': row, 'wd': s['wd'], 'tau': s['tau'], 'eta': eta, 'beta': beta,
                  'real_z_std_times_sqrt_d': e['z_std_times_sqrt_d']['mean'],
                  'real_seeds': e['z_std_times_sqrt_d']['n'], 'real_collapsed': e['collapsed'],
                  'real_state': real_state(e), 'real_verdict': e['verdict']})
  return {'wds': wds, 'taus': taus, 'lr': lr, 'steps': steps, 'alpha_p': alpha_p, 't_end': lr * steps,
          'tau0': MODE_TAU0[target_init], 'cells': cells}


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
def _s_end(etas: tuple, betas: tuple, t_end: float, alpha_p: float, tau0: float) -> np.ndarray:
  import jax.numpy as jnp
  from theory import ode
  g = len(etas)
  params = ode.ModeParams(jnp.full(g, alpha_p), jnp.asarray(etas), jnp.asarray(betas), jnp.full(g, SIGMA2),
                          jnp.zeros(g))
  state0 = ode.as_state(MODE_P0, MODE_P0 ** 2, tau0, 1)
  ys = _solver()(state0, params, jnp.array([0.0, t_end]))
  out = np.asarray(ys.s[:, -1, 0], np.float64)
  out.flags.writeable = False  # cached: shared between callers
  return out


def theory_map(grid: dict) -> dict:
  """s_j(t_end) of the theory mode on the continuous grid ('s_end' [n_beta, n_eta]) and at the runs' points
  ('cells', in grid['cells'] order), from one integration of Eqns 11-13. Cached: write_results runs after
  every study run and the theory does not change between them."""
  axes = theory_axes([c['eta'] for c in grid['cells']], [c['beta'] for c in grid['cells']])
  e, b = np.meshgrid(axes['eta'], axes['beta'])
  etas = np.concatenate([e.ravel(), [c['eta'] for c in grid['cells']]])
  betas = np.concatenate([b.ravel(), [c['beta'] for c in grid['cells']]])
  s = _s_end(tuple(etas.tolist()), tuple(betas.tolist()), float(grid['t_end']), float(grid['alpha_p']),
             float(grid['tau0']))
  return {**axes, 's_end': s[:e.size].reshape(e.shape), 'cells': s[e.size:]}


# ------------------------------------------------------------------------------------------------ outputs
def summary(grid: dict, theory: dict, study: str = '', collapse_rule: str = '') -> dict:
  """phase_diagram.json's content."""
  from theory import ode
  cells = []
  for c, s in zip(grid['cells'], theory['cells']):
    theory_collapsed = bool(s < THEORY_COLLAPSE_S)
    real = c['real_collapsed']
    cells.append({**c, 'theory_s_end': float(s), 'theory_collapsed': theory_collapsed,
                  'agree': None if real is None else bool(real) == theory_collapsed})
  compared = [c for c in cells if c['agree'] is not None]
  return {
      'study': study,
      'map': {'eta': 'weight_decay / lr', 'beta': '(1 - ema_tau) / lr', 'alpha_p': grid['alpha_p'],
              't_end': grid['t_end'], 'lr': grid['lr'], 'steps': grid['steps'], 'sigma2': SIGMA2,
              'source': 'shared/design/paper.md (alpha beta = 1 - gamma_a, eta_bar = alpha eta); '
                        'caveats in byol_jax/phase_map.py'},
      'theory_mode': {'p0': MODE_P0, 's0': MODE_P0 ** 2, 'tau0': grid['tau0']},
      'eta_c': ode.critical_eta(1.0, SIGMA2),
      'theory_collapse_rule': f's_j(t_end) < {THEORY_COLLAPSE_S:g}',
      'real_collapse_rule': collapse_rule,
      'agreement': {'cells_compared': len(compared), 'cells_agreeing': sum(c['agree'] for c in compared)},
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
  ax.set_xticklabels([f'{wd:g}\n(η {to_theory(wd, 0, grid["lr"])[0]:.3g})' for wd in wds])
  ax.set_yticks(range(len(taus)))
  ax.set_yticklabels([f'{tau:g}\n(β {to_theory(0, tau, grid["lr"])[1]:.3g})' for tau in taus])
  ax.set_xlabel('weight decay (trunk and predictor)')
  ax.set_ylabel('EMA rate τ (constant)')
  ax.set_title(f'real network: x collapsed (z_std·√d < {collapse.Z_STD_THRESHOLD} or z eff. rank < '
               f'{collapse.Z_RANK_THRESHOLD}), grey not run', fontsize=10)


def _theory_panel(ax, grid: dict, theory: dict):
  from theory import ode, plots
  log_s = np.log10(np.maximum(theory['s_end'], 10.0 ** LOG_S_FLOOR))
  plots.phase_diagram(ax, theory['eta_edges'], theory['beta_edges'], log_s,
                      r'weight decay $\eta$ = wd / lr (symlog)', r'EMA rate $\beta$ = (1 - $\tau$) / lr',
                      rf'theory, $\sigma^2$ = 0: $p_j(0)$ = {MODE_P0:g}, $s_j(0) = p_j(0)^2$, '
                      rf'$\tau_j(0)$ = {grid["tau0"]:g}, $\alpha_p$ = {grid["alpha_p"]:g}',
                      rf'$\log_{{10}} s_j(t = \mathrm{{lr}} \times \mathrm{{steps}} = {grid["t_end"]:g})$',
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
      ax.scatter([c['eta'] for c in pts], [c['beta'] for c in pts], s=90, linewidths=1.5, zorder=3,
                 clip_on=False, label=f'run: {state}', marker=style['marker'], c=style['facecolor'],
                 edgecolors=style['edgecolor'])
  ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.13), ncol=3)  # below: not over points


def figure(grid: dict, theory: dict, study: str = ''):
  """The two-panel matplotlib Figure."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(15, 6), constrained_layout=True)
  _real_panel(axes[0], grid)
  _theory_panel(axes[1], grid, theory)
  fig.suptitle(f'{study}: collapse over weight decay x EMA rate, real (lr {grid["lr"]:g}, {grid["steps"]} steps) '
               f'and theory (η = wd/lr, β = (1-τ)/lr, t = lr·steps, σ² = 0)')
  return fig


def write(res: dict, configs: dict, save) -> bool:
  """Writes phase_diagram.json and phase_diagram.png when the rows form a grid; returns whether it did.
  save(name, writer) is study.write_results' atomic writer: writer(path) writes the file at path."""
  grid = grid_from_results(res, configs)
  if grid is None:
    return False
  theory = theory_map(grid)
  content = summary(grid, theory, res.get('study', ''), res.get('collapse_rule', ''))

  def write_json(path):
    with open(path, 'w') as f:
      json.dump(content, f, indent=2)

  def write_png(path):
    import matplotlib.pyplot as plt
    fig = figure(grid, theory, res.get('study', ''))
    fig.savefig(path, dpi=100, format='png')  # format: the atomic writer's temporary name has no .png
    plt.close(fig)

  save('phase_diagram.json', write_json)
  save('phase_diagram.png', write_png)
  return True
