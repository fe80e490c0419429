"""The training loop: mesh, data, state, step, evaluation, checkpoints, logging, progress.

`run(config, workdir)` is the whole job; byol_jax.main only parses flags and calls it.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from byol_jax import checkpoint, config as config_lib, evaluate, optim, plots, spectral, state as state_lib
from byol_jax import step as step_lib
from byol_jax.data import augment, sources
from byol_jax.logging_utils import MetricsLog, progress_bar, read_metrics

LINEAR_PREDICTORS = ('linear', 'linear_symmetric', 'directpred', 'directcopy')


class TrainingDiverged(RuntimeError):
  pass


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------
def load_data(config):
  """Returns ({'train': (images, labels), 'test': (...)}, info) for the in-memory datasets."""
  d = config.data
  if d.name == 'fashion_mnist':
    data = sources.load_fashion_mnist(d.path or sources.FASHION_MNIST_DIR)
  elif d.name == 'synthetic':
    data = sources.synthetic_dataset(d.num_train or 512, d.num_test or 256, d.image_size, 3, 10, config.seed)
  else:
    raise config_lib.ConfigError(f'data.name={d.name!r} is read through tfds; see byol_jax.data.tfds_source')
  info = sources.dataset_info(d.name)
  if config.eval.num_train:
    data['train_eval'] = tuple(a[:config.eval.num_train] for a in data['train'])
  return data, info


def shard_batch(mesh, local_batch):
  """Process-local numpy batch -> global arrays split over 'data' (also across hosts)."""
  sharding = NamedSharding(mesh, P(step_lib.AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
def make_feature_fn(config, networks, info, mesh):
  """Frozen backbone features of un-augmented images (BatchNorm in inference mode)."""
  def features(params, stats, images):
    x = step_lib.normalize(augment.eval_view(images, config.data.image_size), info['mean'], info['std'])
    model = nnx.merge(networks.online_eval, params, stats)
    return model.tower.encoder(x)
  return jax.jit(features)


def extract_features(feature_fn, state, images, batch_size, mesh):
  n_dev = mesh.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = (-len(chunk)) % n_dev
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    g = jax.device_put(chunk, NamedSharding(mesh, P(step_lib.AXIS))) if jax.process_count() == 1 else \
        jax.make_array_from_callback(chunk.shape, NamedSharding(mesh, P(step_lib.AXIS)), lambda i: chunk[i])
    f = feature_fn(state.params, state.batch_stats, g)
    f = multihost_utils.process_allgather(f, tiled=True) if jax.process_count() > 1 else np.asarray(f)
    out.append(np.asarray(f)[:len(chunk) - pad])
  return np.concatenate(out)


def run_evaluation(config, feature_fn, state, data, info, mesh) -> dict:
  train_x, train_y = data.get('train_eval', data['train'])
  test_x, test_y = data['test']
  bs = config.eval.batch_size
  ftrain = extract_features(feature_fn, state, train_x, bs, mesh)
  ftest = extract_features(feature_fn, state, test_x, bs, mesh)
  return evaluate.evaluate_features(ftrain, train_y, ftest, test_y, info['num_classes'], config.eval)


def spectra_record(state, config) -> dict:
  if config.predictor.kind not in LINEAR_PREDICTORS:
    return {}
  kernel = state.params['predictor']['kernel']  # Flax computes z @ kernel, so W_p = kernel^T
  stats = jax.jit(spectral.spectral_stats)(state.corr, kernel.T)
  return {k: np.asarray(v) for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------
def run(config, workdir: str) -> dict:
  """Trains (or resumes) and evaluates; returns the end-of-run summary."""
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
  train_x, train_y = data['train']
  networks, state = state_lib.build(config, in_channels=train_x.shape[-1], num_classes=info['num_classes'],
                                    tx=tx)
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints)
  start_step = ckpt.latest_step() or 0
  if start_step:
    state = ckpt.restore(state)
    if main_process:
      print(f'Resuming from step {start_step} ({ckpt.path(start_step)})', flush=True)
  log = MetricsLog(workdir, start_step, enabled=main_process)

  source = sources.InMemorySource(train_x, train_y, global_batch_size=config.train.batch_size,
                                  seed=config.seed, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  train_step = step_lib.shard_map_step(step_lib.make_step(config, networks, tx, info['mean'], info['std']),
                                       mesh)
  feature_fn = make_feature_fn(config, networks, info, mesh)

  def evaluate_now(step):
    result = run_evaluation(config, feature_fn, state, data, info, mesh)
    log.write(step, result)
    return result

  previous = [r for r in read_metrics(log.path) if 'linear_probe_top1' in r] if main_process else []
  initial_eval = next((r for r in previous if r['step'] == 0), None)
  if initial_eval is None and start_step == 0:
    initial_eval = evaluate_now(0)

  # Preemption: SIGTERM asks the loop to save a checkpoint and stop at the next step boundary.
  stop = {'signal': None}
  previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))

  steps = config.train.steps
  bar = progress_bar(steps, start_step, enabled=main_process and config.train.progress_bar)
  last_log_time, last_log_step = time.time(), start_step
  metrics = None
  step = start_step
  try:
    while step < steps and stop['signal'] is None:
      batch = shard_batch(mesh, source.batch(step))
      state, metrics = train_step(state, batch)
      step += 1
      log_now = step % config.train.log_every == 0 or step == steps
      save_now = step % config.train.checkpoint_every == 0 or step == steps
      if log_now or save_now:
        m = jax.device_get(metrics)
        if not math.isfinite(float(m['loss'])):
          last = ckpt.latest_step()
          where = f'step {last} in {ckpt.path(last)}' if last is not None else 'none saved yet'
          raise TrainingDiverged(
              f'loss is {m["loss"]} at step {step}; stopped. Last good checkpoint: {where}. '
              f'Try a lower --config.optim.lr or a smaller --config.predictor.lr_mult.')
        now = time.time()
        m['images_per_sec'] = (step - last_log_step) * config.train.batch_size / max(now - last_log_time, 1e-9)
        last_log_time, last_log_step = now, step
        if config.predictor.kind in LINEAR_PREDICTORS and (step % config.train.spectra_every == 0 or
                                                           step == steps):
          m.update(spectra_record(state, config))
        log.write(step, m)
        bar.set_postfix(loss=f'{float(m["loss"]):.4f}', img_s=f'{m["images_per_sec"]:.0f}', refresh=False)
        if save_now:
          ckpt.save(state)
        if config.train.eval_every and step % config.train.eval_every == 0 and step != steps:
          evaluate_now(step)
      bar.update(1)
  finally:
    bar.close()
    signal.signal(signal.SIGTERM, previous_handler)

  if stop['signal'] is not None:
    ckpt.save(state)
    ckpt.close()
    log.close()
    msg = f'SIGTERM at step {step}: checkpoint saved to {ckpt.path(step)}; run the same command to resume.'
    if main_process:
      print(msg, flush=True)
    return {'preempted': True, 'step': step, 'message': msg}

  ckpt.save(state)
  records = read_metrics(log.path) if main_process else []
  final_eval = next((r for r in records if r['step'] == steps and 'linear_probe_top1' in r), None)
  if final_eval is None:
    final_eval = evaluate_now(steps)
    records = read_metrics(log.path) if main_process else []
  ckpt.close()
  log.close()
  summary = {
      'steps': steps,
      'seconds': time.time() - t_start,
      'initial_linear_probe_top1': initial_eval['linear_probe_top1'] if initial_eval else None,
      'final_linear_probe_top1': final_eval['linear_probe_top1'],
      'initial_knn_top1': initial_eval['knn_top1'] if initial_eval else None,
      'final_knn_top1': final_eval['knn_top1'],
      'final_loss': float(metrics['loss']) if metrics is not None else None,
      'workdir': os.path.abspath(workdir),
  }
  if main_process:
    plots.plot_run(records, workdir)
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    print(summary_line(summary, config), flush=True)
  return summary


def summary_line(s: dict, config) -> str:
  def pair(a, b):
    if a is None:
      return f'{b:.4f}'
    return f'{a:.4f} -> {b:.4f} ({100 * (b - a):+.1f} pts)'
  minutes, seconds = divmod(int(s['seconds']), 60)
  return (f'byol_jax {config.method}/{config.predictor.kind} on {config.data.name}: {s["steps"]} steps in '
          f'{minutes}m{seconds:02d}s | linear probe top-1 {pair(s["initial_linear_probe_top1"], s["final_linear_probe_top1"])}'
          f' | kNN top-1 {pair(s["initial_knn_top1"], s["final_knn_top1"])} | {s["workdir"]}')
