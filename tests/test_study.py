"""The study runner (byol_jax/study/), the collapse indicators and rule (byol_jax/study/collapse.py), and the
switch language the study rows are written in (byol_jax/switches.py).

Runs use configs/study/tiny.py (synthetic data, width 4, 16 px, 4 steps, one device)."""
import json
import os
import signal
import subprocess
import sys
import time

import chex
import ml_collections
import numpy as np
import pytest

from byol_jax.study import collapse, plan as plan_lib, records, results, runner
from byol_jax import config as config_lib, switches
from byol_jax.config import load_config_module
from byol_jax.logging_utils import read_metrics
from study_helpers import tiny_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STL10 = load_config_module(os.path.join(ROOT, 'configs', 'x.py'), 'stl10.py')


def study_cli(workdir, *args):
  cmd = [sys.executable, '-m', 'byol_jax.study', '--config=configs/study/tiny.py', f'--workdir={workdir}', *args]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ---------------------------------------------------------------------------------------- collapse.py
def test_effective_rank_of_known_matrices():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(500, 1))
  assert collapse.effective_rank(u @ rng.normal(size=(1, 32))) == pytest.approx(1.0, abs=1e-3)   # rank 1
  q, _ = np.linalg.qr(rng.normal(size=(500, 32)))  # orthonormal columns: 32 equal singular values
  assert collapse.effective_rank(q) == pytest.approx(32.0, rel=1e-4)                              # isotropic
  assert collapse.effective_rank(q[:, :5] @ q[:, :5].T[:5]) == pytest.approx(5.0, rel=1e-3)      # 5 equal
  assert collapse.effective_rank(np.eye(16) * 3.0) == pytest.approx(16.0, rel=1e-4)              # scale-free
  assert collapse.effective_rank(np.zeros((10, 4))) == 0.0
  # Uncentred: every example the same vector (complete collapse) reads 1, whatever the offset.
  assert collapse.effective_rank(np.ones((100, 8)) * rng.normal(size=8)) == pytest.approx(1.0, abs=1e-3)


def test_normalized_std_spread_and_collapsed():
  rng = np.random.default_rng(1)
  d = 16
  spread = collapse.collapse_stats(rng.normal(size=(20_000, 8)), rng.normal(size=(20_000, d)))
  chex.assert_trees_all_close(spread['z_std_times_sqrt_d'], 1.0, atol=0.02)  # isotropic: 1/sqrt(d) per dim
  chex.assert_trees_all_close(spread['z_std'], 1.0 / np.sqrt(d), atol=0.005)
  assert spread['z_effective_rank'] > 15 and spread['feature_effective_rank'] > 7.5
  same = np.tile(rng.normal(size=(1, d)), (100, 1)) * rng.uniform(0.5, 2.0, size=(100, 1))  # one direction
  collapsed = collapse.collapse_stats(rng.normal(size=(100, 8)), same)
  assert collapsed['z_std_times_sqrt_d'] < 1e-6 and collapsed['z_effective_rank'] == pytest.approx(1.0, abs=1e-3)
  assert set(collapsed) == set(collapse.KEYS)


def test_collapse_verdict_thresholds():
  spread, rank = collapse.Z_STD_THRESHOLD, collapse.Z_RANK_THRESHOLD
  assert collapse.collapse_verdict({'z_std_times_sqrt_d': 0.7, 'z_effective_rank': 40.0})[0] is False
  assert collapse.collapse_verdict({'z_std_times_sqrt_d': spread / 2, 'z_effective_rank': 40.0})[0] is True
  assert collapse.collapse_verdict({'z_std_times_sqrt_d': 0.7, 'z_effective_rank': rank / 1.5})[0] is True
  # Not collapsed, but below half a random network's spread: said so.
  narrow = collapse.collapse_verdict({'z_std_times_sqrt_d': 0.15, 'z_effective_rank': 40.0})
  assert narrow[0] is False and 'narrow' in narrow[1]
  assert 'narrow' not in collapse.collapse_verdict({'z_std_times_sqrt_d': 0.7, 'z_effective_rank': 40.0})[1]
  # A summary's final_* keys, and z_std with d from a config.
  cfg = config_lib.base_config()
  got, reason = collapse.collapse_verdict({'final_z_std': 0.001, 'final_z_effective_rank': 30.0}, cfg)
  assert got and 'z_std' in reason
  assert collapse.collapse_verdict({'final_z_std_times_sqrt_d': float('nan')})[0] is True
  assert collapse.collapse_verdict({'linear_probe_top1': 0.8}) == (False, 'not measured')


