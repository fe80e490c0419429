"""PNG plots of a run, drawn from its metrics.jsonl: loss, probe accuracy, spectra of F and W_p, and (for
linear-type predictors) the spectra beside the theory (byol_jax/real_vs_theory.py: real_vs_theory.png/.json)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from byol_jax import real_vs_theory  # noqa: E402


def _series(records, key):
  rows = [(r['step'], r[key]) for r in records if key in r and isinstance(r[key], (int, float))]
  return (np.array([s for s, _ in rows]), np.array([v for _, v in rows])) if rows else (None, None)


def plot_run(records: list[dict], workdir: str) -> list[str]:
  written = []
  steps, loss = _series(records, 'loss')
  if steps is not None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, loss)
    ax.set(xlabel='step', ylabel='SSL loss', title='training loss')
    ax.grid(alpha=0.3)
    written.append(_save(fig, workdir, 'loss.png'))
  fig, ax = plt.subplots(figsize=(6, 4))
  drew = False
  for key, label in (('linear_probe_top1', 'offline linear probe'), ('knn_top1', 'kNN (k=200)'),
                     ('probe_top1', 'online probe (train views)')):
    s, v = _series(records, key)
    if s is not None:
      ax.plot(s, v, marker='o' if key != 'probe_top1' else None, label=label)
      drew = True
  if drew:
    ax.set(xlabel='step', ylabel='top-1 accuracy', title='representation quality')
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(_save(fig, workdir, 'accuracy.png'))
  else:
    plt.close(fig)
  spectra = [r for r in records if 'corr_eigenvalues' in r]
  if spectra:
    steps = np.array([r['step'] for r in spectra])
    s = np.array([r['corr_eigenvalues'] for r in spectra])
    p = np.array([r['predictor_eigenvalues'] for r in spectra])
    a = np.array([r['alignment'] for r in spectra])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, np.log10(np.maximum(s, 1e-12)), lw=0.7)
    axes[0].set(xlabel='step', ylabel='log10 s_j', title='eigenvalues of F')
    axes[1].plot(steps, p, lw=0.7)
    axes[1].set(xlabel='step', ylabel='p_j = u_j^T W_p u_j', title='W_p eigenvalues (F basis)')
    axes[2].plot(steps, a, lw=0.7)
    axes[2].set(xlabel='step', ylabel='cos(W_p u_j, u_j)', title='eigenspace alignment', ylim=(-1.05, 1.05))
    for ax in axes:
      ax.grid(alpha=0.3)
    written.append(_save(fig, workdir, 'spectra.png'))
    written += real_vs_theory.write(records, workdir)[0]
  return written


def _save(fig, workdir, name):
  path = os.path.join(workdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
