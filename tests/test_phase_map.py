"""The weight decay x EMA rate phase diagram (byol_jax/study/phase_map.py) and the lr sweep (lr_sweep.py) a study
writes beside its results.

Fake run folders (a summary.json per run, no training): a 2x2 grid of symmetric linear predictor rows with
one cell not run, and the tiny study's mlp / none rows, which form no grid."""
import json
import math
import os

import numpy as np
import pytest

from byol_jax.study import lr_sweep, phase_map, plan as plan_lib, records, results
from byol_jax import config as config_lib
from byol_jax.config import load_config_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR, STEPS = 0.1, 400
GRID_ROWS = {'wd0_tau0': 'linear_sym,wd0,tau0', 'wd0_tau0p99': 'linear_sym,wd0,tau0.99',
             'wd4e-2_tau0': 'linear_sym,wd4e-2,tau0', 'wd4e-2_tau0p99': 'linear_sym,wd4e-2,tau0.99'}


def fake_study(rows=None):
  c = load_config_module(os.path.join(ROOT, 'configs', 'study', 'x.py'), 'tiny.py').get_config()
  with c.unlocked():
    config_lib.override(c, {'seeds': 1, 'base.optim.lr': LR, 'base.train.steps': STEPS,
                            'base.ema.target_init': 'independent'})
    if rows is not None:
      c.rows = type(c.rows)(rows)
      c.paper = type(c.rows)()
  return c


def fake_run(workdir, row, z_std_times_sqrt_d, z_rank=10.0):
  path = records.run_dir(workdir, row, 0)
  os.makedirs(path)
  with open(os.path.join(path, 'summary.json'), 'w') as f:
    json.dump({'steps': STEPS, 'final_linear_probe_top1': 0.5, 'final_z_std_times_sqrt_d': z_std_times_sqrt_d,
               'final_z_effective_rank': z_rank,
               'real_vs_theory': {'loglog_slope_topk': z_std_times_sqrt_d, 'alignment_topk_final': 0.3}}, f)


def test_grid_study_writes_the_phase_diagram_with_both_maps(tmp_path):
  workdir = str(tmp_path)
  fake_run(workdir, 'wd0_tau0', 0.02, 1.2)         # collapsed (no EMA)
  fake_run(workdir, 'wd4e-2_tau0', 0.01, 1.1)      # collapsed
  fake_run(workdir, 'wd4e-2_tau0p99', 0.7)         # spread; wd0_tau0p99 not run
  results.write_results(fake_study(GRID_ROWS), workdir)
  assert os.path.getsize(os.path.join(workdir, 'phase_diagram.png')) > 20_000
  out = json.load(open(os.path.join(workdir, 'phase_diagram.json')))
  momentum = fake_study(GRID_ROWS).base.optim.momentum
  assert out['eta_c'] == pytest.approx(0.25) and out['maps']['paper']['t_end'] == pytest.approx(LR * STEPS)
  assert out['maps']['sgd']['t_end'] == pytest.approx(LR * STEPS / (1 - momentum))
  assert out['theory_mode'] == {'p0': 0.4, 's0': pytest.approx(0.16), 'tau0': 0.1}
  cells = {c['row']: c for c in out['cells']}
  assert set(cells) == set(GRID_ROWS)
  for c in cells.values():
    paper, sgd = c['theory']['paper'], c['theory']['sgd']
    assert paper['eta'] == pytest.approx(c['wd'] / LR) and paper['beta'] == pytest.approx((1 - c['tau']) / LR)
    assert sgd['eta'] == pytest.approx(c['wd']) and sgd['beta'] == pytest.approx((1 - c['tau']) * (1 - momentum) / LR)
    # Theory: above eta_c = 1/4 every mode collapses (the paper's map puts wd 4e-2 at eta 0.4); the SGD map puts
    # every cell (eta <= 0.04) below it.
    assert paper['collapsed'] == (paper['eta'] > out['eta_c']), c
  assert cells['wd4e-2_tau0']['theory']['paper']['eta'] == pytest.approx(0.4)
  assert cells['wd0_tau0']['theory']['paper']['beta'] == pytest.approx(10.0)
  assert not cells['wd4e-2_tau0']['theory']['sgd']['collapsed']
  assert cells['wd0_tau0']['theory']['paper']['s_end'] > 0.1
  # Real: the verdicts and values of results.json; the cell not run is compared with nothing.
  assert cells['wd0_tau0p99']['real_state'] == 'not run' and cells['wd0_tau0p99']['theory']['paper']['agree'] is None
  assert cells['wd0_tau0']['real_collapsed'] is True and cells['wd0_tau0']['theory']['paper']['agree'] is False
  assert cells['wd4e-2_tau0p99']['real_z_std_times_sqrt_d'] == pytest.approx(0.7)
  assert cells['wd4e-2_tau0p99']['theory']['paper']['agree'] is False
  assert cells['wd4e-2_tau0']['theory']['paper']['agree'] is True
  assert out['agreement']['paper'] == {'cells_compared': 3, 'cells_agreeing': 1}
  # The angular step grows with wd at the grid's one lr; wd4e-2_tau0p99 (spread) steps as far as wd4e-2_tau0
  # (collapsed), so no threshold separates them, and the wd-0 cell (no equilibrium) does not count.
  assert cells['wd4e-2_tau0']['angular_step'] == pytest.approx(math.sqrt(2 * LR * 4e-2 / (1 + momentum)))
  assert cells['wd0_tau0']['angular_step'] == 0.0
  assert out['angular_step']['separates'] is False
  assert out['angular_step']['largest_surviving'] == out['angular_step']['smallest_collapsed']
  assert not [f for f in os.listdir(workdir) if f.endswith('.tmp')]
  # results.json / .md carry the runs' real-vs-theory summaries (here: fake values) per row.
  res = json.load(open(os.path.join(workdir, 'results.json')))
  assert res['rows']['wd4e-2_tau0p99']['real_vs_theory']['loglog_slope_topk']['mean'] == pytest.approx(0.7)
  assert 'real_vs_theory' not in res['rows']['wd0_tau0p99']  # not run
  assert '| wd4e-2_tau0p99 | 0.70 | - | - | 0.30 | - |' in open(os.path.join(workdir, 'results.md')).read()


