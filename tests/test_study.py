"""Studies (byol_jax/study/): the plan of typed runs, the one bookkeeping loop and its launchers, tested on run
directories written in milliseconds (tests/study_helpers.py: FakeLauncher); records and --reuse; the statistics;
every committed record in docs/records/study/ aggregating to its committed results.json; one real tiny study and
the collapse-rule runs. Also the collapse indicators and rule (byol_jax/collapse.py) and the switch language of the
study rows (byol_jax/switches.py).

Real runs use configs/study/tiny.py (synthetic data, width 4, 16 px, 4 steps, one device); they are the `slow` tier
(the quick tier, `-m "not slow"`, tests the bookkeeping on fake run directories; tests/test_train.py trains), with
XLA's optimizations off (xla_unoptimized_module: runs compared with runs made the same way)."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import ml_collections
import numpy as np
import pytest

from byol_jax import collapse, config as config_lib, rundir, switches
from byol_jax.config import load_config_module
from byol_jax.study import launch, plan as plan_lib, records, results, runner
from study_helpers import FakeLauncher, fake_probe, tiny_study, write_fake_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STL10 = load_config_module(os.path.join(ROOT, 'configs', 'x.py'), 'stl10.py')
QUIET = dict(out=open(os.devnull, 'w'), num_devices=1)


def study_cli(workdir, *args):
  cmd = [sys.executable, '-m', 'byol_jax.study', '--config=configs/study/tiny.py', f'--workdir={workdir}', *args]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def fake_study(workdir, launcher=None, study=None, **kwargs):
  """run_study on FakeLauncher's run directories; returns (outcome, launcher)."""
  launcher = launcher or FakeLauncher()
  return runner.run_study(study or tiny_study(), str(workdir), launcher, **QUIET, **kwargs), launcher


# ---------------------------------------------------------------------------------- byol_jax/collapse.py
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


# ----------------------------------------------------------------------------------- the plan
def test_study_rows_in_file_order_and_epochs_scale_the_base_steps():
  c = tiny_study()
  with c.unlocked():
    c.rows = type(c.rows)({'zz': 'mlp', 'aa': 'none,epochs300'})
    c.paper = type(c.rows)()
  runs = plan_lib.plan(c, '/w', '', 1)
  assert [(r.row, r.seed) for r in runs] == [('zz', 0), ('aa', 0), ('zz', 1), ('aa', 1)]  # seed-major
  assert [r.path for r in runs] == ['/w/zz/seed0', '/w/aa/seed0', '/w/zz/seed1', '/w/aa/seed1']
  assert [r.config.train.steps for r in runs] == [4, 12, 4, 12]
  assert [r.config.seed for r in runs] == [0, 0, 1, 1]  # seed k: base seed + k
  assert all(not r.config.train.progress_bar for r in runs)


def test_runs_flag_selects_runs_in_the_order_given_and_refuses_unknown_ones(tmp_path):
  pairs = plan_lib.parse_runs(['none:1', 'mlp:0', 'none:1'])
  assert pairs == [('none', 1), ('mlp', 0), ('none', 1)]
  runs, _ = runner.prepare(tiny_study(), str(tmp_path), only=pairs, num_devices=1)
  assert [r.key for r in runs] == ['none:1', 'mlp:0']  # given order, once each
  with pytest.raises(plan_lib.StudyError, match="'mlp-1' is not row:seed"):
    plan_lib.parse_runs(['mlp-1'])
  shutil.rmtree(tmp_path)
  with pytest.raises(plan_lib.StudyError, match='mlp:2 not in the study'):
    runner.prepare(tiny_study(), str(tmp_path), only=[('mlp', 2)], num_devices=1)
  with pytest.raises(plan_lib.StudyError, match='none:0 not in the study'):
    runner.prepare(tiny_study(), str(tmp_path), rows_flag='mlp', only=[('none', 0)], num_devices=1)
  assert not os.path.exists(tmp_path)


