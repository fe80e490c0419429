"""Throughput benchmark of the training step.

  python -m byol_jax.bench --config=configs/fashion_mnist.py [--config.train.batch_size=256 ...]
      [--steps=20] [--warmup=3] [--variants=full,no_augment,linear] [--peak_tflops=...]

Times the full jitted step (augmentation on device, DirectPred's F update, EMA and online probe
included) and variants: `no_augment` feeds ready-made views (the step without augmentation, as the
PyTorch peer measures), `linear` swaps the predictor for a plain linear one (DirectPred's overhead).
FLOPs come from XLA's cost analysis of the compiled step; MFU = FLOP/s over the device's peak
(`--peak_tflops`, or a table of known accelerators). Prints one JSON object per variant, and last a
JSON object for the first variant with `images_per_sec`, `ms_per_step` and `mfu`.
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from byol_jax import config as config_lib, optim, state as state_lib, step as step_lib
from byol_jax.data import sources

config_flags.DEFINE_config_file('config', 'configs/fashion_mnist.py', 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 20, 'Timed steps.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
flags.DEFINE_list('variants', ['full', 'no_augment'], 'full, no_augment, linear (predictor), directpred.')
flags.DEFINE_float('peak_tflops', None, 'Peak dense TFLOP/s of one device for MFU (default: known table).')
FLAGS = flags.FLAGS

# Dense peak TFLOP/s per device by (device kind substring, compute dtype).
PEAK_TFLOPS = {('H100', 'bfloat16'): 989.0, ('H100', 'float32'): 494.7, ('H200', 'bfloat16'): 989.0,
               ('H200', 'float32'): 494.7, ('A100', 'bfloat16'): 312.0, ('A100', 'float32'): 156.0,
               ('TPU v4', 'bfloat16'): 275.0, ('TPU v5', 'bfloat16'): 197.0}


def peak_flops(dtype: str) -> float | None:
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops * 1e12
  kind = jax.devices()[0].device_kind
  for (name, dt), tflops in PEAK_TFLOPS.items():
    if name in kind and dt == dtype:
      return tflops * 1e12
  return None


def fake_batch(config, mesh, with_views: bool):
  n, s = config.train.batch_size, config.data.image_size
  channels = 1 if config.data.name == 'fashion_mnist' else 3
  rng = np.random.default_rng(0)
  batch = dict(image=rng.integers(0, 256, (n, s, s, channels), dtype=np.uint8),
               label=rng.integers(0, 10, (n,)).astype(np.int32), index=np.arange(n, dtype=np.int32))
  if with_views:  # ready-made normalised views: the step skips augmentation
    dtype = np.float32
    batch['view1'] = rng.standard_normal((n, s, s, channels)).astype(dtype)
    batch['view2'] = rng.standard_normal((n, s, s, channels)).astype(dtype)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(step_lib.AXIS))
  return jax.device_put(batch, sharding), channels


def time_variant(config, variant: str) -> dict:
  config = config_lib.finalize(config.copy_and_resolve_references())
  with config.unlocked():
    if variant == 'linear':
      config.predictor.kind = 'linear'
    elif variant == 'directpred':
      config.predictor.kind = 'directpred'
  mesh = step_lib.make_mesh(config.train.num_devices)
  config_lib.validate(config, mesh.size)
  batch, channels = fake_batch(config, mesh, with_views=variant == 'no_augment')
  info = sources.dataset_info(config.data.name) if config.data.name in ('fashion_mnist', 'synthetic') else \
      dict(num_classes=10, mean=(0.5,) * channels, std=(0.25,) * channels)
  tx = optim.make_optimizer(config)
  networks, state = state_lib.build(config, in_channels=channels, num_classes=info['num_classes'], tx=tx)
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  step = step_lib.shard_map_step(step_lib.make_step(config, networks, tx, info['mean'], info['std']), mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  for _ in range(FLAGS.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  dt = (time.perf_counter() - t0) / FLAGS.steps
  peak = peak_flops(config.train.compute_dtype)
  n_dev = mesh.size
  return {
      'variant': variant, 'device': jax.devices()[0].device_kind, 'num_devices': n_dev,
      'backbone': config.model.backbone, 'width': config.model.width, 'image_size': config.data.image_size,
      'batch_size': config.train.batch_size, 'compute_dtype': config.train.compute_dtype,
      'predictor': config.predictor.kind, 'images_per_sec': round(config.train.batch_size / dt, 1),
      'ms_per_step': round(1e3 * dt, 3), 'gflop_per_image': round(flops * n_dev / config.train.batch_size / 1e9, 4),
      'mfu': round(flops / dt / peak, 4) if (peak and flops) else None, 'compile_seconds': round(compile_s, 1),
      'loss': float(metrics['loss']),
  }


def main(argv):
  del argv
  results = [time_variant(FLAGS.config, v) for v in FLAGS.variants]
  for r in results:
    print(json.dumps(r), flush=True)
  if len(results) > 1:
    base = results[0]['ms_per_step']
    print(json.dumps({'relative_ms_per_step': {r['variant']: round(r['ms_per_step'] / base, 3) for r in results}}))
  print(json.dumps(results[0]), flush=True)


if __name__ == '__main__':
  app.run(main)