def test_no_grid_no_phase_diagram(tmp_path):
  workdir = str(tmp_path)
  fake_run(workdir, 'mlp', 0.7)
  fake_run(workdir, 'none', 0.02, 1.1)
  results.write_results(fake_study(), workdir)  # tiny's rows: mlp, none
  assert os.path.exists(os.path.join(workdir, 'results.png'))
  assert not os.path.exists(os.path.join(workdir, 'phase_diagram.png'))
  assert not os.path.exists(os.path.join(workdir, 'phase_diagram.json'))


@pytest.mark.parametrize('rows', [
    {k: v for k, v in GRID_ROWS.items() if k != 'wd0_tau0'},                       # 3 of 4 cells
    {**GRID_ROWS, 'wd4e-2_tau0p99': 'linear,wd4e-2,tau0.99,alphap2'},             # alpha_p differs
    {**GRID_ROWS, 'wd0_tau0': 'mlp,wd0,tau0'},                                    # not a linear predictor
    {'a': 'linear_sym,wd0,tau0', 'b': 'linear_sym,wd0,tau0.99'},                   # one weight decay
])
def test_grid_detection_needs_a_full_grid_of_linear_predictor_runs(rows):
  study = fake_study(rows)
  configs = {r: records.config_json(plan_lib.run_config(study, r, 0)) for r in rows}
  res = results.collect(study, '/nonexistent')
  assert phase_map.grid_from_results(res, configs) is None
  full = fake_study(GRID_ROWS)
  configs = {r: records.config_json(plan_lib.run_config(full, r, 0)) for r in GRID_ROWS}
  grid = phase_map.grid_from_results(results.collect(full, '/nonexistent'), configs)
  assert grid['wds'] == [0.0, 0.04] and grid['taus'] == [0.0, 0.99]
  assert grid['t_end']['paper'] == pytest.approx(40.0)


# ----------------------------------------------------------------------------------- byol_jax/study/lr_sweep.py
def sweep_rows():
  return load_config_module(os.path.join(ROOT, 'configs', 'study', 'x.py'), 'lr_sweep.py').rows(LR, 0.987)


