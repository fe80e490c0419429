"""Runs trained together (byol_jax/batched.py): each run's losses are those of the same run trained alone; a study's
runs trained with --batch_runs (byol_jax/train_batched.py, main_batched.py) write each run directory as alone."""
import io
import os
import shutil
import signal
import time
import types

import jax
import numpy as np
import pytest

from byol_jax import batched, checkpoint, config as config_lib, optim, rundir, state as state_lib, step as step_lib
from byol_jax import train, train_batched
from byol_jax.data import sources
from byol_jax.study import __main__ as study_main, launch, plan as plan_lib, runner
from configs import tiny
from study_helpers import tiny_study

pytestmark = pytest.mark.usefixtures('xla_unoptimized')  # numbers against numbers: compile little

STEPS = 3
MEAN, STD = (0.5,) * 3, (0.25,) * 3
# Two runs of one program that differ in their seed and in every batchable hyperparameter (each compilation of a
# run alone costs ~20 s on 2 cores, so two runs, not three).
RUNS = [
    {'seed': 0},
    {'seed': 7, 'optim.lr': 0.05, 'optim.weight_decay': 1e-3, 'ema.tau_base': 0.9, 'predictor.lr_mult': 2.0,
     'predictor.weight_decay': 2e-3, 'predictor.eps': 0.3, 'predictor.rho': 0.5},
]


def run_config(overrides):
  # eta_p set for both runs: None (the trunk's) in one and a number in the other cannot batch (run_values).
  c = config_lib.override(tiny.get_config(), {'predictor.kind': 'directpred', 'train.num_devices': 2,
                                              'predictor.weight_decay': 4e-4})
  c = config_lib.finalize(config_lib.override(c, overrides))
  config_lib.validate(c)
  return c


def data():
  d = sources.load_dataset('synthetic', seed=0, num_train=64, num_test=8, image_size=16, channels=3,
                           num_classes=10)
  return d['train']['images'], d['train']['labels']


def alone(c, images, labels, mesh):
  """Losses of run c trained alone: the ordinary step (byol_jax.step) on its own data order."""
  tx = optim.make_optimizer(c)
  networks, state = state_lib.build(c, in_channels=3, num_classes=10, tx=tx)
  step = step_lib.shard_map_step(step_lib.make_step(c, networks, tx, MEAN, STD), mesh)
  state = batched.replicate(mesh, state)
  src = batched.make_sources([c], images, labels)[0]
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(step_lib.AXIS))
  losses = []
  for k in range(STEPS):
    state, m = step(state, jax.device_put(src.batch(k), split))
    losses.append(float(m['loss']))
  return losses


def together(configs, images, labels, mesh):
  networks, states, values = batched.build(configs, in_channels=3, num_classes=10)
  step = batched.shard_map_step(batched.make_step(configs[0], networks, MEAN, STD), mesh)
  states, values = batched.replicate(mesh, states), batched.replicate(mesh, batched.as_arrays(values))
  run_sources = batched.make_sources(configs, images, labels)
  losses = []
  for k in range(STEPS):
    states, m = step(states, batched.shard_batch(mesh, batched.stack_batches(run_sources, k)), values)
    losses.append(np.asarray(m['loss']))
  return np.stack(losses, axis=1), states  # [runs, steps]


@pytest.mark.slow  # three compilations of a training step (~25 s of CPU); batched.py is for GPUs
def test_each_run_equals_the_run_trained_alone():
  configs = [run_config(o) for o in RUNS]
  images, labels = data()
  mesh = step_lib.make_mesh(2)  # two devices: the collectives over 'data' run under vmap too
  batch_losses, states = together(configs, images, labels, mesh)
  assert states.step.shape == (len(RUNS),) and np.all(np.asarray(states.step) == STEPS)
  for r, c in enumerate(configs):
    np.testing.assert_allclose(batch_losses[r], alone(c, images, labels, mesh), rtol=2e-4, atol=2e-5,
                               err_msg=f'run {r} ({RUNS[r]})')
  # The runs really differ (their seeds and hyperparameters reach the step).
  assert len({round(float(x), 6) for x in batch_losses[:, -1]}) == len(RUNS)


