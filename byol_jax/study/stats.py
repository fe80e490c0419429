"""A study's statistics, as pure functions of numbers: per-row statistics over seeds, paired differences against
a reference row with their verdict, and a row's verdict. results.py reads the run directories and writes the
tables and figures."""
from __future__ import annotations

import math

import numpy as np


def seed_stats(values: list) -> dict:
  """mean, sample std (ddof=1; None with one value), per_seed and n of the values that are not None."""
  vals = [float(v) for v in values if v is not None]
  n = len(vals)
  return {'mean': float(np.mean(vals)) if n else None,
          'std': float(np.std(vals, ddof=1)) if n > 1 else None,
          'per_seed': [None if v is None else float(v) for v in values], 'n': n}


def t_quantile(q: float, df: int) -> float:
  from scipy import stats
  return float(stats.t.ppf(q, df))


ONE_POINT = 0.01  # one point of accuracy: the resolution the studies are sized for and the 'equal' margin


def seeds_to_resolve(std: float, half_width: float = ONE_POINT, max_seeds: int = 1000) -> int | None:
  """The smallest number of paired seeds whose 95% t-interval is within +-half_width at this per-seed std."""
  if not std:
    return 2
  for n in range(2, max_seeds + 1):
    if t_quantile(0.975, n - 1) * std / math.sqrt(n) <= half_width:
      return n
  return None


def paired_difference(values: dict, reference: dict) -> dict:
  """The paired difference row - reference over the seeds both have ({seed: value} each): mean, sample std,
  95% t-interval, n, the verdict and the seeds that would resolve a 1-point (0.01) difference at the measured
  spread.

  The verdict: 'ahead' or 'behind' where the interval excludes 0; 'equal within 1 point' where it holds 0 and
  lies inside +-1 point (an equivalence reading, conservative: each side excluded at 2.5%); otherwise 'not
  resolved at n seeds'."""
  seeds = sorted(k for k in values if k in reference and values[k] is not None and reference[k] is not None)
  d = np.array([values[k] - reference[k] for k in seeds], np.float64)
  n = len(seeds)
  out = {'seeds': seeds, 'per_seed': d.tolist(), 'n': n, 'mean': float(d.mean()) if n else None,
         'std': None, 'ci95': None, 'verdict': 'no paired seeds' if not n else f'not resolved at {n} seed',
         'seeds_to_resolve_1pt': None}
  if n < 2:
    return out
  std = float(d.std(ddof=1))
  half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
  lo, hi = out['mean'] - half, out['mean'] + half
  if lo > 0:
    verdict = 'ahead'
  elif hi < 0:
    verdict = 'behind'
  elif -ONE_POINT < lo and hi < ONE_POINT:
    verdict = 'equal within 1 point'
  else:
    verdict = f'not resolved at {n} seeds'
  out.update(std=std, ci95=[lo, hi], verdict=verdict, seeds_to_resolve_1pt=seeds_to_resolve(std))
  return out


def row_verdict(n_done, n_coll, n_div, seeds) -> str:
  """A row in words: collapsed or not (n_coll of n_done finished seeds), diverged seeds, seeds still to run."""
  if n_done == 0 and n_div == 0:
    return 'not run'
  parts = []
  if n_done:
    if n_coll == 0:
      parts.append('not collapsed')
    elif n_coll == n_done:
      parts.append(f'collapsed ({n_coll}/{n_done} seeds)')
    else:
      parts.append(f'partly collapsed ({n_coll}/{n_done} seeds)')
  if n_div:
    parts.append(f'diverged ({n_div} seed{"s" if n_div > 1 else ""})')
  if n_done + n_div < seeds:
    parts.append(f'{n_done + n_div}/{seeds} seeds run')
  return ', '.join(parts)
