"""Real training beside the theory: does a trained linear predictor do what paper Sec. 4 says?

The theory (Tian, Chen & Ganguli 2021, Sec. 4; docs in /README.md "Theory") says that a linear predictor
W_p trained by SGD with weight decay becomes symmetric, its eigenvectors align with those of F = E[f f^T]
(f: the predictor input; Thm 3), and its eigenvalues settle on the invariant's parabola
s_j = p_j^2 / alpha_p + e^{-2 eta t} c_j, i.e. p_j^2 ~ alpha_p s_j once weight decay has forgotten c_j.
That last relation is what DirectPred hard-codes (p_j = sqrt(s_j / s_max) + eps).

In a real network the data are not isotropic (X != I) and F is the correlation of a deep network's
output, so only the proportionality p_j^2 ∝ s_j (slope 1 on a log-log plot) is a prediction: the BYOL
loss normalises both branches, so it is invariant to the scale of W_p, and alpha_p sets no visible scale.

This module reads the spectra that byol_jax.train logs for linear-type predictors (`spectral_stats`:
`corr_eigenvalues` s_j in descending order, `predictor_eigenvalues` p_j = u_j^T W_p u_j, `alignment`
cos(W_p u_j, u_j), `commutator_norm`, `asymmetry`) and returns
- `summarize`: the log-log fit of p_j^2 against s_j over the modes above a floor and over the top-k
  modes (slope, R^2, the slope-1 scale and its R^2), the asymmetry, commutator and mean |alignment| of the
  top-k modes, first and last, and the slopes at every logged step;
- `figure`: four panels (s_j and |p_j| over training; p_j^2 against s_j at the last logged steps with
  the theory's slope-1 line at a fitted scale; asymmetry and commutator over time; alignment over time);
- `write`: both into a workdir (`real_vs_theory.png`, `real_vs_theory.json`), called by plots.plot_run.
The figure and the summary take plain arrays too (`Spectra`), so theory/'s simulation can be drawn alike.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from byol_jax import rundir

SPECTRA_KEYS = ('corr_eigenvalues', 'predictor_eigenvalues', 'alignment', 'commutator_norm', 'asymmetry')
TOP_K = 10          # modes drawn in panels 1 and 4 and averaged in the alignment summary
# Modes with s_j < FLOOR * s_max are left out of the fits: float32 round-off and collapsed modes. Low, because
# the uncentred F of a real network has one dominant mode (the mean of f; s_1 / s_2 ~ 45 in a Fashion-MNIST
# run) and a floor relative to it would leave only two or three modes.
FLOOR = 1e-6
FILENAME = rundir.REAL_VS_THEORY


class Spectra(NamedTuple):
  """Logged spectra over time: steps [T]; s, p, alignment [T, d] (modes by descending s_j); asymmetry,
  commutator [T]."""
  steps: np.ndarray
  s: np.ndarray
  p: np.ndarray
  alignment: np.ndarray
  asymmetry: np.ndarray
  commutator: np.ndarray


def from_records(records: list[dict]) -> Spectra | None:
  """The spectra in metrics.jsonl records (None when no record has them, e.g. an MLP predictor)."""
  rows = [r for r in records if all(k in r for k in SPECTRA_KEYS)]
  if not rows:
    return None
  arr = lambda key: np.array([r[key] for r in rows], dtype=np.float64)
  return Spectra(np.array([r['step'] for r in rows]), arr('corr_eigenvalues'), arr('predictor_eigenvalues'),
                 arr('alignment'), arr('asymmetry'), arr('commutator_norm'))


def from_theory(times, metrics: dict) -> Spectra:
  """theory.linear_net.train's (times, metrics) with basis=None (modes by descending s_j)."""
  m = {k: np.asarray(v, np.float64) for k, v in metrics.items()}
  return Spectra(np.asarray(times), m['f_eigenvalues'], m['p'], m['alignment'], m['asymmetry'],
                 m['commutator_rel'])