def test_run_values_names_what_cannot_be_batched():
  a, b = run_config({'seed': 0}), run_config({'seed': 1, 'optim.lr': 0.1})
  values = batched.run_values([a, b])
  assert sorted(values) == ['optim.lr', 'seed'] and values['seed'].dtype == np.int32
  np.testing.assert_allclose(values['optim.lr'], [a.optim.lr, 0.1])
  with pytest.raises(ValueError, match='predictor.kind'):
    batched.run_values([a, run_config({'predictor.kind': 'linear'})])
  cosine = {'optim.schedule': 'warmup_cosine', 'optim.warmup_steps': 2}
  with pytest.raises(ValueError, match='constant'):
    batched.run_values([run_config(cosine), run_config({**cosine, 'optim.lr': 0.1})])
  batched.run_values([run_config(cosine), run_config({**cosine, 'seed': 1, 'optim.weight_decay': 0.0})])
  unset = config_lib.finalize(config_lib.override(tiny.get_config(), {'predictor.kind': 'directpred'}))
  with pytest.raises(ValueError, match='predictor.weight_decay'):
    batched.run_values([unset, config_lib.override(unset.copy_and_resolve_references(), {'predictor.weight_decay': 1e-3})])


def test_with_values_leaves_the_config_alone():
  c = run_config({})
  copy = batched.with_values(c, {'optim.lr': np.float32(0.5), 'seed': np.int32(3)})
  assert float(copy.optim.lr) == 0.5 and int(copy.seed) == 3
  assert c.optim.lr == 0.03 and c.seed == 0


# ------------------------------------------------------------------------- a study's runs trained together
# byol_jax/train_batched.py, byol_jax/main_batched.py and the study's --batch_runs (launch.LocalGroups).
def test_runs_that_cannot_share_a_program_or_a_start_step_train_apart():
  """The grouping rule on configs only: runs join the first open group they share a program and a start step with,
  in the study's order; the others train apart (a group of one trains alone)."""
  a0, a1, a2, a3 = (run_config({'seed': s}) for s in range(4))
  linear = run_config({'seed': 5, 'predictor.kind': 'linear'})
  other_lr = run_config({'seed': 6, 'optim.schedule': 'warmup_cosine', 'optim.warmup_steps': 1})
  configs = [a0, linear, a1, other_lr, a2, a3]
  assert train_batched.group_runs(configs, 3, [0] * 6) == [[0, 2, 4], [1], [3], [5]]
  assert train_batched.group_runs(configs, 2, [0] * 6) == [[0, 2], [1], [3], [4, 5]]
  # a1 resumes from a checkpoint of step 2: it trains apart from the new runs.
  assert train_batched.group_runs(configs, 3, [0, 0, 2, 0, 0, 0]) == [[0, 4, 5], [1], [2], [3]]
  assert 'predictor.kind' in train_batched.why_apart([a0, linear])
  assert train_batched.why_apart([a0, a1, a2]) is None


def test_a_study_hands_every_run_to_the_groups_launcher_which_groups_them_in_order(tmp_path, monkeypatch):
  """launch.LocalGroups sees the whole study (slots None), groups seeds of a row (rows differ in the predictor:
  another program) and keeps a run resumed from another step apart; --batch_runs with SLURM is one line."""
  study = tiny_study(seeds=3)  # rows mlp, none: seed-major order mlp0 none0 mlp1 none1 mlp2 none2
  runs = plan_lib.plan(study, str(tmp_path), '', 1)
  step2 = os.path.join(tmp_path, 'mlp', 'seed1', rundir.CHECKPOINTS, '2')
  os.makedirs(step2)
  open(os.path.join(step2, checkpoint.METADATA), 'w').close()  # mlp/seed1 resumes from step 2
  launcher = launch.LocalGroups(1, 2, str(tmp_path))
  started = []
  monkeypatch.setattr(launcher, '_launch', lambda group: started.append([r.key for r in group]))
  assert launcher.slots is None
  for r in runs:
    launcher.start(r)
  assert launcher.wait(0) == []
  assert started == [['mlp:0', 'mlp:2'], ['none:0', 'none:1'], ['mlp:1'], ['none:2']]
  assert launch.main_batched_command(['a', 'b'])[1:3] == ['-m', 'byol_jax.main_batched']
  # Pinned to a core each (CPU, --parallel) or not (a GPU: compilation and the host feed use every core).
  assert len(launch.LocalGroups(2, 2, str(tmp_path), pin=True).cores) == 2
  assert launch.LocalGroups(2, 2, str(tmp_path)).cores is None

  flags = types.SimpleNamespace(launcher='slurm', batch_runs=4, parallel=1, no_wait=False, workdir=str(tmp_path))
  with pytest.raises(plan_lib.StudyError, match='--batch_runs is for --launcher=local'):
    study_main.make_launcher(flags, 'tiny')
  with pytest.raises(plan_lib.StudyError, match='--batch_runs=0'):
    study_main.make_launcher(types.SimpleNamespace(**{**vars(flags), 'batch_runs': 0}), 'tiny')


