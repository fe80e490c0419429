"""Mode recruitment: when the modes of F (the predictor input's correlation) grow, and how many a run keeps.

The paper's per-mode dynamics grow a mode j at a rate set by its predictor eigenvalue p_j: a predictor that
gives small modes a small p_j (DirectPred's p_j = sqrt(s_j / s_max) + eps) recruits them later than one that is
flat over the live modes. These quantities make that measurable from the spectra a run logs (metrics.jsonl,
read by byol_jax.real_vs_theory.from_records; s_j in descending order every `train.spectra_every` steps):
- `recruitment_steps`: the first logged step at which the k-th largest eigenvalue passes RECRUIT_FRACTION of
  the first (k = 2..5); None where it never does;
- `modes_above`: the number of modes with s_j >= LIVE_FRACTION s_1 at every logged step;
- `summarize`: both, the mean mode count over the second half of the run, and the log-log slope of p_j^2
  against s_j over the live modes (s_j >= SLOPE_FLOOR s_1) beside the slope over all modes above
  real_vs_theory.FLOOR (the one real_vs_theory reports), at the last logged step.
Pure functions of arrays; the study tool aggregates them over rows and seeds (byol_jax/study/recruitment.py).
"""
from __future__ import annotations

import numpy as np

from byol_jax import real_vs_theory

RECRUIT_FRACTION = 0.1  # mode k is recruited once s_k >= 0.1 s_1
LIVE_FRACTION = 1e-2    # a mode counts as kept while s_j >= 1e-2 s_1
SLOPE_FLOOR = 1e-3      # the live-mode slope fits the modes with s_j >= 1e-3 s_1
MODES = (2, 3, 4, 5)


def _ratios(s: np.ndarray) -> np.ndarray:
  """s_j / s_1 per logged step ([T, d]; s in descending order); 0 where s_1 <= 0."""
  s = np.atleast_2d(np.asarray(s, np.float64))
  top = s[:, :1]
  return np.where(top > 0, s / np.where(top > 0, top, 1.0), 0.0)


def recruitment_steps(steps, s, modes=MODES, fraction: float = RECRUIT_FRACTION) -> dict[int, int | None]:
  """{k: the first logged step with s_k >= fraction s_1, or None} for each k in `modes` (1-based)."""
  ratios, steps = _ratios(s), np.asarray(steps)
  out = {}
  for k in modes:
    hit = np.nonzero(ratios[:, k - 1] >= fraction)[0] if k <= ratios.shape[1] else []
    out[k] = int(steps[hit[0]]) if len(hit) else None
  return out


def modes_above(s, fraction: float = LIVE_FRACTION) -> np.ndarray:
  """The number of modes with s_j >= fraction s_1, per logged step ([T])."""
  return np.sum(_ratios(s) >= fraction, axis=1)


def summarize(sp: real_vs_theory.Spectra) -> dict:
  """The recruitment quantities of one run's spectra (see the module docstring)."""
  steps = np.asarray(sp.steps)
  counts = modes_above(sp.s)
  late = steps >= steps[-1] / 2
  live = real_vs_theory.loglog_fit(sp.s[-1], sp.p[-1], SLOPE_FLOOR)
  every = real_vs_theory.loglog_fit(sp.s[-1], sp.p[-1])
  return {
      'recruitment_steps': {str(k): v for k, v in recruitment_steps(steps, sp.s).items()},
      'steps': steps.tolist(),
      'modes_above': counts.tolist(),
      'modes_above_final': int(counts[-1]),
      'modes_above_late_mean': float(np.mean(counts[late])),
      'live_slope': live['slope'],
      'live_modes': live['modes_used'],
      'all_slope': every['slope'],
      'all_modes': every['modes_used'],
      'recruit_fraction': RECRUIT_FRACTION, 'live_fraction': LIVE_FRACTION, 'slope_floor': SLOPE_FLOOR,
  }