def test_lr_sweep_study_writes_the_real_network_beside_both_maps(tmp_path):
  workdir = str(tmp_path)
  rows = sweep_rows()
  for row in rows:  # fake outcome: wd / lr 0.4 collapses at every lr, 0.1 spreads
    fake_run(workdir, row, 0.02 if row.startswith('eta0p4') else 0.6, 1.1 if row.startswith('eta0p4') else 20.0)
  study = fake_study(rows)
  results.write_results(study, workdir)
  assert not os.path.exists(os.path.join(workdir, 'phase_diagram.json'))  # four lrs: no single-lr grid
  assert os.path.getsize(os.path.join(workdir, 'lr_sweep.png')) > 20_000
  out = json.load(open(os.path.join(workdir, 'lr_sweep.json')))
  momentum = study.base.optim.momentum
  assert out['maps']['paper']['t_end'] == pytest.approx(LR * STEPS)
  assert out['maps']['sgd']['t_end'] == pytest.approx(LR * STEPS / (1 - momentum))
  assert out['beta_paper_map'] == pytest.approx(0.13)
  by_row = {r['row']: r for r in out['rows']}
  assert set(by_row) == set(rows)
  for r in by_row.values():
    paper, sgd = r['theory']['paper'], r['theory']['sgd']
    assert r['lr'] * r['steps'] == pytest.approx(LR * STEPS) and (1 - r['tau']) / r['lr'] == pytest.approx(0.13)
    assert paper['eta'] == pytest.approx(r['eta']) and sgd['eta'] == pytest.approx(r['wd'])
    # Under the paper's map a line of fixed wd / lr is one theory point: one verdict, collapsed beyond eta_c.
    assert paper['collapsed'] == (r['eta'] > 0.25), r
    # Under the optimizer's map eta = wd (0-0.16, below eta_c); the slow beta = (1 - tau)(1 - m) / lr widens
    # the collapse basin (Obs#10) enough to take wd 0.08 and 0.16 only.
    assert sgd['collapsed'] == (r['wd'] > 0.05), r
  assert by_row['eta0p4_lr0p05']['wd'] == pytest.approx(by_row['eta0p1_lr0p2']['wd'])  # the same wd, both maps apart
  assert not any(by_row[f'eta0_lr{lr}']['theory'][m]['collapsed'] for lr in ('0p05', '0p1', '0p2', '0p4')
                 for m in ('paper', 'sgd'))  # the control line: no weight decay, every mode survives
  assert out['agreement'] == {'paper': {'rows_compared': 16, 'rows_agreeing': 16},
                              'sgd': {'rows_compared': 16, 'rows_agreeing': 14}}
  # The angular step sqrt(2 lr wd / (1 + m)): wd / lr 0.1 at lr 0.4 (spread here) steps farther than 0.4 at
  # lr 0.05 (collapsed), so no threshold on it separates this fake outcome.
  assert by_row['eta0p1_lr0p2']['angular_step'] == pytest.approx(math.sqrt(2 * 0.2 * 0.02 / (1 + momentum)))
  assert by_row['eta0_lr0p2']['angular_step'] == 0.0
  assert out['angular_step']['separates'] is False
  assert out['angular_step']['largest_surviving'] == pytest.approx(by_row['eta0p1_lr0p4']['angular_step'])
  assert out['angular_step']['smallest_collapsed'] == pytest.approx(by_row['eta0p4_lr0p05']['angular_step'])


def test_angular_step_separates_when_collapse_follows_lr_times_wd():
  rows = [{'angular_step': phase_map.angular_step(lr, wd, 0.9), 'wd': wd, 'real_collapsed': collapsed}
          for lr, wd, collapsed in ((0.2, 0.0, False), (0.1, 0.01, False), (0.05, 0.02, False), (0.2, 0.02, True),
                                    (0.1, 0.04, True), (0.3, 0.1, None))]  # the last one has no verdict yet
  sep = phase_map.angular_separation(rows)
  # Without weight decay there is no equilibrium: a collapsed wd-0 row (step 0) does not count against it.
  assert phase_map.angular_separation(rows + [{'angular_step': 0.0, 'wd': 0.0, 'real_collapsed': True}]) == sep
  assert sep['separates'] is True
  assert sep['largest_surviving'] == pytest.approx(math.sqrt(2 * 1e-3 / 1.9))
  assert sep['smallest_collapsed'] == pytest.approx(math.sqrt(2 * 4e-3 / 1.9))
  assert phase_map.angular_separation(rows[:3])['separates'] is False  # nothing collapsed: nothing to separate


@pytest.mark.parametrize('change', [
    {'eta0p1_lr0p2': 'linear_sym,lr0.2,wd0.02,tau0.99,epochs50'},    # beta differs
    {'eta0p1_lr0p2': 'linear_sym,lr0.2,wd0.02,tau0.974,epochs100'},  # theory time differs
    {'eta0p1_lr0p2': 'mlp,lr0.2,wd0.02,tau0.974,epochs50'},          # not a linear predictor
])
def test_lr_sweep_detection_needs_the_same_beta_and_theory_time(change):
  for rows, is_sweep in ((sweep_rows(), True), ({**sweep_rows(), **change}, False), (GRID_ROWS, False)):
    study = fake_study(rows)
    configs = {r: records.config_json(plan_lib.run_config(study, r, 0)) for r in rows}
    assert (lr_sweep.sweep_from_results(results.collect(study, '/nonexistent'), configs) is not None) == is_sweep


def test_theory_mode_collapsing_faster_than_the_ema_reads_collapsed_not_nan():
  # eta > beta: once s_j has gone, tau_j grows like exp((eta - beta) t) and overflows float32 well before
  # t = 1500 (the optimizer's map of a 1500-step run); the mode must still read collapsed, not NaN.
  s = phase_map.theory_s_end((0.375, 0.1, 0.0), (0.26919206,) * 3, 1500.0, 1.0, 0.1)  # a point that overflowed
  assert np.isfinite(s).all()
  assert s[0] < phase_map.THEORY_COLLAPSE_S            # above eta_c = 1/4: collapsed
  assert s[1] > 0.5 and s[2] > 0.5                     # below it, from p_j(0) = 0.4: grown