def loglog_fit(s, p, floor: float = FLOOR, top_k: int | None = None) -> dict:
  """Least-squares fit of log p_j^2 = slope log s_j + b over the modes with s_j >= floor * max(s) and
  p_j != 0 (only the `top_k` largest s_j, if given; s in descending order). Also the theory's slope-1 line
  log p^2 = log s + log k (k: the geometric mean of p^2 / s) and its R^2 (1 - residual / total variance of
  log p^2; may be negative when slope 1 fits worse than a constant). NaN where fewer than 3 modes qualify."""
  s, p = np.asarray(s, np.float64), np.asarray(p, np.float64)
  smax = np.max(s) if s.size else 0.0
  used = (s >= floor * smax) & (s > 0) & (p != 0) & np.isfinite(s) & np.isfinite(p)
  if top_k is not None:
    used &= np.arange(s.size) < top_k
  out = {'modes_used': int(used.sum()), 'modes': int(s.size), 'floor': floor,
         'negative_p_fraction': float(np.mean(p[used] < 0)) if used.any() else float('nan')}
  nan = dict(slope=float('nan'), intercept=float('nan'), r2=float('nan'), scale=float('nan'),
             r2_slope1=float('nan'))
  if used.sum() < 3:
    return {**out, **nan}
  x, y = np.log(s[used]), np.log(p[used] ** 2)
  var_y = np.sum((y - y.mean()) ** 2)
  if np.ptp(x) == 0:
    return {**out, **nan}
  slope, intercept = np.polyfit(x, y, 1)
  res = np.sum((y - (slope * x + intercept)) ** 2)
  log_k = np.mean(y - x)
  res1 = np.sum((y - (x + log_k)) ** 2)
  r2 = 1.0 - res / var_y if var_y > 0 else 1.0
  r2_1 = 1.0 - res1 / var_y if var_y > 0 else (1.0 if res1 < 1e-20 else float('-inf'))
  return {**out, 'slope': float(slope), 'intercept': float(intercept), 'r2': float(r2),
          'scale': float(np.exp(log_k)), 'r2_slope1': float(r2_1)}


def top_alignment(alignment, top_k: int = TOP_K) -> np.ndarray:
  """Mean |cos(W_p u_j, u_j)| over the top_k modes (largest s_j), per logged step. |.|: an aligned
  eigenvector with a negative p_j counts as aligned. A random W_p in d dims gives ~sqrt(2 / (pi d))."""
  a = np.atleast_2d(np.asarray(alignment, np.float64))
  return np.mean(np.abs(a[:, :top_k]), axis=1)


def summarize(sp: Spectra, top_k: int = TOP_K, floor: float = FLOOR) -> dict:
  """The fits at the last logged step (all modes above the floor; the top_k modes), the slope at every
  logged step, and how the predictor's symmetry, commutation with F and alignment went (first, final)."""
  fit = loglog_fit(sp.s[-1], sp.p[-1], floor)
  fit_top = loglog_fit(sp.s[-1], sp.p[-1], floor, top_k)
  align = top_alignment(sp.alignment, top_k)
  slopes = [loglog_fit(s, p, floor)['slope'] for s, p in zip(sp.s, sp.p)]
  slopes_top = [loglog_fit(s, p, floor, top_k)['slope'] for s, p in zip(sp.s, sp.p)]
  out = {
      'step': int(sp.steps[-1]),
      'first_step': int(sp.steps[0]),
      'loglog_slope': fit['slope'],
      'loglog_r2': fit['r2'],
      'slope1_scale': fit['scale'],
      'slope1_r2': fit['r2_slope1'],
      'modes_used': fit['modes_used'],
      'loglog_slope_topk': fit_top['slope'],
      'loglog_r2_topk': fit_top['r2'],
      'slope1_r2_topk': fit_top['r2_slope1'],
      'modes': fit['modes'],
      'floor': floor,
      'negative_p_fraction': fit['negative_p_fraction'],
      'top_k': int(min(top_k, sp.s.shape[1])),
      'alignment_topk_first': float(align[0]),
      'alignment_topk_final': float(align[-1]),
      'asymmetry_first': float(sp.asymmetry[0]),
      'asymmetry_final': float(sp.asymmetry[-1]),
      'commutator_first': float(sp.commutator[0]),
      'commutator_final': float(sp.commutator[-1]),
      'steps_logged': [int(x) for x in sp.steps],
      'loglog_slope_by_step': [_finite_or_none(v) for v in slopes],
      'loglog_slope_topk_by_step': [_finite_or_none(v) for v in slopes_top],
  }
  return {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in out.items()}


