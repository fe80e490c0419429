"""Runs trained together: a group of runs as one compiled program (byol_jax/batched.py), each run directory written
as byol_jax.train.run writes it for the run alone.

  python -m byol_jax.main_batched DIR1 DIR2 ...      (a study's --batch_runs=K starts one such process per group)

Which runs form a group (`group_runs`): runs that batched.run_values accepts together (one program: they differ
only in batched.BATCHABLE_KEYS), on data held in memory, starting from the same step (all new, or all resumed from
checkpoints of the same step), taken in the order given; a run that fits no group trains alone.

What each run directory gets is what train.run writes, through train.py's own pieces: config.json (the run's
identity: batching is an execution choice, not part of it), metrics.jsonl with the same records at the same steps
(losses, images/s per run, spectra for linear-type predictors, evaluations at the start, every eval_every and at
the end), its own orbax checkpoints (the run's own TrainState, so it resumes alone or in a group), summary.json,
the plots, and its lines in log.txt. The first logged losses equal the run's alone up to float round-off (vmap
batches the convolutions and reductions differently); training is chaotic, so later steps drift apart as two runs
on different hardware do.

A run whose loss or parameters turn non-finite is marked diverged (diverged.json, as alone) and leaves the group:
the others go on (its slice keeps being computed, unlogged; vmap keeps the runs independent). SIGTERM or Ctrl-C
saves every run's checkpoint and stops; the same command resumes them.

On XLA:CPU the runs' convolutions become grouped convolutions and run slower per run than one after another
(0.52x at 2 runs); on a GPU a small network leaves the chip mostly idle and runs together cost less
(scripts/gpu/batched_runs_bench.py; docs/study.md).
"""
from __future__ import annotations

import contextlib
import os
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from byol_jax import batched, checkpoint, config as config_lib, optim, rundir
from byol_jax import state as state_lib
from byol_jax import step as step_lib
from byol_jax import train
from byol_jax.logging_utils import MetricsLog

# A study that starts `python -m byol_jax.main_batched` holds the runs' locks and hands them over: the
# descriptors, one per directory in order, comma-separated (rundir.HELD_FD_ENV hands over one; a group has several).
GROUP_LOCK_FDS_ENV = 'BYOL_JAX_GROUP_LOCK_FDS'
CPU_NOTE = ('runs trained together on CPU: XLA:CPU runs them slower per run than one after another (0.52x at 2 '
            'runs); --batch_runs pays on a GPU')


# ----------------------------------------------------------------------------------------------------
# Which runs train together
# ----------------------------------------------------------------------------------------------------
def why_apart(configs) -> str | None:
  """None when the runs can train as one program; else why not (one line)."""
  try:
    batched.run_values(configs)
  except ValueError as e:
    return str(e)
  if configs[0].data.name == 'imagenet2012':
    return 'streamed data (imagenet2012) trains one run per program'
  return None


def group_runs(configs, size: int, start_steps) -> list[list[int]]:
  """The runs' indices in groups of at most `size`, in order: each run joins the first group that is not full,
  starts from its step and whose runs it can train with (why_apart), else it starts a new group. A group of one
  trains alone."""
  groups = []
  for i, c in enumerate(configs):
    for g in groups:
      if (len(g) < size and start_steps[g[0]] == start_steps[i]
          and why_apart([configs[j] for j in g] + [c]) is None):
        g.append(i)
        break
    else:
      groups.append([i])
  return groups


def saved_step(workdir: str) -> int:
  """The step of the run's newest finished checkpoint (0: none), from the folder names: cheap and unverified, for
  grouping. The group's process restores each run's newest checkpoint that verifies and splits the group again
  if that changed a run's step."""
  folder = os.path.join(workdir, rundir.CHECKPOINTS)
  return next((s for s in checkpoint.step_folders(folder)
               if os.path.exists(os.path.join(folder, str(s), checkpoint.METADATA))), 0)