# ---------------------------------------------------------------------------- byol_jax/switches.py
def test_switches_shared_by_stl10_and_studies():
  c = config_lib.base_config()
  assert switches.apply_switches(c, 'linear_sym,no_ema,wd1e-3,epochs300') == 300
  assert (c.predictor.kind, c.ema.tau_base, c.ema.schedule, c.optim.weight_decay) == (
      'linear_symmetric', 0.0, 'constant', 1e-3)
  c = config_lib.base_config()
  assert switches.apply_switches(c, 'mlp,simsiam,no_stop_grad,tau0.9') is None
  assert (c.method, c.stop_gradient, c.ema.tau_base) == ('simsiam', False, 0.9)
  c = config_lib.base_config()
  switches.apply_switches(c, 'directpred,centre,eps0.3,freq5')
  assert (c.predictor.kind, c.predictor.centre, c.predictor.eps, c.predictor.freq) == ('directpred', True, 0.3, 5)
  c = config_lib.base_config()
  switches.apply_switches(c, 'linear_sym,lr0.05,wd0.02,tau0.9935')
  assert (c.optim.lr, c.optim.weight_decay, c.ema.tau_base) == (0.05, 0.02, 0.9935)
  with pytest.raises(ValueError, match='unknown config argument'):
    switches.apply_switches(config_lib.base_config(), 'mlp,bogus')
  assert STL10.get_config('').train.steps == 100 * 105_000 // 128
  assert STL10.get_config('linear,epochs300').train.steps == 300 * 105_000 // 128


def test_study_rows_in_file_order_and_epochs_scale_the_base_steps():
  c = tiny_study()
  with c.unlocked():
    c.rows = type(c.rows)({'zz': 'mlp', 'aa': 'none,epochs300'})
    c.paper = type(c.rows)()
  runs = plan_lib.plan(c, '', 1)
  assert [(r['row'], r['seed']) for r in runs] == [('zz', 0), ('aa', 0), ('zz', 1), ('aa', 1)]  # seed-major
  assert [r['config'].train.steps for r in runs] == [4, 12, 4, 12]
  assert [r['config'].seed for r in runs] == [0, 0, 1, 1]  # seed k: base seed + k
  assert all(not r['config'].train.progress_bar for r in runs)


def test_runs_flag_selects_runs_in_the_order_given_and_refuses_unknown_ones(tmp_path):
  pairs = plan_lib.parse_runs(['none:1', 'mlp:0', 'none:1'])
  assert pairs == [('none', 1), ('mlp', 0), ('none', 1)]
  runs, _ = runner.prepare(tiny_study(), str(tmp_path), only=pairs)
  assert [(r['row'], r['seed']) for r in runs] == [('none', 1), ('mlp', 0)]  # given order, once each
  with pytest.raises(plan_lib.StudyError, match="'mlp-1' is not row:seed"):
    plan_lib.parse_runs(['mlp-1'])
  with pytest.raises(plan_lib.StudyError, match='mlp:2 not in the study'):
    runner.prepare(tiny_study(), str(tmp_path), only=[('mlp', 2)])
  with pytest.raises(plan_lib.StudyError, match='none:0 not in the study'):
    runner.prepare(tiny_study(), str(tmp_path), rows_flag='mlp', only=[('none', 0)])
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('overrides, rows, message', [
    ({'seeds': 0}, '', 'seeds=0'),
    ({'rows.none': 'none,bogus'}, '', "row 'none'"),
    ({'rows.none': 'none,eps-1'}, '', "row 'none'.*predictor.eps"),
    ({}, 'mlp,nope', "--rows: 'nope'"),
])
def test_bad_study_configs_are_refused_before_any_run(tmp_path, overrides, rows, message):
  with pytest.raises(plan_lib.StudyError, match=message):
    runner.run_study(tiny_study(**overrides), str(tmp_path), rows)
  assert not os.listdir(tmp_path)


