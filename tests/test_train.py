"""End to end: a short run with evaluation, resume after SIGKILL / SIGTERM / Ctrl-C, a restart with another config
refused, a cut metrics line survived, NaN stop, bad input, embed.

The runs use 2 of the 8 test devices (train.num_devices, an execution setting: fewer partitions to compile) and
XLA with most optimizations off (xla_unoptimized_module, tests/conftest.py: the tests compare runs with runs made
the same way, in this process and in the processes it starts). The quick tier (`-m "not slow"`) keeps one run
(reference_run) and what reads it, and the tests that fail before compiling; each test that trains or starts a
training process of its own is `slow`."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from byol_jax import config as config_lib, rundir, train
from byol_jax.logging_utils import read_metrics
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures('xla_unoptimized_module')
DEVICES = 2  # of the 8 (tests/conftest.py): every run of this file, in process and on the command line


def tiny_config(**overrides):
  return config_lib.override(tiny.get_config(), {'train.num_devices': DEVICES, **overrides})


def cli(workdir, *args, **kwargs):
  cmd = [sys.executable, '-m', 'byol_jax.main', '--config=configs/tiny.py', f'--workdir={workdir}',
         f'--config.train.num_devices={DEVICES}', *args]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, xla_unoptimized_module):
  """An uninterrupted run of configs/tiny.py, in process (shares the compilation cache with the CLI)."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  summary = train.run(tiny_config(), workdir)
  return workdir, summary


def losses_by_step(workdir):
  return {r['step']: r['loss'] for r in read_metrics(os.path.join(workdir, 'metrics.jsonl')) if 'loss' in r}


def test_end_to_end_run_writes_metrics_checkpoints_and_plots(reference_run):
  workdir, summary = reference_run
  records = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  evals = [r for r in records if 'linear_probe_top1' in r]
  assert [r['step'] for r in evals] == [0, 6]  # the random initialisation and the end
  # Precise BatchNorm (eval.precise_bn='untrained'): only the untrained step-0 statistics are re-estimated.
  assert [r['precise_bn'] for r in evals] == [True, False]
  for r in evals:
    assert 0.0 <= r['linear_probe_top1'] <= 1.0 and 0.0 <= r['knn_top1'] <= 1.0
    # collapse indicators of the test split (byol_jax/study/collapse.py): z is 16-d, the features 32-d
    assert 1.0 <= r['z_effective_rank'] <= 16 and 1.0 <= r['feature_effective_rank'] <= 32
    assert r['z_std_times_sqrt_d'] == pytest.approx(4.0 * r['z_std'])
  logged = [r for r in records if 'loss' in r]
  assert [r['step'] for r in logged] == [1, 2, 3, 4, 5, 6]
  for r in logged:
    assert {'loss', 'lr', 'tau', 'probe_top1'} <= set(r) and np.isfinite(r['loss'])
  assert all('images_per_sec' in r for r in logged[1:])
  assert summary['final_linear_probe_top1'] == evals[-1]['linear_probe_top1']
  assert summary['initial_z_std'] == evals[0]['z_std'] and summary['final_z_effective_rank'] == evals[-1]['z_effective_rank']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  for name in ('config.json', 'summary.json', 'loss.png', 'accuracy.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.*'))
  assert json.load(open(os.path.join(workdir, 'config.json')))['predictor']['kind'] == 'mlp'


@pytest.mark.slow  # a 40-step run of its own
def test_training_reduces_the_loss(tmp_path):
  # Identical views (no augmentation) and an independently initialised target: the online network and
  # its predictor learn to regress onto the (slowly moving) random target.
  c = tiny_config(**{'train.steps': 40, 'train.log_every': 5, 'train.checkpoint_every': 40,
                     'train.eval_at_start': False, 'optim.lr': 0.1, 'data.augment_preset': 'none',
                     'ema.target_init': 'independent', 'predictor.kind': 'linear'})
  train.run(c, str(tmp_path))
  losses = losses_by_step(str(tmp_path))
  assert np.mean([losses[35], losses[40]]) < 0.7 * np.mean([losses[5], losses[10]]), losses
  # A linear predictor's spectra beside the theory: real_vs_theory.png/.json and keys in summary.json.
  assert os.path.getsize(tmp_path / 'real_vs_theory.png') > 5000
  rvt = json.load(open(tmp_path / 'real_vs_theory.json'))
  assert rvt['steps_logged'] == [10, 20, 30, 40] and rvt['predictor_kind'] == 'linear'
  assert rvt['modes'] == 16 and 0 <= rvt['alignment_topk_final'] <= 1 and rvt['asymmetry_final'] >= 0
  summary = json.load(open(tmp_path / 'summary.json'))
  assert summary['real_vs_theory']['asymmetry_final'] == rvt['asymmetry_final']


