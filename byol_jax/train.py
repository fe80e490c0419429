"""The training loop: mesh, data, state, step, evaluation, checkpoints, logging, progress.

`run(config, workdir)` is the whole job; byol_jax.main only parses flags and calls it.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import signal
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from byol_jax import checkpoint, config as config_lib, evaluate, optim, plots, spectral
from byol_jax.study import collapse, real_vs_theory
from byol_jax import state as state_lib
from byol_jax import step as step_lib
from byol_jax.data import augment, sources
from byol_jax.logging_utils import MetricsLog, progress_bar, read_metrics
from byol_jax.models.norm import ViewBatchNorm

LINEAR_PREDICTORS = ('linear', 'linear_symmetric', 'directpred', 'directcopy')


class TrainingDiverged(RuntimeError):
  pass


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------
def load_data(config):
  """Returns (data, info). data = {'train', 'test', 'train_eval'?: (images uint8, labels)} for datasets held
  in memory (Fashion-MNIST, synthetic, CIFAR, STL-10); None for ImageNet, which is streamed by tfds."""
  d = config.data
  if d.name == 'imagenet2012':
    from byol_jax.data import tfds_source  # TensorFlow is imported only on the tfds path
    return None, tfds_source.dataset_info(d.name)
  if d.name in config_lib.TFDS_DATASETS:
    from byol_jax.data import tfds_source
    data, info = tfds_source.load_in_memory(d.name, d.tfds_data_dir or None, d.image_size)
  elif d.name == 'image_folder':
    try:
      raw, info = sources.load_image_folder(d.path, d.image_size)
    except sources.ImageFolderError as e:  # a config value that cannot work: one line from the entry points
      raise config_lib.ConfigError(f'data.path: {e}') from None
    data = {split: (raw[split]['images'], raw[split]['labels']) for split in ('train', 'test')}
    if jax.process_index() == 0:
      print(f'data: {info["report"]}', flush=True)
  else:
    raw = sources.load_dataset(d.name, d.path or None, seed=config.seed, num_train=d.num_train or 512,
                               num_test=d.num_test or 256, image_size=d.image_size, channels=3, num_classes=10)
    data = {split: (raw[split]['images'], raw[split]['labels']) for split in ('train', 'test')}
    info = sources.dataset_info(d.name)
  if config.eval.num_train:
    data['train_eval'] = tuple(a[:config.eval.num_train] for a in data.get('train_eval', data['train']))
  return data, info


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


def eval_batches(config, data, split: str, batch_size: int):
  """Process-local, fixed-size evaluation batches {'image', 'label', 'mask'} covering a split once."""
  if data is None:
    from byol_jax.data import tfds_source
    pipe = tfds_source.ImageNetEvalPipeline(
        'train' if split == 'train' else 'validation', batch_size, config.data.image_size, jax.process_index(),
        jax.process_count(), config.data.tfds_data_dir or None,
        max_examples=(config.eval.num_train or 50_000) if split == 'train' else None)
    yield from pipe.batches()
    return
  images, labels = data.get('train_eval', data['train']) if split == 'train' else data['test']
  local = batch_size // jax.process_count()
  lo = jax.process_index() * local
  for start in range(0, len(images), batch_size):
    idx = np.arange(start + lo, start + lo + local)
    mask = idx < len(images)
    idx = np.minimum(idx, len(images) - 1)
    yield {'image': images[idx], 'label': labels[idx], 'mask': mask}


def shard_batch(mesh, local_batch):
  """Process-local numpy batch -> global arrays split over 'data' (also across hosts)."""
  sharding = NamedSharding(mesh, P(step_lib.AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
def make_feature_fn(config, networks, info):
  """(frozen backbone features, projector output z) of un-augmented images (BatchNorm in inference mode)."""
  def features(params, stats, images):
    x = step_lib.normalize(augment.eval_view(images, config.data.image_size), info['mean'], info['std'])
    model = nnx.merge(networks.online_eval, params, stats)
    return model.tower(x)
  return jax.jit(features)


def make_batch_stats_fn(config, networks, info, mesh):
  """The online tower's BatchNorm statistics of one global batch of un-augmented images (training-mode
  BatchNorm over the global batch, one view, no gradients): {'tower': ...} of the online batch_stats tree."""
  def batch_stats(params, stats, images):
    x = step_lib.normalize(augment.eval_view(images, config.data.image_size), info['mean'], info['std'])
    model = nnx.merge(networks.online_eval, params, stats)
    for _, m in nnx.iter_modules(model.tower):
      if isinstance(m, ViewBatchNorm):  # momentum 0: the "running" statistics become this batch's
        m.use_running_average, m.views, m.momentum = False, 1, 0.0
    model.tower(x)
    return nnx.to_pure_dict(nnx.state(model.tower, nnx.BatchStat))
  mapped = jax.shard_map(batch_stats, mesh=mesh, in_specs=(P(), P(), P(step_lib.AXIS)), out_specs=P(),
                         check_vma=False)
  return jax.jit(mapped)


def precise_bn_batches(config, data):
  """The process-local image batches precise BatchNorm averages over: the first eval.precise_bn_batches x
  train.batch_size images of the train split (wrapping around), the same for every run and seed."""
  count, size = config.eval.precise_bn_batches, config.train.batch_size
  if data is None:  # streamed (ImageNet): the evaluation pipeline's train examples, full batches only
    batches = (b['image'] for b in eval_batches(config, data, 'train', size) if np.all(b['mask']))
    yield from itertools.islice(batches, count)
    return
  images = data['train'][0]
  local = size // jax.process_count()
  lo = jax.process_index() * local
  for i in range(count):
    yield images[(i * size + lo + np.arange(local)) % len(images)]


def precise_batch_stats(batch_stats_fn, state, batches, mesh):
  """Precise BatchNorm (Wu & Johnson 2021): the online BatchNorm statistics with the tower's replaced by the
  mean, over `batches`, of each batch's mean and variance. Returns a new batch_stats tree (state unchanged)."""
  total, n = None, 0
  for images in batches:
    stats = batch_stats_fn(state.params, state.batch_stats, shard_batch(mesh, images))
    total = stats if total is None else jax.tree.map(jax.numpy.add, total, stats)
    n += 1
  if not n:
    raise ValueError('precise BatchNorm: the train split gave no full batch; lower train.batch_size or set '
                     '--config.eval.precise_bn=never')
  return {**state.batch_stats, 'tower': jax.tree.map(lambda x: x / n, total)}