def test_bad_study_config_fails_with_one_line(tmp_path):
  proc = study_cli(str(tmp_path / 's'), '--config.seeds=0')
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 2, out
  lines = [l for l in out.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and 'seeds=0' in lines[0] and 'tiny.py' in lines[0], out
  assert 'Traceback' not in out and not (tmp_path / 's').exists()


# ------------------------------------------------------------------------------------------ the runner
@pytest.fixture(scope='module')
def reference_study(tmp_path_factory):
  """An uninterrupted tiny study (2 rows x 2 seeds x 4 steps), in process, recorded in DIR/../record."""
  workdir = str(tmp_path_factory.mktemp('study_ref'))
  record = str(tmp_path_factory.mktemp('study_record'))
  outcome = runner.run_study(tiny_study(), workdir, out=open(os.devnull, 'w'), record=record)
  return workdir, dict(outcome, record=record)


def _final_evals(workdir, row, seeds=2):
  evals = []
  for k in range(seeds):
    records = read_metrics(os.path.join(workdir, row, f'seed{k}', 'metrics.jsonl'))
    evals.append([r for r in records if 'linear_probe_top1' in r and r['step'] == 4][-1])
  return evals


def test_results_json_equals_the_runs_own_metrics(reference_study):
  workdir, outcome = reference_study
  assert outcome['ran'] == 4 and not outcome['preempted']
  res = json.load(open(os.path.join(workdir, 'results.json')))
  assert res['study'] == 'tiny' and res['seeds'] == 2 and list(res['rows']) == ['mlp', 'none']
  for row in ('mlp', 'none'):
    evals = _final_evals(workdir, row)
    for key in ('linear_probe_top1', 'knn_top1', 'z_effective_rank', 'z_std_times_sqrt_d'):
      values = [e[key] for e in evals]
      got = res['rows'][row][key]
      chex.assert_trees_all_close(got['per_seed'], values)
      chex.assert_trees_all_close(got['mean'], np.mean(values), rtol=1e-12)
      chex.assert_trees_all_close(got['std'], np.std(values, ddof=1), rtol=1e-9)  # sample std over seeds
    assert res['rows'][row]['seeds_done'] == [0, 1] and res['rows'][row]['args'] == row
  assert res['rows']['mlp']['paper'] == 78.53 and res['rows']['none']['paper'] is None
  md = open(os.path.join(workdir, 'results.md')).read()
  assert '| mlp | `mlp` | 78.53' in md and '| none | `none` | - |' in md
  assert os.path.getsize(os.path.join(workdir, 'results.png')) > 10_000
  assert os.path.exists(os.path.join(workdir, 'none', 'seed1', 'checkpoints'))  # ordinary run folders


def test_second_invocation_skips_finished_runs(reference_study):
  workdir, _ = reference_study
  paths = [os.path.join(workdir, r, f'seed{k}', 'metrics.jsonl') for r in ('mlp', 'none') for k in (0, 1)]
  before = [os.stat(p).st_mtime_ns for p in paths]
  outcome = runner.run_study(tiny_study(), workdir, out=open(os.devnull, 'w'))
  assert (outcome['ran'], outcome['skipped']) == (0, 4)
  assert [os.stat(p).st_mtime_ns for p in paths] == before
  # One seed of a subset, and a changed config in the same folder is refused.
  assert runner.run_study(tiny_study(seeds=1), workdir, 'none', out=open(os.devnull, 'w'))['ran'] == 0
  with pytest.raises(plan_lib.StudyError, match='holds a run of another config.*optim.lr'):
    runner.run_study(tiny_study(**{'base.optim.lr': 0.5}), workdir, out=open(os.devnull, 'w'))


def test_reuse_links_equal_runs_of_another_study(reference_study, tmp_path):
  """A study whose rows equal finished runs elsewhere links them (same numbers, nothing trained) and copies them
  into its record; a row of another config is still trained."""
  workdir, _ = reference_study
  other = tiny_study(seeds=1)
  with other.unlocked():  # same base: row 'none_again' is the reference's none/seed0
    other.rows = ml_collections.ConfigDict({'none_again': 'none'})
    other.paper = ml_collections.ConfigDict()
  out, record = str(tmp_path / 'other'), str(tmp_path / 'other_record')
  outcome = runner.run_study(other, out, out=open(os.devnull, 'w'), reuse_dirs=[workdir], record=record)
  assert (outcome['ran'], outcome['skipped']) == (0, 1)
  # The record holds the linked run as a copy without checkpoints, and counts it: it stands alone.
  held = os.path.join(record, 'none_again', 'seed0')
  assert os.path.exists(os.path.join(held, 'summary.json')) and not os.path.islink(held)
  assert not os.path.exists(os.path.join(held, 'checkpoints'))
  assert json.load(open(os.path.join(record, 'results.json')))['rows']['none_again']['linear_probe_top1']['n'] == 1
  link = os.path.join(out, 'none_again', 'seed0')
  assert os.path.islink(link) and not os.path.isabs(os.readlink(link))
  assert os.path.samefile(link, os.path.join(workdir, 'none', 'seed0'))
  res = json.load(open(os.path.join(out, 'results.json')))
  ref = json.load(open(os.path.join(workdir, 'results.json')))
  assert res['rows']['none_again']['linear_probe_top1']['per_seed'] == ref['rows']['none']['linear_probe_top1'][
      'per_seed'][:1]
  assert records.find_reusable(plan_lib.run_config(tiny_study(**{'base.optim.lr': 0.5}), 'none', 0),
                                 [workdir]) is None


def test_a_study_pointed_at_a_committed_record_trains_none_of_its_runs(reference_study, tmp_path):
  """The record holds the finished runs without checkpoints; a fresh checkout (a copy, on a machine whose execution
  settings differ) pointed at it trains nothing and aggregates the same numbers; a run missing from it is trained
  and added to it."""
  import shutil
  workdir, outcome = reference_study
  record = str(tmp_path / 'checkout' / 'record')
  shutil.copytree(outcome['record'], record)
  for row in ('mlp', 'none'):
    for k in (0, 1):
      files = set(os.listdir(os.path.join(record, row, f'seed{k}')))
      assert {'config.json', 'metrics.jsonl', 'summary.json'} <= files and not files & {'checkpoints', 'tensorboard'}
  path = os.path.join(record, 'none', 'seed1', 'config.json')
  held = json.load(open(path))
  held['train'].update(cpu_devices=2, progress_bar=True)  # execution settings of another machine
  held['data']['path'] = '/elsewhere/fashion-mnist'
  json.dump(held, open(path, 'w'))
  fresh = str(tmp_path / 'fresh')
  got = runner.run_study(tiny_study(), fresh, out=open(os.devnull, 'w'), record=record)
  assert (got['ran'], got['skipped']) == (0, 4)
  assert not os.path.exists(os.path.join(fresh, 'mlp', 'seed0', 'checkpoints'))
  ref = results.collect(tiny_study(), workdir)['rows']
  for res in (json.load(open(os.path.join(d, 'results.json')))['rows'] for d in (fresh, record)):
    for row in ('mlp', 'none'):
      assert res[row]['linear_probe_top1']['per_seed'] == ref[row]['linear_probe_top1']['per_seed']
  # A run the record lacks is trained, and added to the record.
  shutil.rmtree(os.path.join(record, 'none', 'seed1'))
  got = runner.run_study(tiny_study(), str(tmp_path / 'fresh2'), out=open(os.devnull, 'w'), record=record)
  assert (got['ran'], got['skipped']) == (1, 3)
  assert os.path.exists(os.path.join(record, 'none', 'seed1', 'summary.json'))
  assert not os.path.exists(os.path.join(record, 'none', 'seed1', 'checkpoints'))


def test_run_identity_leaves_out_execution_settings_and_reads_old_records_with_legacy_values():
  c = records.config_json(plan_lib.run_config(tiny_study(), 'mlp', 0))
  other = json.loads(json.dumps(c))
  other['train'].update(cpu_devices=1, num_devices=2, progress_bar=True, log_every=7, checkpoint_every=9)
  other['model'].update(conv_impl='xla')
  other['data'].update(path='/data/elsewhere')
  assert records.run_identity(other) == records.run_identity(c)
  other['optim']['lr'] = 0.5  # a setting that changes the numbers
  assert records.run_identity(other) != records.run_identity(c)
  old = json.loads(json.dumps(c))  # a run recorded before the keys existed: it was made with their legacy values
  del old['eval']['precise_bn'], old['eval']['precise_bn_batches'], old['predictor']['centre_with']
  assert records.run_identity(old) != records.run_identity(c)  # today's default re-estimates BatchNorm at step 0
  c['eval']['precise_bn'], c['predictor']['centre_with'] = 'never', 'batch_mean'
  assert records.run_identity(old) == records.run_identity(c)


def test_paired_differences_equal_a_paired_t_test():
  from scipy import stats
  rng = np.random.default_rng(0)
  ref = {k: 0.80 + 0.01 * rng.normal() for k in range(8)}
  ahead = {k: v + 0.02 + 0.004 * rng.normal() for k, v in ref.items()}
  ahead[8] = 0.9  # a seed the reference lacks: not paired
  got = results.paired_difference(ahead, ref)
  a, b = np.array([ahead[k] for k in range(8)]), np.array([ref[k] for k in range(8)])
  t = stats.ttest_rel(a, b)
  ci = t.confidence_interval(0.95)
  assert got['n'] == 8 and got['seeds'] == list(range(8))
  np.testing.assert_allclose(got['mean'], np.mean(a - b), rtol=1e-12)
  np.testing.assert_allclose(got['std'], np.std(a - b, ddof=1), rtol=1e-12)
  np.testing.assert_allclose(got['ci95'], [ci.low, ci.high], rtol=1e-10)
  assert got['verdict'] == 'ahead'
  assert results.paired_difference(ref, ahead)['verdict'] == 'behind'
  noisy = {k: v + 0.01 * rng.normal() for k, v in list(ref.items())[:3]}
  got = results.paired_difference(noisy, ref)
  assert got['verdict'] == 'not resolved at 3 seeds' and got['ci95'][0] < 0 < got['ci95'][1]
  # Seeds that resolve a 1-point difference at this spread: the first n whose t-interval half-width is <= 0.01.
  n, sd = got['seeds_to_resolve_1pt'], got['std']
  half = lambda n: stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)  # noqa: E731
  assert half(n) <= 0.01 and (n == 2 or half(n - 1) > 0.01)
  assert results.paired_difference({0: 0.5}, {0: 0.4})['verdict'] == 'not resolved at 1 seed'
  # An interval that holds 0 and lies inside +-1 point reads equal; one that reaches past a point does not.
  close = {k: v + 0.001 + 0.003 * rng.normal() for k, v in ref.items()}
  got = results.paired_difference(close, ref)
  assert -0.01 < got['ci95'][0] < 0 < got['ci95'][1] < 0.01 and got['verdict'] == 'equal within 1 point'
  wide = {k: close[k] + (0.04 if k == 0 else 0.0) for k in close}
  assert results.paired_difference(wide, ref)['ci95'][1] > 0.01
  assert results.paired_difference(wide, ref)['verdict'] == 'not resolved at 8 seeds'