def _losses(path):
  return {r['step']: r['loss'] for r in rundir.read_metrics(path) if 'loss' in r}


def _files(path):
  """A run directory's files, checkpoint contents and TensorBoard event names left out (they hold digests and
  times)."""
  out = set()
  for root, dirs, files in os.walk(path):
    rel = os.path.relpath(root, path)
    if rel.startswith(rundir.CHECKPOINTS + os.sep) or rel == rundir.TENSORBOARD:
      continue
    out |= {os.path.normpath(os.path.join(rel, d)) + '/' for d in dirs}
    out |= {os.path.normpath(os.path.join(rel, f)) for f in files}
  return out


@pytest.fixture(scope='module')
def studies(tmp_path_factory, xla_unoptimized_module):
  """The tiny study's mlp row (2 seeds, 4 steps, 2 devices) trained alone (in this process) and with
  --batch_runs=2 (one process, byol_jax.main_batched)."""
  study = tiny_study(**{'base.train.num_devices': 2})
  quiet = dict(rows_flag='mlp', out=open(os.devnull, 'w'), num_devices=2)
  alone, together = str(tmp_path_factory.mktemp('alone')), str(tmp_path_factory.mktemp('together'))
  outcome_alone = runner.run_study(study, alone, **quiet)
  outcome = runner.run_study(study, together, launch.LocalGroups(1, 2, together), **quiet)
  return study, alone, together, outcome_alone, outcome


def test_the_study_line_shows_the_runs_whose_group_started_and_times_them_from_there(tmp_path):
  """Runs handed to launch.LocalGroups wait for a free process: the study's line leaves them out until then."""
  runs = plan_lib.plan(tiny_study(seeds=2), str(tmp_path), '', 1)
  started = {runs[0].key: time.time() - 125}
  progress = runner.Progress('s', len(runs), 0, runs, io.StringIO(), started_at=lambda r: started.get(r.key))
  for r in runs:
    progress.start(r)
  line = progress.line()
  assert f'now {runs[0].label} step 0/' in line and '(2m0' in line
  assert all(r.label not in line for r in runs[1:])


@pytest.mark.slow  # two runs alone and the two together (a process): three compilations of a training step
def test_a_study_trained_with_batch_runs_writes_each_run_as_alone(studies):
  study, alone, together, outcome_alone, outcome = studies
  assert outcome_alone['ran'] == outcome['ran'] == 2 and not outcome['failed'] and not outcome['preempted']
  group_log = open(os.path.join(together, '.groups', 'mlp-seed0.log')).read()
  assert 'training 2 runs together' in group_log and train_batched.CPU_NOTE in group_log
  for seed in (0, 1):
    a, t = (os.path.join(d, 'mlp', f'seed{seed}') for d in (alone, together))
    assert open(os.path.join(a, rundir.CONFIG)).read() == open(os.path.join(t, rundir.CONFIG)).read()
    assert rundir.same_run(rundir.read_config(t), plan_lib.run_config(study, 'mlp', seed))  # identity unchanged
    assert _files(a) == _files(t)
    assert sorted(os.listdir(os.path.join(a, rundir.CHECKPOINTS))) == sorted(
        os.listdir(os.path.join(t, rundir.CHECKPOINTS)))
    records_a, records_t = rundir.read_metrics(a), rundir.read_metrics(t)
    assert [(r['step'], sorted(r)) for r in records_a] == [(r['step'], sorted(r)) for r in records_t]
    la, lt = _losses(a), _losses(t)
    for step in (1, 2):  # the first logged steps: equal up to float round-off (later, training is chaotic)
      np.testing.assert_allclose(lt[step], la[step], rtol=2e-6, err_msg=f'seed {seed} step {step}')
    assert sorted(rundir.read_summary(a)) == sorted(rundir.read_summary(t))
    log = open(os.path.join(t, rundir.LOG)).read()
    assert 'trains together with 1 other runs' in log and 'byol_jax byol/mlp on synthetic: 4 steps' in log
  assert _losses(os.path.join(together, 'mlp', 'seed0'))[2] != _losses(os.path.join(together, 'mlp', 'seed1'))[2]


