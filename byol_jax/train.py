"""The training loop: mesh, data, state, step, evaluation, checkpoints, logging, progress.

`run(config, workdir)` is the whole job; byol_jax.main only parses flags and calls it. The loop is made of small
functions (the signals, the run directory's opening, evaluation, a step's record, the divergence check, the stop,
the summary) that byol_jax/train_batched.py's loop calls too, so runs trained together write what a run alone
writes.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from byol_jax import checkpoint, collapse, config as config_lib, optim, plots, real_vs_theory, rundir, spectral
from byol_jax import state as state_lib
from byol_jax import step as step_lib
from byol_jax.data import sources
# The evaluation library (byol_jax/features.py); its names are also reachable here, where they used to live.
from byol_jax.features import (eval_batches, extract_features, load_data, make_batch_stats_fn,  # noqa: F401
                               make_feature_fn, precise_batch_stats, precise_bn_batches, run_evaluation,
                               shard_batch)
from byol_jax.logging_utils import MetricsLog, progress_bar

LINEAR_PREDICTORS = ('linear', 'linear_symmetric', 'directpred', 'directcopy')


class TrainingDiverged(RuntimeError):
  pass


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------
def train_batches(config, data, start_step: int):
  """Process-local training batches from `start_step` on: a pure function of (seed, step), so resumable."""
  if data is None:
    from byol_jax.data import tfds_source
    pipe = tfds_source.ImageNetPipeline('train', config.train.batch_size, config.data.image_size, config.seed,
                                        jax.process_index(), jax.process_count(),
                                        config.data.tfds_data_dir or None)
    return pipe.batch_iterator(start_step)
  images, labels = data['train']
  source = sources.InMemorySource(images, labels, global_batch_size=config.train.batch_size, seed=config.seed,
                                  process_index=jax.process_index(), process_count=jax.process_count())
  return (source.batch(step) for step in itertools.count(start_step))


def decided_by_process_0(flag: bool) -> bool:
  """Every process takes process 0's decision (only process 0 reads metrics.jsonl)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag], np.int32))).any())


