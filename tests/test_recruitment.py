"""Mode recruitment (byol_jax/recruitment.py, byol_jax/study/recruitment.py) on spectra with a known answer."""
import json
import os

import numpy as np
import pytest

from byol_jax import real_vs_theory, recruitment
from byol_jax.study import recruitment as study_recruitment

STEPS = np.arange(100, 1100, 100)


def _history(offset=0):
  """s_1 = 10; mode k = 2..5 jumps from 0.005 s_1 to 0.2 s_1 at step 200 k + offset; mode 6 stays at 1e-4 s_1.
  p_j = s_j^0.25 (p_j^2 against s_j: slope 0.5) except mode 6, whose p is 1e-6 (it bends the all-mode fit)."""
  s = np.zeros((len(STEPS), 6))
  s[:, 0] = 10.0
  for k in range(2, 6):
    s[:, k - 1] = 10.0 * np.where(STEPS >= 200 * k + offset, 0.2 - 0.01 * k, 0.005 - 0.0005 * k)
  s[:, 5] = 10.0 * 1e-4
  p = s ** 0.25
  p[:, 5] = 1e-6
  return s, p


def test_recruitment_steps_and_mode_counts_on_a_known_history():
  s, p = _history()
  assert recruitment.recruitment_steps(STEPS, s) == {2: 400, 3: 600, 4: 800, 5: 1000}
  assert recruitment.recruitment_steps(STEPS, s, modes=(6,)) == {6: None}
  np.testing.assert_array_equal(recruitment.modes_above(s), [1, 1, 1, 2, 2, 3, 3, 4, 4, 5])
  sp = real_vs_theory.Spectra(STEPS, s, p, np.ones_like(s), np.zeros(len(STEPS)), np.zeros(len(STEPS)))
  out = recruitment.summarize(sp)
  assert out['modes_above_final'] == 5
  assert out['modes_above_late_mean'] == pytest.approx(np.mean([2, 3, 3, 4, 4, 5]))  # steps 500-1000
  assert out['live_slope'] == pytest.approx(0.5, abs=1e-9) and out['live_modes'] == 5
  assert out['all_modes'] == 6 and out['all_slope'] > 1.0  # mode 6's tiny p steepens the all-mode fit


def _write_run(path, s, p):
  os.makedirs(path)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for step, s_t, p_t in zip(STEPS, s, p):
      f.write(json.dumps({'step': int(step), 'corr_eigenvalues': s_t.tolist(), 'predictor_eigenvalues': p_t.tolist(),
                          'alignment': [1.0] * len(s_t), 'asymmetry': 0.0, 'commutator_norm': 0.0}) + '\n')
  with open(os.path.join(path, 'summary.json'), 'w') as f:
    json.dump({'steps': int(STEPS[-1])}, f)


def test_study_recruitment_aggregates_seeds_and_writes_table_and_figure(tmp_path):
  for seed, offset in enumerate((0, 100, 300)):
    _write_run(str(tmp_path / 'fast' / f'seed{seed}'), *_history(offset))
  _write_run(str(tmp_path / 'slow' / 'seed0'), *_history(1000))  # modes 2-5 never pass 0.1 s_1
  (tmp_path / 'unfinished' / 'seed0').mkdir(parents=True)
  result = study_recruitment.write_dir(str(tmp_path))
  fast = result['rows']['fast']
  assert fast['seeds'] == 3
  assert fast['recruitment_steps']['2'] == {'median': 500.0, 'recruited': 3, 'of': 3}  # 400, 500, 700
  assert fast['recruitment_steps']['5'] == {'median': None, 'recruited': 1, 'of': 3}  # 1000; 1100 and 1300 after the end
  assert result['rows']['slow']['modes_above_final']['mean'] == 1.0
  assert 'unfinished' not in result['rows']
  table = (tmp_path / 'recruitment.md').read_text()
  assert '| fast | 3 | 500 | 700 | 2/3 | 1/3 |' in table
  assert (tmp_path / 'recruitment.png').stat().st_size > 10_000


def test_theory_recruitment_orders_the_rules_on_the_linear_network():
  """The linear network's prediction: p linear in s with a high floor recruits F's 2nd mode first, a flatter power
  later (a p_j near 1 exceeds tau_j / (1 + sigma^2) and shrinks its mode), a projection never (theory/recruitment.py)."""
  from theory import recruitment as theory_recruitment
  rules = {k: theory_recruitment.RULES[k] for k in ('directpred_c4', 'directcopy_eps025', 'directpred_proj')}
  prediction = theory_recruitment.predict(rules, steps=1000, seeds=1, modes=(2,))
  assert theory_recruitment.order(prediction) == ['directcopy_eps025', 'directpred_c4', 'directpred_proj']
  assert prediction['directpred_proj']['steps'][2] == [None]
  assert '| directcopy_eps025 | 100 |' in theory_recruitment.markdown(prediction)


def test_a_study_draws_recruitment_for_its_linear_rows_only(tmp_path):
  """results.py's figure interface: `fits` wants a linear-type row; `write` measures only those rows' runs."""
  for row in ('fast', 'mlp_row'):
    _write_run(str(tmp_path / row / 'seed0'), *_history())
  configs = {'fast': {'predictor': {'kind': 'directpred'}}, 'mlp_row': {'predictor': {'kind': 'mlp'}}}
  assert study_recruitment.fits({}, configs) and not study_recruitment.fits({}, {'m': configs['mlp_row']})
  saved = {}

  def save(name, writer):
    writer(str(tmp_path / f'.{name}.tmp'))
    saved[name] = (tmp_path / f'.{name}.tmp').read_bytes()
  assert study_recruitment.write({}, configs, save, str(tmp_path))
  assert sorted(saved) == ['recruitment.json', 'recruitment.md', 'recruitment.png']
  assert list(json.loads(saved['recruitment.json'])['rows']) == ['fast']
  assert not study_recruitment.write({}, configs, save, str(tmp_path / 'empty'))