def verified_step(workdir: str) -> int:
  """The step the run resumes from: its newest checkpoint that verifies (0: none; a damaged one is moved aside,
  as train.run does)."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, rundir.CHECKPOINTS))
  try:
    return ckpt.latest_step() or 0
  finally:
    ckpt.close()


# ----------------------------------------------------------------------------------------------------
# Training a group
# ----------------------------------------------------------------------------------------------------
def run_log(workdir: str):
  """say(message) for one run of a group: the line goes to its DIR/log.txt and, prefixed with DIR, to this
  process's output (the group's log)."""
  def say(message: str) -> None:
    print(f'{workdir}: {message}', flush=True)
    with open(os.path.join(workdir, rundir.LOG), 'a') as f:
      f.write(message + '\n')
  return say


def _load_data(configs):
  """(data, info) per run; synthetic data depends on the seed (sources.load_dataset), every other dataset is
  loaded once and shared."""
  loaded, out = {}, []
  for c in configs:
    key = c.seed if c.data.name == 'synthetic' else None
    if key not in loaded:
      loaded[key] = train.load_data(c)
    out.append(loaded[key])
  return out


def run_group(configs, workdirs) -> list[dict]:
  """Trains (or resumes) the runs together and evaluates each; returns one outcome per run: its summary, the
  stop's {'preempted': True, ...}, or {'diverged': message}. Raises config_lib.ConfigError (one line) for runs that
  cannot train together and rundir.RunDirError for runs whose checkpoints are at different steps (group_runs
  splits them first)."""
  with train.stop_signals() as stop, contextlib.ExitStack() as held:  # held: the run directories' locks
    outcomes = _run_group(configs, workdirs, stop, held)
    stop['preempted'] = any(o.get('preempted') for o in outcomes)
    return outcomes


def _run_group(configs, workdirs, stop: dict, held: contextlib.ExitStack) -> list[dict]:
  t_start = time.time()
  configs = [config_lib.finalize(c) for c in configs]
  config = configs[0]  # what every run shares (the step's program, the cadences)
  mesh = step_lib.make_mesh(config.train.num_devices)
  for c in configs:
    config_lib.validate(c, mesh.size)
  why = why_apart(configs)
  if why:
    raise config_lib.ConfigError(f'runs trained together: {why}')
  main_process = jax.process_index() == 0
  if main_process:
    for w in workdirs:
      held.enter_context(rundir.locked(w))
  data = _load_data(configs)  # a missing dataset fails here, before any compilation
  info = data[0][1]
  for c, w in zip(configs, workdirs):
    train.open_run_dir(w, c, main_process)
  says = [run_log(w) for w in workdirs]
  runs = range(len(configs))
  if main_process:
    for r in runs:
      says[r](f'trains together with {len(configs) - 1} other runs as one program (byol_jax/train_batched.py): '
              f'{", ".join(w for w in workdirs if w != workdirs[r])}')

  networks, states, ckpts, starts = None, [], [], []
  for r in runs:
    c = configs[r]
    nets, state = state_lib.build(c, in_channels=data[r][0]['train'][0].shape[-1], num_classes=info['num_classes'],
                                  tx=optim.make_optimizer(c))
    networks = networks or nets
    ckpts.append(checkpoint.Checkpointer(os.path.join(workdirs[r], rundir.CHECKPOINTS),
                                         keep=c.train.keep_checkpoints))
    state, start = train.restore_latest(ckpts[r], jax.device_put(state, NamedSharding(mesh, P())), main_process,
                                        says[r])
    states.append(state)
    starts.append(start)
  if len(set(starts)) > 1:
    raise rundir.RunDirError('runs trained together must start from the same step; their checkpoints are at steps '
                             f'{", ".join(map(str, starts))} ({", ".join(workdirs)}): train them apart '
                             '(python -m byol_jax.main_batched groups them by step)')
  start_step = starts[0]
  logs = [MetricsLog(w, start_step, enabled=main_process) for w in workdirs]
  states = batched.replicate(mesh, batched.stack(states))
  values = batched.replicate(mesh, batched.as_arrays(batched.run_values(configs)))
  run_sources = [batched.make_sources([c], *d['train'])[0] for c, (d, _) in zip(configs, data)]
  train_step = batched.shard_map_step(batched.make_step(config, networks, info['mean'], info['std']), mesh)
  take = jax.jit(batched.unstack)  # run r's TrainState out of the group's, in one dispatch
  evaluate = train.make_evaluator(config, networks, info, data[0][0], mesh)

  def evaluate_and_log(r, state, step):
    result = evaluate(state, step, config=configs[r], data=data[r][0])
    logs[r].write(step, result)
    return result

  initial = [train.logged_initial_evaluation(log, main_process) for log in logs]
  for r in runs:
    if train.evaluate_at_start(configs[r], start_step, initial[r]):
      initial[r] = evaluate_and_log(r, take(states, r), 0)

  steps = config.train.steps
  active = list(runs)  # the runs not diverged
  outcomes = [None] * len(configs)
  final_loss = [None] * len(configs)
  throughput = train.Throughput(start_step, config.train.batch_size)
  step = start_step
  while step < steps and active:
    if step == start_step and train.stop_requested(stop):
      break
    batch = batched.shard_batch(mesh, batched.stack_batches(run_sources, step))
    states, metrics = train_step(states, batch, values)
    step += 1
    throughput.after_step(step, metrics)
    logs_now, saves_now = train.log_now(config, step), train.save_now(config, step)
    if logs_now or saves_now:
      fetched = jax.device_get(metrics)  # each a [runs] array
      rate = throughput.rate(step)
      evaluating = train.evaluate_now(config, step)
      for r in list(active):
        m = {k: v[r] for k, v in fetched.items()}
        try:
          train.check_finite(m, step, ckpts[r])
        except train.TrainingDiverged as e:
          outcomes[r] = _diverged(e, workdirs[r], ckpts[r], logs[r], says[r], main_process)
          active.remove(r)
          continue
        state = take(states, r) if (saves_now or evaluating or train.spectra_due(config, step)) else None
        logs[r].write(step, train.step_record(m, state, configs[r], step, rate))
        final_loss[r] = float(m['loss'])
        if saves_now:
          ckpts[r].save(state)
        if evaluating:
          evaluate_and_log(r, state, step)
    if (jax.process_count() == 1 or logs_now or saves_now) and train.stop_requested(stop):
      break

  for r in active:
    state = take(states, r)
    if stop['signal'] is not None:
      outcomes[r] = train.stopped(stop, step, start_step, ckpts[r], state, logs[r], main_process, says[r])
      continue
    ckpts[r].save(state)
    final_eval, records = train.final_evaluation(
        configs[r], logs[r], lambda s, k, r=r: evaluate(s, k, config=configs[r], data=data[r][0]), state,
        main_process)
    ckpts[r].close()
    logs[r].close()
    outcomes[r] = train.finish(configs[r], workdirs[r], records, initial[r], final_eval, final_loss[r], t_start,
                               main_process, says[r])
  return outcomes


def _diverged(error, workdir, ckpt, log, say, main_process) -> dict:
  """A run of the group that diverged: diverged.json and its error line, as alone; the group goes on without it."""
  if main_process:
    rundir.write_diverged(workdir, str(error))
    say(f'error: {error}')
  ckpt.close()
  log.close()
  return {'diverged': str(error)}