def _gather(x):
  return np.asarray(multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x)


def extract_features(feature_fn, state, batches, mesh):
  """(features, labels, projections z) of every real (mask=True) example of `batches`, gathered on every
  process."""
  feats, labels, zs = [], [], []
  for b in batches:
    f, z = feature_fn(state.params, state.batch_stats, shard_batch(mesh, b['image']))
    mask = _gather(b['mask'])
    feats.append(_gather(f)[mask])
    zs.append(_gather(z)[mask])
    labels.append(_gather(b['label'])[mask])
  return np.concatenate(feats), np.concatenate(labels), np.concatenate(zs)


def run_evaluation(config, feature_fn, state, data, info, mesh) -> dict:
  """Linear probe and kNN (train split -> test split), and the collapse indicators of the test split's
  features and projector outputs (byol_jax/study/collapse.py)."""
  bs = max(mesh.size, config.eval.batch_size // mesh.size * mesh.size)
  ftrain, ytrain, _ = extract_features(feature_fn, state, eval_batches(config, data, 'train', bs), mesh)
  ftest, ytest, ztest = extract_features(feature_fn, state, eval_batches(config, data, 'test', bs), mesh)
  result = {}
  if info.get('labelled', True):  # unlabelled images (image_folder without class folders): no probes to fit
    result = evaluate.evaluate_features(ftrain, ytrain, ftest, ytest, info['num_classes'], config.eval)
  result.update(collapse.collapse_stats(ftest, ztest))
  return result


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
# The job
# ----------------------------------------------------------------------------------------------------
def run(config, workdir: str) -> dict:
  """Trains (or resumes) and evaluates; returns the end-of-run summary, or {'preempted': True, ...} when SIGTERM
  stopped it (a checkpoint saved at a step boundary; a SIGTERM during the start-up evaluation stops it before the
  first step). A SIGTERM during the final evaluation lets it finish and is then passed on to the handler that was
  in place (a study's runner stops there)."""
  stop = {'signal': None}
  previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
  summary = {}
  try:
    summary = _run(config, workdir, stop)
    return summary
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    if stop['signal'] is not None and not summary.get('preempted'):
      signal.raise_signal(signal.SIGTERM)


def _run(config, workdir: str, stop: dict) -> dict:
  t_start = time.time()
  config = config_lib.finalize(config)
  mesh = step_lib.make_mesh(config.train.num_devices)
  config_lib.validate(config, mesh.size)
  main_process = jax.process_index() == 0
  data, info = load_data(config)  # a missing dataset fails here, before any compilation

  os.makedirs(workdir, exist_ok=True)
  if main_process:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  tx = optim.make_optimizer(config)
  in_channels = data['train'][0].shape[-1] if data is not None else 3
  networks, state = state_lib.build(config, in_channels=in_channels, num_classes=info['num_classes'], tx=tx)
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints)
  start_step = ckpt.latest_step() or 0
  if start_step:
    state = ckpt.restore(state)
    if main_process:
      print(f'Resuming from step {start_step} ({ckpt.path(start_step)})', flush=True)
  log = MetricsLog(workdir, start_step, enabled=main_process)

  batches = train_batches(config, data, start_step)  # (a missing ImageNet fails here, before compiling)
  train_step = step_lib.shard_map_step(step_lib.make_step(config, networks, tx, info['mean'], info['std']),
                                       mesh)
  feature_fn = make_feature_fn(config, networks, info)

  batch_stats_fn = make_batch_stats_fn(config, networks, info, mesh)

  def evaluate_now(step):
    # Running statistics never trained (step 0) describe no network training runs: re-estimate them first.
    precise = config.eval.precise_bn == 'always' or (config.eval.precise_bn == 'untrained' and step == 0)
    evaluated = state
    if precise:
      evaluated = state.replace(batch_stats=precise_batch_stats(batch_stats_fn, state,
                                                                precise_bn_batches(config, data), mesh))
    result = run_evaluation(config, feature_fn, evaluated, data, info, mesh)
    result['precise_bn'] = precise
    log.write(step, result)
    return result

  previous = [r for r in read_metrics(log.path) if 'linear_probe_top1' in r] if main_process else []
  initial_eval = next((r for r in previous if r['step'] == 0), None)
  if decided_by_process_0(initial_eval is None and start_step == 0 and config.train.eval_at_start):
    initial_eval = evaluate_now(0)

  # Preemption: SIGTERM (stop, set by run's handler) asks the loop to save a checkpoint and stop at the next step
  # boundary; one that came during the start-up evaluation stops it before the first step.
  steps = config.train.steps
  bar = progress_bar(steps, start_step, enabled=main_process and config.train.progress_bar)
  last_log_time, last_log_step = time.time(), start_step
  metrics = None
  step = start_step
  try:
    while step < steps:
      if step == start_step and any_process(stop['signal'] is not None):
        stop['signal'] = signal.SIGTERM
        break
      batch = shard_batch(mesh, next(batches))
      state, metrics = train_step(state, batch)
      step += 1
      if step == start_step + 1:  # throughput excludes the compilation of the first step
        jax.block_until_ready(metrics)
        last_log_time = time.time()
        last_log_step = step
      log_now = step % config.train.log_every == 0 or step == steps
      save_now = step % config.train.checkpoint_every == 0 or step == steps
      if log_now or save_now:
        m = jax.device_get(metrics)
        if not (m.pop('finite') and math.isfinite(float(m['loss']))):
          last = ckpt.latest_step()
          where = f'step {last} in {ckpt.path(last)}' if last is not None else 'none saved yet'
          raise TrainingDiverged(
              f'non-finite loss or parameters at step {step} (loss {float(m["loss"])}); stopped. '
              f'Last good checkpoint: {where}. '
              f'Try a lower --config.optim.lr or a smaller --config.predictor.lr_mult.')
        now = time.time()
        if step > last_log_step:
          m['images_per_sec'] = (step - last_log_step) * config.train.batch_size / max(now - last_log_time, 1e-9)
        last_log_time, last_log_step = now, step
        if config.predictor.kind in LINEAR_PREDICTORS and (step % config.train.spectra_every == 0 or
                                                           step == steps):
          m.update(spectra_record(state, config))
        log.write(step, m)
        bar.set_postfix(loss=f'{float(m["loss"]):.4f}', img_s=f'{m.get("images_per_sec", 0):.0f}', refresh=False)
        if save_now:
          ckpt.save(state)
        if config.train.eval_every and step % config.train.eval_every == 0 and step != steps:
          evaluate_now(step)
      bar.update(1)
      # Several processes stop together, at a step where they all synchronise anyway.
      if (jax.process_count() == 1 or log_now or save_now) and any_process(stop['signal'] is not None):
        stop['signal'] = signal.SIGTERM
        break
  finally:
    bar.close()

  if stop['signal'] is not None:
    if step > start_step:  # else the state is the one restored (or initialised): nothing new to save
      ckpt.save(state)
    ckpt.close()
    log.close()
    where = (f'checkpoint saved to {ckpt.path(step)}' if step > start_step else
             f'before its first step (checkpoint {ckpt.path(step)} unchanged)' if start_step else
             'before its first step (nothing trained yet)')
    msg = f'SIGTERM at step {step}: stopped, {where}; run the same command to resume.'
    if main_process:
      print(msg, flush=True)
    return {'preempted': True, 'step': step, 'message': msg}

  ckpt.save(state)
  records = read_metrics(log.path) if main_process else []
  final_eval = next((r for r in records if r['step'] == steps and 'linear_probe_top1' in r), None)
  if decided_by_process_0(final_eval is None):
    final_eval = evaluate_now(steps)
    records = read_metrics(log.path) if main_process else []
  ckpt.close()
  log.close()
  summary = {
      'steps': steps,
      'seconds': time.time() - t_start,
      'initial_linear_probe_top1': (initial_eval or {}).get('linear_probe_top1'),
      'final_linear_probe_top1': (final_eval or {}).get('linear_probe_top1'),
      'initial_knn_top1': (initial_eval or {}).get('knn_top1'),
      'final_knn_top1': (final_eval or {}).get('knn_top1'),
      'final_loss': float(metrics['loss']) if metrics is not None else None,
      'workdir': os.path.abspath(workdir),
  }
  for key in collapse.KEYS:
    summary[f'initial_{key}'] = (initial_eval or {}).get(key)
    summary[f'final_{key}'] = (final_eval or {}).get(key)
  if main_process:
    plots.plot_run(records, workdir)  # also real_vs_theory.json for linear-type predictors: read, not recomputed
    rvt_path = os.path.join(workdir, real_vs_theory.FILENAME + '.json')
    if os.path.exists(rvt_path):
      with open(rvt_path) as f:
        s = json.load(f)
      summary['real_vs_theory'] = {k: s[k] for k in ('loglog_slope', 'loglog_r2', 'asymmetry_final',
                                                      'alignment_topk_final', 'top_k', 'modes_used',
                                                      'loglog_slope_topk', 'loglog_r2_topk')}
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    print(summary_line(summary, config), flush=True)
  return summary


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