@pytest.mark.slow  # the group trained twice in this process, and a run resumed alone
def test_a_stopped_group_resumes_together_or_each_run_alone_and_a_diverged_run_leaves_it(studies, tmp_path,
                                                                                            monkeypatch):
  """SIGTERM saves every run's checkpoint (each run's own TrainState) and stops the group; the same group resumes
  to the numbers of the uninterrupted group, and a run resumes alone from its checkpoint. A run of the group that
  diverges is recorded as alone; the others finish."""
  study, alone, together, _, _ = studies
  runs, _ = runner.prepare(study, str(tmp_path / 'study'), 'mlp', num_devices=2)
  configs, dirs = [r.config for r in runs], [r.path for r in runs]
  real_save = checkpoint.Checkpointer.save

  def save_then_sigterm(self, state):
    real_save(self, state)
    if int(state.step) == 2:
      signal.raise_signal(signal.SIGTERM)

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save_then_sigterm)
  outcomes = train_batched.run_group(configs, dirs)
  monkeypatch.undo()
  assert [(o.get('preempted'), o.get('step')) for o in outcomes] == [(True, 2), (True, 2)]
  assert all('SIGTERM at step 2: stopped' in open(os.path.join(d, rundir.LOG)).read() for d in dirs)
  assert [rundir.status(d) for d in dirs] == ['partial', 'partial']
  shutil.copytree(dirs[1], tmp_path / 'alone1', ignore=shutil.ignore_patterns(rundir.LOCK))

  # Resumed together from the runs' checkpoints; run 1 turns non-finite at step 4 (as a diverging run's metrics
  # say): it is marked diverged, as alone, and run 0 goes on.
  real_check = train.check_finite

  def run1_diverges_at_4(m, step, ckpt):
    if step == 4 and ckpt.directory.startswith(os.path.abspath(dirs[1])):
      m['finite'] = False
    real_check(m, step, ckpt)

  monkeypatch.setattr(train, 'check_finite', run1_diverges_at_4)
  outcomes = train_batched.run_group(configs, dirs)
  monkeypatch.undo()
  assert [rundir.status(d) for d in dirs] == ['done', 'diverged']
  assert 'final_loss' in outcomes[0] and 'non-finite loss or parameters at step 4' in outcomes[1]['diverged']
  assert 'error: non-finite' in open(os.path.join(dirs[1], rundir.LOG)).read()
  uninterrupted = [_losses(os.path.join(together, 'mlp', f'seed{seed}')) for seed in (0, 1)]
  assert sorted(_losses(dirs[0])) == sorted(uninterrupted[0]) == [1, 2, 3, 4] and sorted(_losses(dirs[1])) == [1, 2, 3]
  np.testing.assert_allclose([_losses(dirs[0])[k] for k in (3, 4)], [uninterrupted[0][k] for k in (3, 4)], rtol=1e-6)
  np.testing.assert_allclose(_losses(dirs[1])[3], uninterrupted[1][3], rtol=1e-6)
  assert all('Resuming from step 2' in open(os.path.join(d, rundir.LOG)).read() for d in dirs)

  path = str(tmp_path / 'alone1')  # run 1 resumed alone (train.run) from the group's checkpoint of step 2
  summary = train.run(rundir.load_config(path), path)
  assert summary['steps'] == 4 and rundir.status(path) == 'done'
  # The same state at step 2 (else the losses would differ at the first digit); alone and in a group, the next
  # steps agree to float round-off, chaos allowing.
  np.testing.assert_allclose([_losses(path)[k] for k in (3, 4)], [uninterrupted[1][k] for k in (3, 4)], rtol=1e-3)