def test_results_give_paired_differences_against_the_reference_row(reference_study):
  workdir, _ = reference_study
  study = tiny_study(reference='none', pairs='mlp-none')
  res = results.collect(study, workdir)
  mlp, none = (res['rows'][r]['linear_probe_top1']['per_seed'] for r in ('mlp', 'none'))
  assert [(p['row'], p['reference']) for p in res['paired']] == [('mlp', 'none'), ('mlp', 'none')]
  np.testing.assert_allclose(res['paired'][0]['per_seed'], np.subtract(mlp, none), rtol=1e-12)
  assert '| mlp − none | 2 |' in results.results_markdown(res)
  with pytest.raises(plan_lib.StudyError, match="reference 'nope'"):
    plan_lib.plan(tiny_study(reference='nope'))


def test_forwarded_args_drop_the_parents_own_flags():
  argv = ['--config=configs/study/tiny.py', '--rows', 'mlp', '--parallel=2', '--config.seeds=1', '--reuse=a,b',
          '--workdir=/tmp/x', '--runs', 'mlp:0']
  assert runner.forwarded_args(argv) == ['--config=configs/study/tiny.py', '--config.seeds=1', '--workdir=/tmp/x']


def test_parallel_study_trains_every_run_once_and_resumes_without_parallel(tmp_path):
  """--parallel=2: two worker processes share the runs (each run once, one JAX device per process); stopped by
  SIGTERM midway, the study resumes and completes without --parallel (the device split is not part of a run's
  identity), training no finished run again; then a --parallel invocation finds everything finished."""
  workdir = str(tmp_path)
  summaries = [os.path.join(workdir, r, f'seed{k}', 'summary.json') for k in (0, 1) for r in ('mlp', 'none')]
  proc = study_cli(workdir, '--parallel=2')
  t0 = time.time()
  while proc.poll() is None and time.time() - t0 < 600:  # stop once two runs have finished
    if sum(map(os.path.exists, summaries)) >= 2:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  text = proc.communicate(timeout=600)[0]
  assert '4 runs in 2 processes' in text, text
  assert '/16 of the 4 pending | 2 processes' in text, text  # a log line per finished run, in steps (4 per run)
  logs = [open(os.path.join(workdir, f'.worker{i}.log')).read() for i in (0, 1)]
  finished = [p for p in summaries if os.path.exists(p)]
  for p in finished:
    row_seed = os.path.relpath(os.path.dirname(p), workdir).replace(os.sep, '/')
    assert sum(f'{row_seed}:' in log for log in logs) == 1, (row_seed, logs)  # trained by exactly one worker
    assert json.load(open(os.path.join(os.path.dirname(p), 'config.json')))['train']['cpu_devices'] == 1
  mtimes = {p: os.stat(p).st_mtime_ns for p in finished}
  outcome = runner.run_study(tiny_study(), workdir, out=open(os.devnull, 'w'))  # no --parallel
  assert (outcome['ran'], outcome['skipped']) == (4 - len(finished), len(finished))
  assert {p: os.stat(p).st_mtime_ns for p in finished} == mtimes  # finished runs stay finished
  res = json.load(open(os.path.join(workdir, 'results.json')))
  assert all(res['rows'][r]['seeds_done'] == [0, 1] for r in ('mlp', 'none'))
  log_mtime = os.stat(os.path.join(workdir, '.worker0.log')).st_mtime_ns
  proc = study_cli(workdir, '--parallel=2')
  text = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0 and 'study tiny: all 4 runs already finished' in text, text
  assert os.stat(os.path.join(workdir, '.worker0.log')).st_mtime_ns == log_mtime  # no worker started