def spectra_record(state, config) -> dict:
  if config.predictor.kind not in LINEAR_PREDICTORS:
    return {}
  kernel = state.params['predictor']['kernel']  # Flax computes z @ kernel, so W_p = kernel^T
  f = step_lib.predictor_input(state.corr, state.corr_mean, config)
  stats = jax.jit(spectral.spectral_stats)(f, kernel.T)
  return {k: np.asarray(v) for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------------
# The pieces of a training loop (train.run's, and byol_jax/train_batched.py's for runs trained together)
# ----------------------------------------------------------------------------------------------------
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # preemption, and Ctrl-C: both save a checkpoint and stop


def _signal_name(signum) -> str:
  return 'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'


def say(message: str) -> None:
  """A run's line of output (a study's launcher sends it to DIR/log.txt)."""
  print(message, flush=True)


@contextlib.contextmanager
def stop_signals():
  """Catches SIGTERM and Ctrl-C for a training loop: yields {'signal': None, 'preempted': False}; a signal sets
  'signal' and the loop saves and stops at its next step boundary (setting 'preempted'). A second Ctrl-C exits at
  once (status 130) without saving. On leaving, the handlers in place before come back, and a signal the loop did
  not act on (it came during the final evaluation) is passed on to them (a study's runner stops there)."""
  stop = {'signal': None, 'preempted': False}

  def on_signal(signum, frame):
    del frame
    if signum == signal.SIGINT and stop['signal'] == signal.SIGINT:
      print('\nCtrl-C again: stopped at once, without saving (the last checkpoint stands)', file=sys.stderr,
            flush=True)
      os._exit(130)  # pylint: disable=protected-access
    stop['signal'] = stop['signal'] or signum

  previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
  try:
    yield stop
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    if stop['signal'] is not None and not stop['preempted']:
      signal.raise_signal(stop['signal'])


def stop_requested(stop: dict) -> bool:
  """Whether this process or any other got a stop signal (a collective with several processes: call it where
  they all are)."""
  if any_process(stop['signal'] is not None):
    stop['signal'] = stop['signal'] or signal.SIGTERM  # (another process's SIGTERM)
    return True
  return False


def open_run_dir(workdir: str, config, main_process: bool) -> None:
  """Before anything is written, config.json of a run that trained must hold the same identity (a restart continues
  the same run; execution settings such as devices and logging cadence may change); then config.json is written."""
  if rundir.status(workdir) != 'new':
    rundir.check_same_run(workdir, config, fix='run it with the config it was started with (--config='
                          f'configs/run.py:{workdir}), or give another --workdir')
  os.makedirs(workdir, exist_ok=True)
  if main_process:
    rundir.write_config(workdir, config)


def restore_latest(ckpt, state, main_process: bool, say=say):
  """(state, start step): the newest good checkpoint restored into `state`'s structure, or `state` and 0."""
  start_step = ckpt.latest_step() or 0
  if start_step:
    state = ckpt.restore(state)
    if main_process:
      say(f'Resuming from step {start_step} ({ckpt.path(start_step)})')
  return state, start_step


def make_evaluator(config, networks, info, data, mesh):
  """evaluate(state, step) -> the evaluation record (linear probe, kNN, collapse indicators). Its compiled
  functions depend on the network and the image shapes only, so runs trained together share one evaluator and
  pass their own config and data (synthetic data depends on the seed)."""
  feature_fn = make_feature_fn(config, networks, info)
  batch_stats_fn = make_batch_stats_fn(config, networks, info, mesh)

  def evaluate(state, step, config=config, data=data):
    # Running statistics never trained (step 0) describe no network training runs: re-estimate them first.
    precise = config.eval.precise_bn == 'always' or (config.eval.precise_bn == 'untrained' and step == 0)
    evaluated = state
    if precise:
      evaluated = state.replace(batch_stats=precise_batch_stats(batch_stats_fn, state,
                                                                precise_bn_batches(config, data), mesh))
    result = run_evaluation(config, feature_fn, evaluated, data, info, mesh)
    result['precise_bn'] = precise
    return result
  return evaluate


def logged_initial_evaluation(log, main_process: bool):
  """The start-up evaluation metrics.jsonl holds already (a resumed run keeps it), or None."""
  records = rundir.read_metrics(log.path) if main_process else []
  return next((r for r in records if r['step'] == 0 and 'linear_probe_top1' in r), None)


def evaluate_at_start(config, start_step: int, initial_eval) -> bool:
  """Whether the run evaluates its initial network now: a new run, eval_at_start, and none logged yet."""
  return decided_by_process_0(initial_eval is None and start_step == 0 and config.train.eval_at_start)


def log_now(config, step: int) -> bool:
  return step % config.train.log_every == 0 or step == config.train.steps


def save_now(config, step: int) -> bool:
  return step % config.train.checkpoint_every == 0 or step == config.train.steps


def evaluate_now(config, step: int) -> bool:
  """A periodic evaluation (eval_every); the last step's is the final evaluation."""
  return bool(config.train.eval_every) and step % config.train.eval_every == 0 and step != config.train.steps


def check_finite(m: dict, step: int, ckpt) -> None:
  """Takes 'finite' out of a step's fetched metrics; raises TrainingDiverged (naming the last good checkpoint) when
  the loss or the parameters are not finite."""
  if not (m.pop('finite') and math.isfinite(float(m['loss']))):
    last = ckpt.latest_step()
    where = f'step {last} in {ckpt.path(last)}' if last is not None else 'none saved yet'
    raise TrainingDiverged(
        f'non-finite loss or parameters at step {step} (loss {float(m["loss"])}); stopped. '
        f'Last good checkpoint: {where}. '
        f'Try a lower --config.optim.lr or a smaller --config.predictor.lr_mult.')


class Throughput:
  """Images per second between logged steps, the first step (its compilation) left out."""

  def __init__(self, start_step: int, batch_size: int):
    self.batch_size = batch_size
    self.start_step = start_step
    self.time, self.step = time.time(), start_step

  def after_step(self, step: int, metrics) -> None:
    if step == self.start_step + 1:  # throughput excludes the compilation of the first step
      jax.block_until_ready(metrics)
      self.time, self.step = time.time(), step

  def rate(self, step: int) -> float | None:
    """Images per second since the last call (None at the first step); the clock restarts here."""
    now = time.time()
    rate = ((step - self.step) * self.batch_size / max(now - self.time, 1e-9)) if step > self.step else None
    self.time, self.step = now, step
    return rate


def step_record(m: dict, state, config, step: int, images_per_sec: float | None) -> dict:
  """What metrics.jsonl logs of a step: its metrics (finite checked), images/s, and the spectra of F and W_p at
  spectra_every for linear-type predictors (`state` is read only then)."""
  if images_per_sec is not None:
    m['images_per_sec'] = images_per_sec
  if spectra_due(config, step):
    m.update(spectra_record(state, config))
  return m


def spectra_due(config, step: int) -> bool:
  return config.predictor.kind in LINEAR_PREDICTORS and (step % config.train.spectra_every == 0 or
                                                         step == config.train.steps)


def stopped(stop: dict, step: int, start_step: int, ckpt, state, log, main_process: bool, say=say) -> dict:
  """A run stopped by a signal: its checkpoint saved (when it trained since its start), one line; the summary
  {'preempted': True, 'step', 'message', 'signal'}."""
  if step > start_step:  # else the state is the one restored (or initialised): nothing new to save
    ckpt.save(state)
  ckpt.close()
  log.close()
  where = (f'checkpoint saved to {ckpt.path(step)}' if step > start_step else
           f'before its first step (checkpoint {ckpt.path(step)} unchanged)' if start_step else
           'before its first step (nothing trained yet)')
  msg = f'{_signal_name(stop["signal"])} at step {step}: stopped, {where}; run the same command to resume.'
  if main_process:
    say(msg)
  return {'preempted': True, 'step': step, 'message': msg, 'signal': int(stop['signal'])}


def final_evaluation(config, log, evaluate, state, main_process: bool):
  """(the final evaluation, every record of metrics.jsonl): the one logged already (a run stopped after it), or one
  made now and logged."""
  steps = config.train.steps
  records = rundir.read_metrics(log.path) if main_process else []
  final_eval = next((r for r in records if r['step'] == steps and 'linear_probe_top1' in r), None)
  if decided_by_process_0(final_eval is None):
    final_eval = evaluate(state, steps)
    log.write(steps, final_eval)
    records = rundir.read_metrics(log.path) if main_process else []
  return final_eval, records


def finish(config, workdir: str, records: list[dict], initial_eval, final_eval, final_loss, t_start: float,
           main_process: bool, say=say) -> dict:
  """The end-of-run summary, written (summary.json, the plots) with its one line."""
  summary = {
      'steps': config.train.steps,
      'seconds': time.time() - t_start,
      'initial_linear_probe_top1': (initial_eval or {}).get('linear_probe_top1'),
      'final_linear_probe_top1': (final_eval or {}).get('linear_probe_top1'),
      'initial_knn_top1': (initial_eval or {}).get('knn_top1'),
      'final_knn_top1': (final_eval or {}).get('knn_top1'),
      'final_loss': final_loss,
      'workdir': os.path.abspath(workdir),
  }
  for key in collapse.KEYS:
    summary[f'initial_{key}'] = (initial_eval or {}).get(key)
    summary[f'final_{key}'] = (final_eval or {}).get(key)
  if main_process:
    plots.plot_run(records, workdir)  # also real_vs_theory.json for linear-type predictors: read, not recomputed
    s = rundir.read_json(os.path.join(workdir, real_vs_theory.FILENAME + '.json'))
    if s is not None:
      summary['real_vs_theory'] = {k: s[k] for k in ('loglog_slope', 'loglog_r2', 'asymmetry_final',
                                                      'alignment_topk_final', 'top_k', 'modes_used',
                                                      'loglog_slope_topk', 'loglog_r2_topk')}
    rundir.write_summary(workdir, summary)
    say(summary_line(summary, config))
  return summary


# ----------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------
def run(config, workdir: str) -> dict:
  """Trains (or resumes) and evaluates; returns the end-of-run summary, or {'preempted': True, 'signal', ...} when
  SIGTERM or Ctrl-C (SIGINT) stopped it (a checkpoint saved at a step boundary; one during the start-up evaluation
  stops it before the first step). A second Ctrl-C exits at once (status 130), without saving. A signal during the
  final evaluation lets it finish and is then passed on to the handler that was in place (a study's runner stops
  there). A run that diverges writes diverged.json and raises TrainingDiverged. What it writes: byol_jax/rundir.py."""
  with stop_signals() as stop, contextlib.ExitStack() as held:  # held: the run directory's lock, once taken
    try:
      summary = _run(config, workdir, stop, held)
    except TrainingDiverged as e:
      if jax.process_index() == 0:  # the run directory says so: whoever launched the run reads diverged.json
        rundir.write_diverged(workdir, str(e))
      raise
    stop['preempted'] = bool(summary.get('preempted'))
    return summary


def _run(config, workdir: str, stop: dict, held: contextlib.ExitStack) -> dict:
  t_start = time.time()
  config = config_lib.finalize(config)
  mesh = step_lib.make_mesh(config.train.num_devices)
  config_lib.validate(config, mesh.size)
  main_process = jax.process_index() == 0
  if main_process:  # one process trains a run at a time: a second one stops here, naming the first
    held.enter_context(rundir.locked(workdir))
  data, info = load_data(config)  # a missing dataset fails here, before any compilation
  open_run_dir(workdir, config, main_process)

  tx = optim.make_optimizer(config)
  in_channels = data['train'][0].shape[-1] if data is not None else 3
  networks, state = state_lib.build(config, in_channels=in_channels, num_classes=info['num_classes'], tx=tx)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, rundir.CHECKPOINTS), keep=config.train.keep_checkpoints)
  state, start_step = restore_latest(ckpt, state, main_process)
  log = MetricsLog(workdir, start_step, enabled=main_process)

  batches = train_batches(config, data, start_step)  # (a missing ImageNet fails here, before compiling)
  train_step = step_lib.shard_map_step(step_lib.make_step(config, networks, tx, info['mean'], info['std']),
                                       mesh)
  evaluate = make_evaluator(config, networks, info, data, mesh)

  def evaluate_and_log(step):
    result = evaluate(state, step)
    log.write(step, result)
    return result

  initial_eval = logged_initial_evaluation(log, main_process)
  if evaluate_at_start(config, start_step, initial_eval):
    initial_eval = evaluate_and_log(0)

  # Preemption: SIGTERM (stop, set by run's handler) asks the loop to save a checkpoint and stop at the next step
  # boundary; one that came during the start-up evaluation stops it before the first step.
  steps = config.train.steps
  bar = progress_bar(steps, start_step, enabled=main_process and config.train.progress_bar)
  throughput = Throughput(start_step, config.train.batch_size)
  metrics = None
  step = start_step
  try:
    while step < steps:
      if step == start_step and stop_requested(stop):
        break
      batch = shard_batch(mesh, next(batches))
      state, metrics = train_step(state, batch)
      step += 1
      throughput.after_step(step, metrics)
      logs_now, saves_now = log_now(config, step), save_now(config, step)
      if logs_now or saves_now:
        m = jax.device_get(metrics)
        check_finite(m, step, ckpt)
        log.write(step, step_record(m, state, config, step, throughput.rate(step)))
        bar.set_postfix(loss=f'{float(m["loss"]):.4f}', img_s=f'{m.get("images_per_sec", 0):.0f}', refresh=False)
        if saves_now:
          ckpt.save(state)
        if evaluate_now(config, step):
          evaluate_and_log(step)
      bar.update(1)
      # Several processes stop together, at a step where they all synchronise anyway.
      if (jax.process_count() == 1 or logs_now or saves_now) and stop_requested(stop):
        break
  finally:
    bar.close()

  if stop['signal'] is not None:
    return stopped(stop, step, start_step, ckpt, state, log, main_process)

  ckpt.save(state)
  final_eval, records = final_evaluation(config, log, evaluate, state, main_process)
  ckpt.close()
  log.close()
  final_loss = float(metrics['loss']) if metrics is not None else None
  return finish(config, workdir, records, initial_eval, final_eval, final_loss, t_start, main_process)


def summary_line(s: dict, config) -> str:
  def pair(a, b):
    if b is None:
      return 'skipped (unlabelled data)'
    if a is None:
      return f'{b:.4f}'
    return f'{a:.4f} -> {b:.4f} ({100 * (b - a):+.1f} pts)'
  minutes, seconds = divmod(int(s['seconds']), 60)
  return (f'byol_jax {config.method}/{config.predictor.kind} on {config.data.name}: {s["steps"]} steps in '
          f'{minutes}m{seconds:02d}s | linear probe top-1 {pair(s["initial_linear_probe_top1"], s["final_linear_probe_top1"])}'
          f' | kNN top-1 {pair(s["initial_knn_top1"], s["final_knn_top1"])}{_collapse_part(s)} | {s["workdir"]}')


def _collapse_part(s: dict) -> str:
  spread, rank = s.get('final_z_std_times_sqrt_d'), s.get('final_z_effective_rank')
  if spread is None or rank is None:
    return ''
  return f' | z_std*sqrt(d) {spread:.2f}, z eff. rank {rank:.1f}'
