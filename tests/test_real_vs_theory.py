"""byol_jax.study.real_vs_theory: the log-log fit of p_j^2 against s_j, the summary and the figure, on synthetic spectra."""
import json
import os

import numpy as np
import pytest

from byol_jax.study import real_vs_theory as rvt


def synthetic(steps=(10, 20, 30), d=16, k=0.3, power=1.0, seed=0):
  """Spectra with p_j^2 = k s_j^power at every step; asymmetry and commutator halve each step; alignment
  rises from 0.1 to 1."""
  rng = np.random.default_rng(seed)
  t = len(steps)
  s = np.sort(np.exp(rng.uniform(-6, 0, (t, d))), axis=1)[:, ::-1]
  p = np.sqrt(k * s ** power)
  align = np.linspace(0.1, 1.0, t)[:, None] * np.ones((t, d))
  asym = 0.8 * 0.5 ** np.arange(t)
  return rvt.Spectra(np.array(steps), s, p, align, asym, asym / 4)


def test_exact_proportionality_gives_slope_one_and_r2_one():
  sp = synthetic(k=0.3)
  fit = rvt.loglog_fit(sp.s[-1], sp.p[-1], floor=0.0)
  assert fit['slope'] == pytest.approx(1.0, abs=1e-10)
  assert fit['r2'] == pytest.approx(1.0, abs=1e-10)
  assert fit['r2_slope1'] == pytest.approx(1.0, abs=1e-10)
  assert fit['scale'] == pytest.approx(0.3, rel=1e-10)
  assert fit['modes_used'] == 16 and fit['negative_p_fraction'] == 0.0
  # The sign of p_j does not enter p_j^2: flipping some modes changes only negative_p_fraction.
  p = sp.p[-1].copy()
  p[::2] *= -1
  flipped = rvt.loglog_fit(sp.s[-1], p, floor=0.0)
  assert flipped['slope'] == pytest.approx(1.0, abs=1e-10) and flipped['negative_p_fraction'] == 0.5


def test_other_power_law_gives_its_slope_and_a_worse_slope_one_fit():
  sp = synthetic(power=0.5)
  fit = rvt.loglog_fit(sp.s[-1], sp.p[-1], floor=0.0)
  assert fit['slope'] == pytest.approx(0.5, abs=1e-10) and fit['r2'] == pytest.approx(1.0, abs=1e-10)
  assert fit['r2_slope1'] < 0.5


def test_floor_leaves_out_small_modes_and_too_few_modes_give_nan():
  s = np.array([1.0, 0.5, 0.2, 0.1, 1e-6, 1e-7])
  p = np.sqrt(2 * s)
  p[4:] = 0.5  # modes below the floor that do not follow the law
  fit = rvt.loglog_fit(s, p, floor=1e-3)
  assert fit['modes_used'] == 4 and fit['slope'] == pytest.approx(1.0, abs=1e-10)
  assert rvt.loglog_fit(s, p, floor=0.0)['slope'] < 0.5
  assert np.isnan(rvt.loglog_fit(s[:2], p[:2])['slope'])


def test_summary_reports_first_and_final_values():
  sp = synthetic(k=2.0)
  out = rvt.summarize(sp, top_k=4)
  assert out['loglog_slope'] == pytest.approx(1.0, abs=1e-10) and out['loglog_r2'] == pytest.approx(1.0)
  assert out['slope1_scale'] == pytest.approx(2.0)
  assert out['asymmetry_first'] == pytest.approx(0.8) and out['asymmetry_final'] == pytest.approx(0.2)
  assert out['commutator_final'] == pytest.approx(0.05)
  assert out['alignment_topk_first'] == pytest.approx(0.1) and out['alignment_topk_final'] == pytest.approx(1.0)
  assert out['step'] == 30 and out['steps_logged'] == [10, 20, 30] and out['top_k'] == 4
  assert out['loglog_slope_by_step'] == pytest.approx([1.0, 1.0, 1.0])
  json.dumps(out, allow_nan=False)  # valid JSON


def test_write_makes_png_and_json_from_records(tmp_path):
  sp = synthetic()
  records = [{'step': 1, 'loss': 1.0}]
  for i, step in enumerate(sp.steps):
    records.append({'step': int(step), 'loss': 0.5, 'corr_eigenvalues': sp.s[i].tolist(),
                    'predictor_eigenvalues': sp.p[i].tolist(), 'alignment': sp.alignment[i].tolist(),
                    'asymmetry': float(sp.asymmetry[i]), 'commutator_norm': float(sp.commutator[i])})
  paths, summary = rvt.write(records, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ['real_vs_theory.png', 'real_vs_theory.json']
  assert os.path.getsize(paths[0]) > 5000
  assert json.load(open(paths[1]))['loglog_slope'] == pytest.approx(1.0, abs=1e-8) == summary['loglog_slope']
  assert rvt.write([{'step': 1, 'loss': 1.0}], str(tmp_path / 'none')) == ([], {})


def test_directpred_construction_curve_matches_its_eigenvalues(tmp_path):
  s = np.geomspace(1.0, 1e-5, 12)
  p = np.sqrt(s) + 0.1  # DirectPred, eps 0.1 (s_max = 1)
  curve = rvt.directpred_curve(s, {'kind': 'directpred', 'eps': 0.1, 'power': 2.0, 'eps_inside': False})
  np.testing.assert_allclose(curve, p, rtol=1e-5)
  assert rvt.directpred_curve(s, {'kind': 'linear'}) is None
  fig = rvt.figure(rvt.Spectra(np.array([1, 2]), np.stack([s, s]), np.stack([p, p]), np.ones((2, 12)),
                               np.zeros(2), np.zeros(2)), predictor={'kind': 'directpred', 'eps': 0.1})
  fig.savefig(tmp_path / 'f.png')