@pytest.mark.slow  # a run of its own (another predictor: other programs)
def test_directpred_run_logs_spectra(tmp_path):
  c = tiny_config(**{'predictor.kind': 'directpred', 'train.eval_at_start': False})
  train.run(c, str(tmp_path))
  spectra = [r for r in read_metrics(str(tmp_path / 'metrics.jsonl')) if 'corr_eigenvalues' in r]
  assert [r['step'] for r in spectra] == [2, 4, 6]
  for r in spectra:
    assert len(r['corr_eigenvalues']) == 16 and len(r['predictor_eigenvalues']) == 16
    np.testing.assert_allclose(r['alignment'], 1.0, atol=1e-3)  # W_p is built in F's eigenbasis
    assert max(r['predictor_eigenvalues']) == pytest.approx(1.1, abs=1e-3)  # 1 + eps
  assert (tmp_path / 'spectra.png').exists()
  # DirectPred's p_j = sqrt(s_j / s_max) + eps holds by construction: the summary checks it.
  assert (tmp_path / 'real_vs_theory.png').exists()
  rvt = json.load(open(tmp_path / 'real_vs_theory.json'))
  assert rvt['construction_max_abs_error'] < 1e-3 and rvt['alignment_topk_final'] == pytest.approx(1.0, abs=1e-3)


def _kill_when(proc, workdir, condition, sig, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout and proc.poll() is None:
    if condition(workdir):
      proc.send_signal(sig)
      break
    time.sleep(0.005)
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def _saving(workdir):
  """True while orbax writes a checkpoint (its temporary folder exists) or once step 3 is logged."""
  ckpt = os.path.join(workdir, 'checkpoints')
  tmp = glob.glob(os.path.join(ckpt, '*tmp*'))
  return bool(tmp) or 3 in losses_by_step(workdir)


@pytest.mark.slow  # three training processes
def test_resume_after_sigkill_and_sigterm_equals_uninterrupted_run(reference_run, tmp_path):
  ref_dir, ref_summary = reference_run
  workdir = str(tmp_path / 'run')
  # 1. SIGKILL as soon as a checkpoint save starts (or just after step 3).
  code, out = _kill_when(cli(workdir), workdir, _saving, signal.SIGKILL)
  assert code == -signal.SIGKILL, out
  # 2. Restart; SIGTERM (preemption) once step 5 is logged: it must save and exit cleanly.
  code, out = _kill_when(cli(workdir), workdir, lambda w: 5 in losses_by_step(w), signal.SIGTERM)
  assert code == 0, out
  # 3. Restart again and finish.
  proc = cli(workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert 'Resuming from step' in out
  got, ref = losses_by_step(workdir), losses_by_step(ref_dir)
  assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([got[k] for k in sorted(got)], [ref[k] for k in sorted(ref)], rtol=1e-6)
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['final_linear_probe_top1'] == pytest.approx(ref_summary['final_linear_probe_top1'], abs=1e-6)
  assert summary['initial_linear_probe_top1'] == pytest.approx(ref_summary['initial_linear_probe_top1'], abs=1e-6)
  assert not glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*'))


@pytest.mark.slow  # a training process
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path)
  code, out = _kill_when(cli(workdir, '--config.train.eval_at_start=False'), workdir,
                         lambda w: 2 in losses_by_step(w), signal.SIGTERM)
  assert code == 0, out
  if 'SIGTERM at step' in out:  # (the run may have finished before the signal arrived)
    step = int(out.split('SIGTERM at step ')[1].split(':')[0])
    assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(step)))


@pytest.mark.slow  # two runs of its own
def test_sigterm_during_an_evaluation_is_not_lost(tmp_path, monkeypatch, reference_run):
  """During the start-up evaluation SIGTERM stops the run before its first step (not after the whole run, as when
  the signal reached a handler training never reads); during the final one the run finishes and passes it on."""
  ref_dir, ref_summary = reference_run
  real_evaluation, at = train.run_evaluation, {}

  def evaluation_then_sigterm(config, feature_fn, state, data, info, mesh):
    result = real_evaluation(config, feature_fn, state, data, info, mesh)
    if int(state.step) == at.get('step'):
      signal.raise_signal(signal.SIGTERM)
    return result

  monkeypatch.setattr(train, 'run_evaluation', evaluation_then_sigterm)
  received = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
  try:
    workdir = str(tmp_path)
    at['step'] = 0
    out = train.run(tiny_config(), workdir)
    assert out['preempted'] and out['step'] == 0 and 'nothing trained' in out['message'], out
    assert not losses_by_step(workdir) and not received  # the run's own handler took it
    at['step'] = tiny_config().train.steps
    summary = train.run(tiny_config(), workdir)  # resumes: no second step-0 evaluation, every step trained
    assert received == [signal.SIGTERM]  # passed on after the final evaluation
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert summary['final_linear_probe_top1'] == pytest.approx(ref_summary['final_linear_probe_top1'], abs=1e-6)
  assert sorted(losses_by_step(workdir)) == sorted(losses_by_step(ref_dir))
  evaluated = [r['step'] for r in read_metrics(os.path.join(workdir, 'metrics.jsonl')) if 'linear_probe_top1' in r]
  assert evaluated == [0, tiny_config().train.steps]