def test_killed_study_resumes_to_the_same_numbers(reference_study, tmp_path):
  ref_dir, _ = reference_study
  workdir = str(tmp_path / 'study')
  first, second = os.path.join(workdir, 'mlp', 'seed0'), os.path.join(workdir, 'none', 'seed0')
  proc = study_cli(workdir)
  t0 = time.time()
  second_finished = None
  while proc.poll() is None and time.time() - t0 < 300:  # SIGKILL inside the second run, after its checkpoint 2
    if os.path.exists(os.path.join(first, 'summary.json')) and os.path.isdir(os.path.join(second, 'checkpoints', '2')):
      proc.send_signal(signal.SIGKILL)
      second_finished = os.path.exists(os.path.join(second, 'summary.json'))
      break
    time.sleep(0.005)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == -signal.SIGKILL, out
  assert not os.path.exists(os.path.join(workdir, 'mlp', 'seed1'))
  proc = study_cli(workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  done_before = 2 if second_finished else 1
  assert f'{done_before} of 4 runs already finished' in out and 'study tiny: 4/4 runs done' in out, out
  if not second_finished:  # killed mid-run (the usual case): the second run resumed from its checkpoint
    assert 'Resuming from step 2' in open(os.path.join(second, 'log.txt')).read()
  got = json.load(open(os.path.join(workdir, 'results.json')))['rows']
  ref = results.collect(tiny_study(), ref_dir)['rows']  # (another test rewrote its results.json for 1 seed)
  for row in ('mlp', 'none'):
    for key in ('linear_probe_top1', 'knn_top1', 'z_std_times_sqrt_d'):
      chex.assert_trees_all_close(got[row][key]['per_seed'], ref[row][key]['per_seed'], atol=1e-6)


def test_collapse_rule_flags_no_predictor_and_not_the_two_layer_predictor(tmp_path):
  # Synthetic data, width 4, d = 16, lr 0.1, batch 64, 40 steps: without a predictor z_std*sqrt(d) falls from
  # ~0.24 (random network) to ~0.03 and z's effective rank to ~1.7; with the 2-layer predictor it rises to
  # ~0.7 (docs/study.md, "The collapse rule", has these runs and the Fashion-MNIST ones).
  c = tiny_study(seeds=1, **{'base.train.steps': 40, 'base.train.batch_size': 64, 'base.optim.lr': 0.1,
                             'base.train.eval_at_start': False, 'base.train.checkpoint_every': 40,
                             'base.train.log_every': 10, 'base.data.num_train': 1024,
                             'base.data.num_test': 512, 'base.eval.batch_size': 256})
  res = runner.run_study(c, str(tmp_path), out=open(os.devnull, 'w'))['results']['rows']
  assert res['none']['collapsed'] is True, res['none']
  assert res['mlp']['collapsed'] is False, res['mlp']
  assert res['none']['z_std_times_sqrt_d']['mean'] < collapse.Z_STD_THRESHOLD / 2
  assert res['mlp']['z_std_times_sqrt_d']['mean'] > 4 * collapse.Z_STD_THRESHOLD


def test_progress_reads_the_step_of_a_metrics_file_that_ends_in_a_long_evaluation_line(tmp_path):
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write(json.dumps({'step': 25, 'loss': 0.5}) + '\n')
    f.write(json.dumps({'step': 50, 'spectrum': list(range(3000))}) + '\n')  # ~15 KB, like an evaluation's line
  assert runner._last_step(str(tmp_path)) == 50
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 75, "lo')  # a line being written
  assert runner._last_step(str(tmp_path)) == 50
  assert runner._last_step(str(tmp_path / 'none')) == 0
