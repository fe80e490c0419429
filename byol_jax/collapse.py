"""Collapse, measured: the dimensionality of a representation, and the rule that calls a run collapsed.

Accuracy alone cannot call collapse on Fashion-MNIST: the features of a randomly initialised network
already give a linear probe of ~0.73-0.79 (docs/study.md, "The random network, measured as training runs it"), and a collapsed projector output z leaves the
backbone features below it with much of that random-feature accuracy. So the rule looks at the
projector output z itself, which is what BYOL/SimSiam's loss acts on and what collapses:

* `z_std` (SimSiam, Chen & He 2021, Sec. 4.1): l2-normalise every row of z, take the std of each of the
  d dimensions over the examples, average over dimensions. For z spread over the unit sphere this is
  ~1/sqrt(d); for collapse (every z pointing the same way) it is 0. `z_std_times_sqrt_d` = z_std * sqrt(d)
  reads ~1 when spread, 0 when collapsed, whatever d is.
* `effective_rank` (Roy & Vetterli 2007, as RankMe, Garrido et al. 2023, uses it for SSL embeddings):
  exp of the entropy of p_k = sigma_k / sum(sigma) + eps, the singular values sigma of the UNCENTRED
  embedding matrix [N, d]. Between 1 (rank one) and d (all singular values equal). Uncentred on purpose:
  complete collapse (every example mapped to the same vector c != 0) then reads 1, while the centred
  matrix of a collapsed representation is its leftover noise, whose spectrum can look full rank. The
  price: a large common mean (e.g. post-ReLU backbone features, all positive) takes the first singular
  value, so uncentred ranks are for comparing runs of one network, not absolute dimension counts.
  `z_effective_rank` is measured on z, `feature_effective_rank` on the backbone features, both on the
  test split, at every evaluation.

The rule (`collapse_verdict`): a run is collapsed when z_std_times_sqrt_d < Z_STD_THRESHOLD or
z_effective_rank < Z_RANK_THRESHOLD. The thresholds and the runs they were read from are in docs/study.md
("The collapse rule").
"""
from __future__ import annotations

import math

import numpy as np

# See docs/study.md "The collapse rule". The random network, its BatchNorm statistics estimated from data (precise
# BN), reads z_std * sqrt(d) 0.81 and z effective rank 106 (d = 128); a completely collapsed run 0.06 and ~1.
Z_STD_THRESHOLD = 0.1   # z_std * sqrt(d) below an eighth of a random network's spread: collapsed
Z_RANK_THRESHOLD = 2.0  # effective rank of z: 1 is a single direction
RANDOM_Z_SPREAD = 0.81  # z_std * sqrt(d) of the random network: a run below half of it is called narrow
RANK_EPS = 1e-7         # RankMe's epsilon in p_k = sigma_k / sum(sigma) + eps


KEYS = ('z_effective_rank', 'feature_effective_rank', 'z_std', 'z_std_times_sqrt_d')


def effective_rank(x, eps: float = RANK_EPS) -> float:
  """exp(entropy(sigma / sum(sigma) + eps)) of the uncentred [N, d] matrix x (float64; 0 for x == 0)."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f'effective_rank expects a [N, d] matrix, got shape {x.shape}')
  s = np.linalg.svd(x, compute_uv=False)
  total = s.sum()
  if not np.isfinite(total) or total <= 0:
    return 0.0
  p = s / total + eps
  return float(np.exp(-np.sum(p * np.log(p))))


def normalized_std(z) -> float:
  """Mean over dimensions of the std (over examples, ddof=0) of the l2-normalised rows of z [N, d]."""
  z = np.asarray(z, np.float64)
  z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  return float(np.mean(np.std(z, axis=0)))


def collapse_stats(features, z) -> dict:
  """The four collapse indicators (python floats) of backbone features [N, D] and projections z [N, d]."""
  z_std = normalized_std(z)
  return {
      'z_effective_rank': effective_rank(z),
      'feature_effective_rank': effective_rank(features),
      'z_std': z_std,
      'z_std_times_sqrt_d': z_std * math.sqrt(np.shape(z)[1]),
  }


def collapse_verdict(final_eval: dict, d=None) -> tuple[bool, str]:
  """(collapsed, reason) from an evaluation record (or a summary's final_* values).

  `final_eval` needs z_std_times_sqrt_d (or z_std and `d`, an int or a config with model.projector_dim)
  and z_effective_rank; keys prefixed 'final_' are accepted too. Missing indicators give
  (False, 'not measured').
  """
  def get(key):
    v = final_eval.get(key, final_eval.get('final_' + key))
    return None if v is None else float(v)

  spread = get('z_std_times_sqrt_d')
  if spread is None and get('z_std') is not None and d is not None:
    dim = d if isinstance(d, int) else d.model.projector_dim
    spread = get('z_std') * math.sqrt(dim)
  rank = get('z_effective_rank')
  if spread is None and rank is None:
    return False, 'not measured'
  reasons = []
  if spread is not None and not spread >= Z_STD_THRESHOLD:  # NaN counts as collapsed
    reasons.append(f'z_std*sqrt(d) {spread:.3f} < {Z_STD_THRESHOLD}')
  if rank is not None and not rank >= Z_RANK_THRESHOLD:
    reasons.append(f'z effective rank {rank:.2f} < {Z_RANK_THRESHOLD}')
  if reasons:
    return True, 'collapsed: ' + '; '.join(reasons)
  parts = []
  if spread is not None:
    narrow = ' (narrow: below half a random network\'s)' if spread < RANDOM_Z_SPREAD / 2 else ''
    parts.append(f'z_std*sqrt(d) {spread:.2f}{narrow}')
  if rank is not None:
    parts.append(f'z effective rank {rank:.1f}')
  return False, 'not collapsed: ' + ', '.join(parts)