@pytest.mark.slow  # two training processes
def test_ctrl_c_saves_a_checkpoint_exits_130_and_the_restart_is_exact(reference_run, tmp_path):
  ref_dir, ref_summary = reference_run
  workdir = str(tmp_path / 'run')
  code, out = _kill_when(cli(workdir), workdir, lambda w: 2 in losses_by_step(w), signal.SIGINT)
  assert code == 130 and 'Traceback' not in out and 'KeyboardInterrupt' not in out, out
  stopped = [l for l in out.splitlines() if l.startswith('Ctrl-C at step ')]
  assert len(stopped) == 1 and 'checkpoint saved to' in stopped[0], out
  step = int(stopped[0].split('Ctrl-C at step ')[1].split(':')[0])
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(step)))
  proc = cli(workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0 and f'Resuming from step {step}' in out, out
  got, ref = losses_by_step(workdir), losses_by_step(ref_dir)
  assert sorted(got) == sorted(ref)
  np.testing.assert_allclose([got[k] for k in sorted(got)], [ref[k] for k in sorted(ref)], rtol=1e-6)
  assert rundir.read_summary(workdir)['final_linear_probe_top1'] == pytest.approx(
      ref_summary['final_linear_probe_top1'], abs=1e-6)


@pytest.mark.slow  # two training processes
def test_a_second_process_on_the_same_run_directory_is_refused_while_the_first_finishes(tmp_path):
  workdir = str(tmp_path / 'run')
  first = cli(workdir)
  t0 = time.time()
  while not losses_by_step(workdir):  # the first one is training
    assert first.poll() is None and time.time() - t0 < 300, first.communicate()
    time.sleep(0.01)
  # The first held still (its lock too) while the second starts: its start-up can outlast the first's 6 steps.
  first.send_signal(signal.SIGSTOP)
  try:
    second = cli(workdir)
    out, _ = second.communicate(timeout=300)
  finally:
    first.send_signal(signal.SIGCONT)
  lines = [l for l in out.splitlines() if l.strip()]
  assert second.returncode == 2 and len(lines) == 1, out
  assert lines[0].startswith(f'error: {workdir} is in use: process {first.pid} (since 20'), out
  out, _ = first.communicate(timeout=600)
  assert first.returncode == 0, out
  steps = [r['step'] for r in read_metrics(os.path.join(workdir, 'metrics.jsonl')) if 'loss' in r]
  assert steps == list(range(1, tiny_config().train.steps + 1))  # each step once: nothing of the second's
  assert rundir.busy(workdir) is None  # released with its process


_TWO_CTRL_C = """
import os, signal, sys
sys.path.insert(0, '.')
from byol_jax import train
from byol_jax.logging_utils import MetricsLog
from configs import tiny
write = MetricsLog.write
def write_then_ctrl_c_twice(self, step, record):
  write(self, step, record)
  if step == 2 and 'loss' in record:  # training, between two checkpoints (every 3 steps)
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
MetricsLog.write = write_then_ctrl_c_twice
c = tiny.get_config()
c.train.eval_at_start = False
c.train.num_devices = %d
train.run(c, sys.argv[1])
""" % DEVICES


@pytest.mark.slow  # a training process
def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path):
  proc = subprocess.run([sys.executable, '-c', _TWO_CTRL_C, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == ('Ctrl-C again: stopped at once, without saving (the last checkpoint '
                                                  'stands)'), proc.stderr[-3000:]
  assert not os.path.exists(tmp_path / 'checkpoints' / '2') and 'Traceback' not in proc.stderr


def _copy_run(src, dest):
  import shutil
  shutil.copytree(src, dest, ignore=shutil.ignore_patterns('tensorboard', '*.png'))
  return str(dest)


def test_a_restart_with_another_config_is_refused_before_anything_is_written(reference_run, tmp_path):
  """The identity of the run a folder holds (rundir.identity) must equal the restart's; execution settings may
  change."""
  ref_dir, ref_summary = reference_run
  workdir = _copy_run(ref_dir, tmp_path / 'run')
  before = {f: open(os.path.join(workdir, f), 'rb').read() for f in ('config.json', 'metrics.jsonl', 'summary.json')}
  width = tiny_config().model.width
  with pytest.raises(rundir.RunDirError, match=rf'holds a run of another config \(model.width: {width} there, '
                                               rf'{2 * width} now\); run it with the config it was started with'):
    train.run(tiny_config(**{'model.width': 2 * width}), workdir)
  assert {f: open(os.path.join(workdir, f), 'rb').read() for f in before} == before
  proc = cli(workdir, '--config.optim.lr=0.5')  # from the command line: one line, exit 2
  out, _ = proc.communicate(timeout=300)
  lines = [l for l in out.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and 'optim.lr: 0.03 there, 0.5 now' in lines[0], out
  assert {f: open(os.path.join(workdir, f), 'rb').read() for f in before} == before
  # An execution setting may change: the finished run is read back, not trained again.
  summary = train.run(tiny_config(**{'train.log_every': 3}), workdir)
  assert summary['final_linear_probe_top1'] == ref_summary['final_linear_probe_top1']
  assert rundir.read_config(workdir)['train']['log_every'] == 3


def test_a_cut_last_metrics_line_is_survived_and_a_bad_line_elsewhere_is_named(reference_run, tmp_path, capsys):
  ref_dir, ref_summary = reference_run
  workdir = _copy_run(ref_dir, tmp_path / 'run')
  path = os.path.join(workdir, 'metrics.jsonl')
  lines = open(path).read().splitlines(keepends=True)
  with open(path, 'a') as f:
    f.write('{"step": 7, "loss": 0.1')  # SIGKILL while a record was written
  summary = train.run(tiny_config(), workdir)  # resumes (at its end): reads the file, drops the cut line
  assert summary['final_linear_probe_top1'] == ref_summary['final_linear_probe_top1']
  warnings = [l for l in capsys.readouterr().err.splitlines() if 'metrics.jsonl' in l]
  assert warnings == [f'warning: {path} line {len(lines) + 1}: a cut last record (the process was killed while '
                      'writing it); dropped'], warnings
  assert open(path).read() == ''.join(lines)  # the run rewrote the file without it
  with open(path, 'w') as f:
    f.writelines(lines[:2] + ['not json\n'] + lines[2:])
  with pytest.raises(rundir.RunDirError, match=rf'^{path} line 3: not a JSON record; repair or delete that line$'):
    rundir.read_metrics(path)


@pytest.mark.slow  # a run of its own (another lr: other programs)
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
  c = tiny_config(**{'optim.lr': 1e30, 'train.steps': 6, 'train.checkpoint_every': 1,
                     'train.eval_at_start': False})
  with pytest.raises(train.TrainingDiverged, match='Last good checkpoint') as err:
    train.run(c, str(tmp_path))
  assert rundir.read_diverged(str(tmp_path)) == {'message': str(err.value)} and rundir.status(str(tmp_path)) == 'diverged'
  saved = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  bad_step = int(str(err.value).split('at step ')[1].split(' ')[0])
  assert all(s < bad_step for s in saved)
  if saved:
    assert f'step {saved[-1]}' in str(err.value)


@pytest.mark.parametrize('overrides,match', [
    ({'train.batch_size': 12, 'train.num_devices': 0}, 'not divisible by the 8 devices'),  # 0: all 8
    ({'predictor.kind': 'quadratic'}, 'predictor.kind'),
    ({'predictor.kind': 'directpred', 'predictor.eps': -0.1}, 'eps_inside'),
    ({'method': 'byol', 'stop_gradient': False}, 'simsiam'),
    ({'predictor.freq': 0}, 'predictor.freq'),
    ({'data.augment_preset': 'imagenet-ish'}, 'augment_preset'),
    ({'model.max_pool_impl': 'cudnn'}, 'model.max_pool_impl'),
])
def test_impossible_values_fail_before_compilation(tmp_path, overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    train.run(tiny_config(**overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_missing_dataset_says_how_to_get_it(tmp_path):
  c = tiny_config(**{'data.name': 'fashion_mnist', 'data.path': str(tmp_path / 'nowhere')})
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
    train.run(c, str(tmp_path))


@pytest.mark.parametrize('flag,match', [('--config.train.stepz=5', 'stepz'),
                                        ('--config.train.steps=many', 'steps'),
                                        ('--config.predictor.kind=quadratic', 'predictor.kind')])
def test_cli_rejects_bad_overrides_with_one_line(tmp_path, flag, match):
  proc = cli(str(tmp_path), flag)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert match in out


@pytest.mark.slow  # a process that compiles the encoder
def test_embed_exports_features_of_the_latest_checkpoint(reference_run, tmp_path):
  workdir, _ = reference_run
  out = str(tmp_path / 'feats.npz')
  proc = subprocess.run([sys.executable, '-m', 'byol_jax.embed', f'--workdir={workdir}', '--split=test',
                         f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  data = np.load(out)
  assert data['features'].shape == (128, 32) and data['labels'].shape == (128,)
  assert np.isfinite(data['features']).all() and data['features'].std() > 0