@pytest.mark.parametrize('overrides, rows, message', [
    ({'seeds': 0}, '', 'seeds=0'),
    ({'rows.none': 'none,bogus'}, '', "row 'none'"),
    ({'rows.none': 'none,eps-1'}, '', "row 'none'.*predictor.eps"),
    ({}, 'mlp,nope', "--rows: 'nope'"),
    ({'figures': 'phase_diagram'}, '', 'figures: phase_diagram needs rows forming a weight decay x EMA rate grid'),
    ({'figures': 'bar_chart'}, '', "figures: 'bar_chart' unknown"),
])
def test_bad_study_configs_are_refused_before_any_run(tmp_path, overrides, rows, message):
  study = tiny_study()
  with study.unlocked():
    study.figures = ''  # tiny.py names no figures key: set one, so that the overrides can
  with study.unlocked():
    for key, value in overrides.items():
      config_lib.override(study, {key: value})
  launcher = FakeLauncher()
  with pytest.raises(plan_lib.StudyError, match=message):
    runner.run_study(study, str(tmp_path), launcher, rows, **QUIET)
  assert not os.listdir(tmp_path) and not launcher.started


def test_bad_study_config_fails_with_one_line(tmp_path):
  proc = study_cli(str(tmp_path / 's'), '--config.seeds=0')
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 2, out
  lines = [l for l in out.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and 'seeds=0' in lines[0] and 'tiny.py' in lines[0], out
  assert 'Traceback' not in out and not (tmp_path / 's').exists()


# ---------------------------------------------------------------- the loop, on run directories written in ms
def test_every_config_json_is_written_before_anything_launches_and_runs_as_configs_run_py(tmp_path):
  """The run directory is the contract: when the first run starts, every pending run's config.json is there, and
  configs/run.py:DIR (what the process launchers run) reads it back as exactly the run's config."""
  seen = {}

  def look(run, launcher):
    if not launcher.started:
      for r in plan_lib.plan(tiny_study(), str(tmp_path), '', 1):
        seen[r.key] = rundir.load_config(r.path)
  outcome, launcher = fake_study(tmp_path, FakeLauncher(on_start=look))
  assert outcome['ran'] == 4 and not outcome['failed'] and len(launcher.started) == 4
  for r in plan_lib.plan(tiny_study(), str(tmp_path), '', 1):
    assert config_lib.finalize(seen[r.key]).to_dict() == r.config.to_dict(), r.key
    file_config = load_config_module(os.path.join(ROOT, 'configs', 'run.py'), 'run.py').get_config(r.path)
    assert file_config.to_dict() == seen[r.key].to_dict()
  assert launch.main_command(str(tmp_path / 'mlp' / 'seed0'))[1:] == [
      '-m', 'byol_jax.main', f'--config={ROOT}/configs/run.py:{tmp_path}/mlp/seed0', f'--workdir={tmp_path}/mlp/seed0']


def test_the_loop_skips_finished_runs_resumes_partial_ones_and_records_divergence(tmp_path):
  study = tiny_study()
  runs = {r.key: r for r in plan_lib.plan(study, str(tmp_path), '', 1)}
  write_fake_run(runs['mlp:0'].path, runs['mlp:0'].config, 'mlp', 0)                   # finished before
  write_fake_run(runs['none:0'].path, runs['none:0'].config, 'none', 0, 'partial')      # stopped half way
  out = tmp_path / 'out.txt'
  with open(out, 'w') as f:
    outcome = runner.run_study(study, str(tmp_path), FakeLauncher({'none:1': 'diverged'}), out=f, num_devices=1)
  text = out.read_text()
  assert (outcome['ran'], outcome['skipped'], outcome['failed'], outcome['preempted']) == (3, 1, [], False)
  assert '1 of 4 runs already finished' in text and 'none/seed1: diverged: non-finite loss at step 2 (fake)' in text
  assert f'mlp/seed1: linear probe {fake_probe("mlp", 1):.4f} (step 0: 0.100)' in text
  assert 'study tiny: 4/4 runs done' in text
  res = json.load(open(tmp_path / 'results.json'))['rows']
  assert res['mlp']['seeds_done'] == [0, 1] and (res['none']['seeds_done'], res['none']['seeds_diverged']) == ([0], [1])
  assert res['mlp']['linear_probe_top1']['per_seed'] == [fake_probe('mlp', 0), fake_probe('mlp', 1)]
  assert res['none']['verdict'] == 'collapsed (1/1 seeds), diverged (1 seed)'
  # Again: everything is finished, nothing starts.
  outcome, launcher = fake_study(tmp_path)
  assert (outcome['ran'], outcome['skipped'], launcher.started) == (0, 4, [])


def test_a_folder_of_another_run_is_refused_before_anything_is_written(tmp_path):
  outcome, _ = fake_study(tmp_path)
  held = (tmp_path / 'mlp' / 'seed0' / 'config.json').read_text()
  os.remove(tmp_path / 'mlp' / 'seed0' / 'summary.json')  # unfinished: its config.json would be rewritten
  with pytest.raises(plan_lib.StudyError, match=r'mlp/seed0 holds a run of another config \(optim.lr: 0.03 there, '
                                                r'0.5 now\)'):
    fake_study(tmp_path, study=tiny_study(**{'base.optim.lr': 0.5}))
  assert (tmp_path / 'mlp' / 'seed0' / 'config.json').read_text() == held
  # Execution settings may change: a run started on 2 devices continues on 1.
  outcome, launcher = fake_study(tmp_path, study=tiny_study(**{'base.train.cpu_devices': 1}))
  assert [r.key for r in launcher.started] == ['mlp:0']
  assert rundir.read_config(str(tmp_path / 'mlp' / 'seed0'))['train']['cpu_devices'] == 1


def test_a_failed_run_is_one_line_and_the_others_go_on(tmp_path):
  outcome, launcher = fake_study(tmp_path, FakeLauncher({'none:0': 'crash'}))
  assert outcome['failed'] == [f'run none/seed0 failed: exit status 1; log: {tmp_path}/none/seed0/log.txt']
  assert outcome['ran'] == 3 and len(launcher.started) == 4
  # A launcher that retries (SLURM: a lost job) starts the run again.
  outcome, launcher = fake_study(tmp_path / 'b', FakeLauncher({'none:0': ['crash', 'done']}, retries=1))
  assert (outcome['ran'], outcome['failed']) == (4, []) and [r.key for r in launcher.started].count('none:0') == 2


def test_sigterm_is_passed_on_no_run_starts_after_it_and_the_same_command_resumes(tmp_path):
  def sigterm_during_second(run, launcher):
    if len(launcher.started) == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # the handler passes it on to the launcher
  launcher = FakeLauncher({'none:0': 'sigterm'}, on_start=sigterm_during_second)
  before = signal.getsignal(signal.SIGTERM)
  outcome, _ = fake_study(tmp_path, launcher)
  assert outcome['preempted'] and outcome['ran'] == 1 and launcher.signals == [signal.SIGTERM]
  assert [r.key for r in launcher.started] == ['mlp:0', 'none:0']
  assert signal.getsignal(signal.SIGTERM) == before  # the study's handler is gone
  # A run stopped by SIGTERM on its own (exit 0, unfinished) also stops the study.
  outcome, launcher = fake_study(tmp_path / 'b', FakeLauncher({'mlp:0': 'sigterm'}))
  assert outcome['preempted'] and [r.key for r in launcher.started] == ['mlp:0']
  outcome, launcher = fake_study(tmp_path)
  assert (outcome['ran'], outcome['skipped'], outcome['preempted']) == (3, 1, False)
  assert [r.key for r in launcher.started] == ['none:0', 'mlp:1', 'none:1']


_OTHER_STUDY = """
import json, os, sys, time
sys.path.insert(0, 'tests')
from study_helpers import FakeLauncher, tiny_study
from byol_jax.study import runner
started = []
launcher = FakeLauncher(on_start=lambda run, _: (started.append(run.key), time.sleep(0.5)))
outcome = runner.run_study(tiny_study(seeds=3), sys.argv[1], launcher, out=open(os.devnull, 'w'), num_devices=1)
print(json.dumps({'started': started, 'ran': outcome['ran']}))
"""


def test_two_studies_on_one_workdir_share_the_runs_and_train_each_once(tmp_path):
  """Each run's lock (rundir.try_lock) is taken by the study that trains it: a second study on the same workdir
  leaves it to the first, trains the others, and collects the first's runs as they finish."""
  other = subprocess.Popen([sys.executable, '-c', _OTHER_STUDY, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  t0 = time.time()
  while not any(rundir.busy(str(p)) and f'process {other.pid} ' in rundir.busy(str(p))
                for p in tmp_path.glob('*/seed*')):  # the other study is training its first run
    assert other.poll() is None and time.time() - t0 < 120, other.communicate()
    time.sleep(0.01)
  mine = []
  out = tmp_path.parent / 'out.txt'
  with open(out, 'w') as f:
    outcome = runner.run_study(tiny_study(seeds=3), str(tmp_path), FakeLauncher(
        on_start=lambda run, _: (mine.append(run.key), time.sleep(0.5))), out=f, num_devices=1)
  theirs = json.loads(other.communicate(timeout=120)[0].strip().splitlines()[-1])
  assert theirs['started'] and mine and outcome['ran'] == len(mine) and theirs['ran'] == len(theirs['started'])
  assert sorted(mine + theirs['started']) == sorted(f'{r}:{k}' for r in ('mlp', 'none') for k in range(3))
  assert f'{theirs["started"][0].replace(":", "/seed")}: process {other.pid} (since ' in out.read_text()
  res = json.load(open(tmp_path / 'results.json'))['rows']
  assert res['mlp']['seeds_done'] == res['none']['seeds_done'] == [0, 1, 2]


def test_local_processes_run_n_at_a_time_each_pinned_to_one_core(tmp_path, monkeypatch):
  """LocalProcesses on a stand-in for byol_jax.main: a process that notes its time and CPU affinity in the run
  directory it was given, then writes the run's outcome there."""
  script = (
      'import json, os, sys, time\n'
      'from byol_jax import rundir\n'
      'path = sys.argv[1]\n'
      'locked = rundir.try_lock(path)\n'  # byol_jax.main's first step: the study handed its lock over
      'start = time.time(); time.sleep(0.5)\n'
      'cfg = json.load(open(os.path.join(path, "config.json")))\n'
      'print("training", path, flush=True)\n'
      'if "none/seed1" in path: sys.exit(3)\n'
      'json.dump({"steps": 4, "final_linear_probe_top1": 0.5, "initial_linear_probe_top1": 0.1, "final_knn_top1": 0.4,'
      ' "start": start, "end": time.time(), "cores": sorted(os.sched_getaffinity(0)), "seed": cfg["seed"],'
      ' "locked": locked},'
      ' open(os.path.join(path, "summary.json"), "w"))\n')
  monkeypatch.setattr(launch, 'main_command', lambda path: [sys.executable, '-c', script, path])
  monkeypatch.setenv('PYTHONPATH', ROOT)
  cores = sorted(os.sched_getaffinity(0))
  outcome = runner.run_study(tiny_study(), str(tmp_path), launch.LocalProcesses(2), **QUIET)
  assert outcome['ran'] == 3 and outcome['failed'] == [
      f'run none/seed1 failed: `python -m byol_jax.main` exited with status 3; log: {tmp_path}/none/seed1/log.txt']
  assert f'training {tmp_path}/none/seed1' in open(tmp_path / 'none' / 'seed1' / 'log.txt').read()
  s = {k: json.load(open(tmp_path / k / 'summary.json')) for k in ('mlp/seed0', 'none/seed0', 'mlp/seed1')}
  assert [v['seed'] for v in s.values()] == [0, 0, 1]
  assert s['mlp/seed0']['start'] < s['none/seed0']['end'] and s['none/seed0']['start'] < s['mlp/seed0']['end']
  assert all(len(v['cores']) == 1 and v['cores'][0] in cores for v in s.values())
  assert all(v['locked'] for v in s.values())  # the run's lock passed from the study to its process
  assert all(rundir.busy(str(tmp_path / k)) is None for k in s)  # and released when both ended
  if len(cores) > 1:  # the two at a time are on two cores
    assert s['mlp/seed0']['cores'] != s['none/seed0']['cores']


def test_progress_reads_the_step_of_a_metrics_file_that_ends_in_a_long_evaluation_line(tmp_path):
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write(json.dumps({'step': 25, 'loss': 0.5}) + '\n')
    f.write(json.dumps({'step': 50, 'spectrum': list(range(3000))}) + '\n')  # ~15 KB, like an evaluation's line
  assert rundir.last_step(str(tmp_path)) == 50
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 75, "lo')  # a line being written
  assert rundir.last_step(str(tmp_path)) == 50
  assert rundir.last_step(str(tmp_path / 'none')) == 0


# ------------------------------------------------------------------------------------ --reuse and --record
def test_reuse_links_equal_runs_of_another_study(tmp_path):
  """A study whose rows equal finished runs elsewhere links them (same numbers, nothing trained) and copies them
  into its record; a row of another config is still trained."""
  workdir = tmp_path / 'ref'
  fake_study(workdir)
  other = tiny_study(seeds=1)
  with other.unlocked():  # same base: row 'none_again' is the reference's none/seed0
    other.rows = ml_collections.ConfigDict({'none_again': 'none', 'faster': 'none,lr0.5'})
    other.paper = ml_collections.ConfigDict()
  out, record = tmp_path / 'other', str(tmp_path / 'other_record')
  outcome, launcher = fake_study(out, study=other, reuse_dirs=[str(workdir)], record=record)
  assert (outcome['ran'], outcome['skipped'], [r.key for r in launcher.started]) == (1, 1, ['faster:0'])
  # The record holds the linked run as a copy without checkpoints, and counts it: it stands alone.
  held = os.path.join(record, 'none_again', 'seed0')
  assert os.path.exists(os.path.join(held, 'summary.json')) and not os.path.islink(held)
  assert json.load(open(os.path.join(record, 'results.json')))['rows']['none_again']['linear_probe_top1']['n'] == 1
  link = out / 'none_again' / 'seed0'
  assert os.path.islink(link) and not os.path.isabs(os.readlink(link))
  assert os.path.samefile(link, workdir / 'none' / 'seed0')
  res = json.load(open(out / 'results.json'))
  assert res['rows']['none_again']['linear_probe_top1']['per_seed'] == [fake_probe('none', 0)]
  assert records.find_reusable(plan_lib.run_config(tiny_study(**{'base.optim.lr': 0.5}), 'none', 0),
                               [str(workdir)]) is None


def test_a_study_pointed_at_a_committed_record_trains_none_of_its_runs(tmp_path):
  """The record holds the finished runs without checkpoints; a fresh checkout (on a machine whose execution settings
  differ) pointed at it trains nothing and aggregates the same numbers; a run missing from it is trained and added
  to it."""
  record = str(tmp_path / 'record')
  fake_study(tmp_path / 'first', record=record)
  for row in ('mlp', 'none'):
    for k in (0, 1):
      files = set(os.listdir(os.path.join(record, row, f'seed{k}')))
      assert {'config.json', 'metrics.jsonl', 'summary.json'} <= files and '.lock' not in files
  os.makedirs(os.path.join(tmp_path, 'first', 'mlp', 'seed0', 'checkpoints', '4'))
  records.export_run(plan_lib.Run('mlp', 0, None, str(tmp_path / 'first' / 'mlp' / 'seed0')), record)
  assert not os.path.exists(os.path.join(record, 'mlp', 'seed0', 'checkpoints'))
  path = os.path.join(record, 'none', 'seed1', 'config.json')
  held = json.load(open(path))
  held['train'].update(cpu_devices=2, progress_bar=True)  # execution settings of another machine
  held['data']['path'] = '/elsewhere/fashion-mnist'
  json.dump(held, open(path, 'w'))
  fresh = tmp_path / 'fresh'
  got, launcher = fake_study(fresh, record=record)
  assert (got['ran'], got['skipped'], launcher.started) == (0, 4, [])
  ref = results.collect(tiny_study(), str(tmp_path / 'first'))['rows']
  for res in (json.load(open(os.path.join(d, 'results.json')))['rows'] for d in (fresh, record)):
    for row in ('mlp', 'none'):
      assert res[row]['linear_probe_top1']['per_seed'] == ref[row]['linear_probe_top1']['per_seed']
  # A run the record lacks is trained, and added to the record.
  shutil.rmtree(os.path.join(record, 'none', 'seed1'))
  got, launcher = fake_study(tmp_path / 'fresh2', record=record)
  assert (got['ran'], got['skipped'], [r.key for r in launcher.started]) == (1, 3, ['none:1'])
  assert os.path.exists(os.path.join(record, 'none', 'seed1', 'summary.json'))
  # A record of another study's runs is refused, naming the key.
  with pytest.raises(plan_lib.StudyError, match="optim.lr: 0.03 there, 0.5 now.*point --record at this study's"):
    fake_study(tmp_path / 'fresh3', study=tiny_study(**{'base.optim.lr': 0.5}), record=record)


# ------------------------------------------------------------------------------- identity and statistics
def test_run_identity_leaves_out_execution_settings_and_reads_old_records_with_legacy_values():
  c = rundir.config_json(plan_lib.run_config(tiny_study(), 'mlp', 0))
  other = json.loads(json.dumps(c))
  other['train'].update(cpu_devices=1, num_devices=2, progress_bar=True, log_every=7, checkpoint_every=9)
  other['model'].update(conv_impl='xla')
  other['data'].update(path='/data/elsewhere')
  assert rundir.identity(other) == rundir.identity(c)
  other['optim']['lr'] = 0.5  # a setting that changes the numbers
  assert rundir.identity(other) != rundir.identity(c)
  old = json.loads(json.dumps(c))  # a run recorded before the keys existed: it was made with their legacy values
  del old['eval']['precise_bn'], old['eval']['precise_bn_batches'], old['predictor']['centre_with']
  assert rundir.identity(old) != rundir.identity(c)  # today's default re-estimates BatchNorm at step 0
  c['eval']['precise_bn'], c['predictor']['centre_with'] = 'never', 'batch_mean'
  assert rundir.identity(old) == rundir.identity(c)
  assert records.run_identity is rundir.identity and records.LEGACY_VALUES is rundir.LEGACY_VALUES


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


def test_results_give_paired_differences_against_the_reference_row(tmp_path):
  fake_study(tmp_path)
  study = tiny_study(reference='none', pairs='mlp-none')
  res = results.collect(study, str(tmp_path))
  mlp, none = (res['rows'][r]['linear_probe_top1']['per_seed'] for r in ('mlp', 'none'))
  assert [(p['row'], p['reference']) for p in res['paired']] == [('mlp', 'none'), ('mlp', 'none')]
  np.testing.assert_allclose(res['paired'][0]['per_seed'], np.subtract(mlp, none), rtol=1e-12)
  assert '| mlp − none | 2 |' in results.results_markdown(res)
  with pytest.raises(plan_lib.StudyError, match="reference 'nope'"):
    plan_lib.plan(tiny_study(reference='nope'))


# Fields of the committed results.json left out of the comparison: 'paired_rule' is prose that says how the paired
# differences are read; its wording changed (2026-12-05) after some records were written, not what it describes.
PROSE = ('paired_rule',)


def _records():
  """The committed study records that hold run folders (the others keep only their results)."""
  return sorted(d for d in glob.glob(os.path.join(ROOT, 'docs', 'records', 'study', '*'))
                if glob.glob(os.path.join(d, '*', 'seed*', rundir.CONFIG)))


@pytest.mark.parametrize('record', _records(), ids=os.path.basename)
def test_every_committed_record_aggregates_to_its_committed_results(record, tmp_path):
  """Each record aggregated anew, from a copy, by its own study config (configs/study/<name>.py, the seeds its
  results.json says): the same results.json (rows added to the config since: left out), and every run's folder reads
  as the run of that config, so the same command continues it."""
  want = json.load(open(os.path.join(record, 'results.json')))
  name = want['study']
  study = load_config_module(os.path.join(ROOT, 'configs', 'study', f'{name}.py'), f'{name}.py').get_config()
  with study.unlocked():
    study.seeds = want['seeds']
  copy = tmp_path / 'record'
  shutil.copytree(record, copy, ignore=shutil.ignore_patterns('*.png', 'results.*', 'phase_diagram.*', 'lr_sweep.*'))
  got = json.loads(json.dumps(results.collect(study, str(copy))))
  for key in PROSE:
    got.pop(key, None), want.pop(key, None)
  # A row added to the study config after the record was written is in today's results, not in the record's:
  # the record's rows and comparisons must be there, the same.
  got_rows, want_rows = got.pop('rows'), want.pop('rows')
  assert {r: got_rows.get(r) for r in want_rows} == want_rows
  got_paired = {(p['row'], p['reference']): p for p in got.pop('paired')}
  assert [got_paired.get((p['row'], p['reference'])) for p in want['paired']] == want.pop('paired')
  assert got == want
  for r in plan_lib.plan(study, str(copy), '', 1):
    if os.path.exists(r.path):  # the same run: a study continued today would not train it again
      rundir.check_same_run(r.path, r.config)
      assert r.status() == 'done'


# ------------------------------------------------------------------------------------- real training
@pytest.fixture(scope='module')
def reference_study(tmp_path_factory, xla_unoptimized_module):
  """A real tiny study (2 rows x 2 seeds x 4 steps), trained in this process."""
  workdir = str(tmp_path_factory.mktemp('study_ref'))
  outcome = runner.run_study(tiny_study(), workdir, out=open(os.devnull, 'w'))
  return workdir, outcome


@pytest.mark.slow  # the real tiny study: 4 runs trained
def test_results_json_equals_the_runs_own_metrics(reference_study):
  workdir, outcome = reference_study
  assert outcome['ran'] == 4 and not outcome['preempted'] and not outcome['failed']
  res = json.load(open(os.path.join(workdir, 'results.json')))
  assert res['study'] == 'tiny' and res['seeds'] == 2 and list(res['rows']) == ['mlp', 'none']
  for row in ('mlp', 'none'):
    evals = []
    for k in range(2):
      records_ = rundir.read_metrics(os.path.join(workdir, row, f'seed{k}'))
      evals.append([r for r in records_ if 'linear_probe_top1' in r and r['step'] == 4][-1])
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
  assert 'byol_jax byol/mlp on synthetic: 4 steps' in open(os.path.join(workdir, 'mlp', 'seed0', 'log.txt')).read()


@pytest.mark.slow  # the real tiny study, and a run trained again in a process
@pytest.mark.usefixtures('xla_unoptimized_module')  # the process, as the study's runs
def test_byol_jax_main_on_a_run_directory_trains_the_same_run(reference_study, tmp_path):
  """What every process launcher runs (launch.main_command: byol_jax.main on the config.json a study wrote) gives
  the numbers the in-process launcher gave."""
  workdir, _ = reference_study
  path = tmp_path / 'none' / 'seed1'
  os.makedirs(path)
  shutil.copy(os.path.join(workdir, 'none', 'seed1', 'config.json'), path / 'config.json')
  proc = subprocess.run(launch.main_command(str(path)), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got, ref = rundir.read_summary(str(path)), rundir.read_summary(os.path.join(workdir, 'none', 'seed1'))
  for key in ('final_linear_probe_top1', 'final_knn_top1', 'initial_linear_probe_top1', 'final_loss'):
    assert got[key] == ref[key], key
  chex.assert_trees_all_close(got['final_z_std_times_sqrt_d'], ref['final_z_std_times_sqrt_d'], atol=1e-6)


@pytest.mark.slow  # two 40-step runs
@pytest.mark.usefixtures('xla_unoptimized_module')
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