def _finite_or_none(v):
  """JSON has no NaN: a figure that could not be computed (too few modes) is None."""
  return float(v) if np.isfinite(v) else None


def directpred_curve(s, predictor: dict | None):
  """DirectPred's / DirectCopy's p_j as a function of s_j (the relation they hard-code), or None."""
  if not predictor or predictor.get('kind') not in ('directpred', 'directcopy'):
    return None
  import jax.numpy as jnp  # only here: the summary itself is plain numpy
  from byol_jax import spectral
  s = np.asarray(s, np.float64)
  if predictor['kind'] == 'directcopy':
    return np.maximum(s, 0) / max(np.max(s), 1e-30) + predictor.get('eps', 0.1)
  return np.asarray(spectral.directpred_eigenvalues(jnp.asarray(s, jnp.float32), predictor.get('eps', 0.1),
                                                    predictor.get('power', 2.0),
                                                    predictor.get('eps_inside', False)), np.float64)


def figure(sp: Spectra, title: str = '', top_k: int = TOP_K, floor: float = FLOOR,
           predictor: dict | None = None, last: int = 3, xlabel: str = 'step'):
  """The four-panel figure (matplotlib Figure). `predictor` (config.predictor as a dict) adds DirectPred's
  or DirectCopy's construction curve to panel 2; `last` logged steps are drawn there (the last one fitted)."""
  import matplotlib.pyplot as plt
  k = min(top_k, sp.s.shape[1])
  colors = plt.cm.viridis(np.linspace(0, 0.9, k))
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  ax = axes[0, 0]
  for j in range(k):
    ax.plot(sp.steps, np.maximum(sp.s[:, j], 1e-12), color=colors[j], lw=1)
    ax.plot(sp.steps, np.maximum(np.abs(sp.p[:, j]), 1e-12), color=colors[j], lw=1, ls='--')
  ax.set(yscale='log', xlabel=xlabel, ylabel='s_j (solid), |p_j| (dashed)',
         title=f'top {k} modes of F: s_j and p_j = u_j^T W_p u_j')
  ax = axes[0, 1]
  fit = loglog_fit(sp.s[-1], sp.p[-1], floor)
  for i, t in enumerate(range(max(0, len(sp.steps) - last), len(sp.steps))):
    s, p = sp.s[t], sp.p[t]
    smax = np.max(s)
    keep = (s >= floor * smax) & (s > 0) & (p != 0)
    final = t == len(sp.steps) - 1
    alpha = 1.0 if final else 0.25 + 0.2 * i
    size = np.where(np.arange(s.size) < k, 30, 10)
    for sign, mark, color, name in ((p > 0, 'o', 'C0', 'p > 0'), (p < 0, 'x', 'C3', 'p < 0')):
      sel = keep & sign
      ax.scatter(s[sel], p[sel] ** 2, s=size[sel], marker=mark, color=color, alpha=alpha,
                 label=f'{xlabel} {sp.steps[t]:g}, {name} (top {k}: large)' if final and sel.any() else None)
    if final:
      low = (~keep) & (s > 0) & (p != 0)
      ax.scatter(s[low], p[low] ** 2, s=8, color='0.6', label=f's < {floor:g} s_max (not fitted)'
                 if low.any() else None)
  s_last = sp.s[-1]
  fitted = s_last[(s_last >= floor * np.max(s_last)) & (s_last > 0) & (sp.p[-1] != 0)]
  grid = np.geomspace(np.min(fitted), np.max(fitted), 50) if fitted.size else None
  if np.isfinite(fit['slope']) and grid is not None:
    ax.plot(grid, fit['scale'] * grid, 'k--', lw=1.2, label=f'theory p^2 ∝ s (slope 1), R^2 {fit["r2_slope1"]:.2f}')
    ax.plot(grid, np.exp(fit['intercept']) * grid ** fit['slope'], 'C1', lw=1.2,
            label=f'fit: slope {fit["slope"]:.2f}, R^2 {fit["r2"]:.2f}')
  fit_top = loglog_fit(s_last, sp.p[-1], floor, k)
  if np.isfinite(fit_top['slope']):
    g = np.geomspace(s_last[min(k, s_last.size) - 1], s_last[0], 20)
    ax.plot(g, np.exp(fit_top['intercept']) * g ** fit_top['slope'], 'C4', lw=2,
            label=f'fit, top {k}: slope {fit_top["slope"]:.2f}, R^2 {fit_top["r2"]:.2f}')
  curve = directpred_curve(s_last, predictor)
  if curve is not None:
    order = np.argsort(s_last)
    pos = s_last[order] > 0
    ax.plot(s_last[order][pos], curve[order][pos] ** 2, 'C2:', lw=2,
            label=f'{predictor["kind"]} construction (eps {predictor.get("eps", 0.1):g})')
  ax.set(xscale='log', yscale='log', xlabel='s_j', ylabel='p_j^2',
         title=f'p_j^2 against s_j ({fit["modes_used"]} of {fit["modes"]} modes fitted)')
  ax.legend(fontsize=7)
  ax = axes[1, 0]
  ax.plot(sp.steps, np.maximum(sp.asymmetry, 1e-12), label='asymmetry ||W_p - W_p^T|| / ||W_p||')
  ax.plot(sp.steps, np.maximum(sp.commutator, 1e-12), label='commutator ||[F, W_p]|| / (||F|| ||W_p||)')
  ax.set(yscale='log', xlabel=xlabel, title='symmetry of W_p and commutation with F')
  ax.legend(fontsize=8)
  ax = axes[1, 1]
  for j in range(k):
    ax.plot(sp.steps, sp.alignment[:, j], color=colors[j], lw=0.7, alpha=0.7)
  ax.plot(sp.steps, top_alignment(sp.alignment, k), 'k', lw=2, label=f'mean |cos| of the top {k}')
  d = sp.s.shape[1]
  ax.axhline(np.sqrt(2 / (np.pi * d)), color='0.5', ls=':', label=f'random W_p (d = {d})')
  ax.set(xlabel=xlabel, ylabel='cos(W_p u_j, u_j)', ylim=(-1.05, 1.05), title='eigenvector alignment')
  ax.legend(fontsize=8)
  for ax in axes.ravel():
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def _workdir_predictor(workdir: str) -> dict | None:
  return (rundir.read_config(workdir) or {}).get('predictor')


def write(records: list[dict], workdir: str, dpi: int = 100) -> tuple[list[str], dict]:
  """real_vs_theory.png and real_vs_theory.json in `workdir` from a run's metrics.jsonl records.
  Returns (paths written, summary); ([], {}) when the records have no spectra."""
  sp = from_records(records)
  if sp is None:
    return [], {}
  predictor = _workdir_predictor(workdir)
  summary = summarize(sp)
  if predictor:
    summary['predictor_kind'] = predictor.get('kind')
    curve = directpred_curve(sp.s[-1], predictor)
    if curve is not None:  # the logged p_j against the construction: ~0 by design (freq 1, eigh)
      summary['construction_max_abs_error'] = float(np.max(np.abs(sp.p[-1] - curve)))
  import matplotlib.pyplot as plt
  kind = (predictor or {}).get('kind', '')
  fig = figure(sp, title=f'{kind} predictor: real training beside the theory'.strip(), predictor=predictor)
  png = os.path.join(workdir, FILENAME + '.png')
  fig.savefig(png, dpi=dpi)
  plt.close(fig)
  path = os.path.join(workdir, FILENAME + '.json')
  with open(path, 'w') as f:
    json.dump(summary, f, indent=2)
  return [png, path], summary
