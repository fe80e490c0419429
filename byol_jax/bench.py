"""Throughput benchmark of the training step.

  python -m byol_jax.bench --config=configs/stl10.py [--config.train.batch_size=256 ...]
      [--variants=no_augment,no_augment+linear,full] [--steps=50] [--repeats=3] [--measure_peak]

Each variant is a '+'-joined list of changes to the config's step:
  full            the step as configured: augmentation on device, DirectPred's F and W_p, EMA, online probe
  no_augment      the step without augmentation, as the PyTorch peer measures it: the same input path as
                  training, with augmentation preset 'none' (both views are the image, cast, resized to its own
                  size and normalised; `--augment_ops` times the augmentation on its own)
  linear | directpred | mlp          predictor kind (DirectPred's overhead: no_augment vs no_augment+linear)
  eigh | newton_schulz               DirectPred's solver
  bfloat16 | float32                 compute dtype
  pool_taps | pool_phases | pool_xla the ImageNet stem's max-pool: max_pool_3x3_s2 (GPU default), its
                                     phases backward (CPU default) or XLA's
  conv_xla | conv_matmul_small | conv_native
                                     convolutions: XLA's everywhere, XLA:CPU's slow cases as products, or
                                     those and the compiled CPU convolution kernels (CPU default)
e.g. `--variants=no_augment,no_augment+linear,no_augment+eigh,full`. Each variant is compiled once and
timed `repeats` times over `steps` steps after `warmup` steps (the median is reported).

`--augment_ops` also times the on-device augmentation alone (two views of the batch, normalised, cast and
concatenated as the step feeds them to the network), then without each of its ops in turn (crop = the full
image resized, jitter, grayscale, blur, solarize, flip: probability 0); an op's cost is the difference.
`--variants= --augment_ops` times only the augmentation.

FLOPs come from XLA's cost analysis of the lowered (not yet optimised) step; on GPUs, where only
compiled programs are analysed and cuDNN convolutions are opaque, of the same step lowered for the CPU.
XLA counts a convolution's multiply-adds over valid input taps only (zero padding not counted): for
ResNet-18 at 96 px, 4.45 GFLOP per image, against 5.25 by the usual count (fvcore / torchvision: every
tap, 2 FLOPs per multiply-add). MFU = FLOP/s over the device's peak: `--peak_tflops`, else a table of
datasheet dense peaks; `--measure_peak` also times an 8192^3 matrix product in the compute dtype and
reports `mfu_measured_peak` against it (`steps` jitted calls back to back, so a little under the hardware's).
Prints one JSON object per variant (and per augmentation row), and last a JSON object for the first variant
with `images_per_sec`, `ms_per_step` and `mfu`.
"""
from __future__ import annotations

import json
import os
import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from byol_jax import cli, config as config_lib, optim, state as state_lib, step as step_lib
from byol_jax.data import augment, sources

cli.define_config_file('configs/fashion_mnist.py', 'Config file.')
flags.DEFINE_integer('steps', 20, 'Timed steps per repeat.')
flags.DEFINE_integer('repeats', 3, 'Timed repeats; the median is reported.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
flags.DEFINE_list('variants', ['full', 'no_augment'], "'+'-joined changes, see the module docstring.")
flags.DEFINE_float('peak_tflops', None, 'Peak dense TFLOP/s of one device for MFU (default: known table).')
flags.DEFINE_bool('measure_peak', False, 'Also time a large matrix product and report MFU against it.')
flags.DEFINE_string('profile_dir', None, 'If set, also records a profiler trace of 5 steps per variant there '
                    '(TensorBoard/XProf, and a Perfetto JSON trace).')
flags.DEFINE_bool('augment_ops', False, 'Also time the augmentation alone and without each of its ops.')
FLAGS = flags.FLAGS

# Datasheet dense peak TFLOP/s per device by (device kind substring, compute dtype).
PEAK_TFLOPS = {('H100', 'bfloat16'): 989.0, ('H100', 'float32'): 494.7, ('H200', 'bfloat16'): 989.0,
               ('H200', 'float32'): 494.7, ('A100', 'bfloat16'): 312.0, ('A100', 'float32'): 156.0,
               ('TPU v4', 'bfloat16'): 275.0, ('TPU v5', 'bfloat16'): 197.0}
VARIANT_TOKENS = {
    'full': {}, 'no_augment': {'data.augment_preset': 'none'},
    'linear': {'predictor.kind': 'linear'}, 'directpred': {'predictor.kind': 'directpred'},
    'mlp': {'predictor.kind': 'mlp'},
    'eigh': {'predictor.solver': 'eigh'}, 'newton_schulz': {'predictor.solver': 'newton_schulz'},
    'bfloat16': {'train.compute_dtype': 'bfloat16'}, 'float32': {'train.compute_dtype': 'float32'},
    'pool_xla': {'model.max_pool_impl': 'xla'}, 'pool_taps': {'model.max_pool_impl': 'taps'},
    'pool_phases': {'model.max_pool_impl': 'phases'},
    'conv_xla': {'model.conv_impl': 'xla'}, 'conv_matmul_small': {'model.conv_impl': 'matmul_small'},
    'conv_native': {'model.conv_impl': 'native'},
}


def parse_variant(variant: str) -> dict:
  """'no_augment+linear' -> {'data.augment_preset': 'none', 'predictor.kind': 'linear'}: the config changes."""
  changes = {}
  for t in variant.split('+'):
    if t not in VARIANT_TOKENS:
      raise ValueError(f'unknown benchmark variant token {t!r} in {variant!r}; known: {sorted(VARIANT_TOKENS)}')
    changes.update(VARIANT_TOKENS[t])
  return changes


def peak_flops(dtype: str) -> float | None:
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops * 1e12
  kind = jax.devices()[0].device_kind
  for (name, dt), tflops in PEAK_TFLOPS.items():
    if name in kind and dt == dtype:
      return tflops * 1e12
  return None


def measured_peak_flops(dtype: str, n: int = 8192) -> float:
  """FLOP/s of an n^3 matrix product on random data in `dtype` (the ceiling MFU is read against)."""
  if jax.devices()[0].platform == 'cpu':
    n = 1024
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
  b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda a, b: a @ b)
  return 2 * n**3 / statistics.median(_timed_repeats(lambda k: [matmul(a, b) for _ in range(k)]))


def fake_batch(config, mesh):
  """A training batch of random images at the crop size (preset 'none' then resizes each to its own size)."""
  n, s = config.train.batch_size, config.data.image_size
  channels = 1 if config.data.name == 'fashion_mnist' else 3
  rng = np.random.default_rng(0)
  batch = dict(image=rng.integers(0, 256, (n, s, s, channels), dtype=np.uint8),
               label=rng.integers(0, 10, (n,)).astype(np.int32), index=np.arange(n, dtype=np.int32))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(step_lib.AXIS))
  return jax.device_put(batch, sharding), channels


def _flops(stage) -> float:
  try:
    cost = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return 0.0
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)) if cost else 0.0


def step_flops(lowered, step_fn, state, batch) -> float:
  """FLOPs of the whole (global) step from XLA's cost analysis of the lowered program. GPU backends
  analyse only compiled programs, where cuDNN convolutions are opaque custom calls, so there the same
  step is lowered for one CPU device on the global batch (collectives over one device do nothing)."""
  flops = _flops(lowered)
  if flops > 0 or jax.devices()[0].platform == 'cpu':
    return flops
  cpu_mesh = jax.sharding.Mesh(jax.devices('cpu')[:1], (step_lib.AXIS,))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
  return _flops(step_lib.shard_map_step(step_fn, cpu_mesh, donate=False).lower(*abstract))


def build_variant(config, variant: str):
  """(config with the variant's changes, mesh, step function, its shard_map'd jit, initial state, fake batch)."""
  changes = parse_variant(variant)
  config = config_lib.override(config.copy_and_resolve_references(), changes)
  if 'data.augment_preset' in changes:  # the variant's preset replaces the augmentation whole
    config.data.augment = ml_collections.ConfigDict()
  config = config_lib.finalize(config)
  mesh = step_lib.make_mesh(config.train.num_devices)
  config_lib.validate(config, mesh.size)
  batch, channels = fake_batch(config, mesh)
  info = sources.dataset_info(config.data.name) if config.data.name in ('fashion_mnist', 'synthetic') else \
      dict(num_classes=10, mean=(0.5,) * channels, std=(0.25,) * channels)
  tx = optim.make_optimizer(config)
  networks, state = state_lib.build(config, in_channels=channels, num_classes=info['num_classes'], tx=tx)
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  step_fn = step_lib.make_step(config, networks, tx, info['mean'], info['std'])
  return config, mesh, step_fn, step_lib.shard_map_step(step_fn, mesh), state, batch


def time_variant(config, variant: str, measured_peak: float | None = None) -> dict:
  config, mesh, step_fn, step, state, batch = build_variant(config, variant)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = step_flops(lowered, step_fn, state, batch)  # of the whole (global) step
  metrics = None

  def run(steps):  # the state buffers are donated: each step consumes the previous state
    nonlocal state, metrics
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    return state

  times = _timed_repeats(run)
  dt = statistics.median(times)
  if FLAGS.profile_dir:
    os.makedirs(f'{FLAGS.profile_dir}/{variant}', exist_ok=True)
    with jax.profiler.trace(f'{FLAGS.profile_dir}/{variant}', create_perfetto_trace=True):
      jax.block_until_ready(run(5))
  n_dev = mesh.size
  peak = peak_flops(config.train.compute_dtype)
  per_device_flops = flops / n_dev / dt
  result = {
      'variant': variant, 'device': jax.devices()[0].device_kind, 'num_devices': n_dev,
      'backbone': config.model.backbone, 'width': config.model.width, 'image_size': config.data.image_size,
      'batch_size': config.train.batch_size, 'compute_dtype': config.train.compute_dtype,
      'predictor': config.predictor.kind, 'solver': config.predictor.solver,
      'augment': config.data.augment_preset != 'none',
      'images_per_sec': round(config.train.batch_size / dt, 1), 'ms_per_step': round(1e3 * dt, 3),
      'ms_per_step_repeats': [round(1e3 * t, 3) for t in times],
      'gflop_per_image': round(flops / config.train.batch_size / 1e9, 4),
      'tflops_per_device': round(per_device_flops / 1e12, 2),
      'mfu': round(per_device_flops / peak, 4) if (peak and flops) else None,
      'compile_seconds': round(compile_s, 1), 'loss': float(metrics['loss']),
  }
  if measured_peak:
    result['mfu_measured_peak'] = round(per_device_flops / measured_peak, 4)
  return result


# Each op of the augmentation, and the change that turns it off (augment.PRESETS fields).
AUGMENT_OPS = {'crop': {'random_crop': False}, 'flip': {'flip_prob': 0.0}, 'jitter': {'jitter_prob': 0.0},
               'grayscale': {'grayscale_prob': 0.0}, 'blur': {'blur_prob': 0.0}, 'solarize': {'solarize_prob': 0.0}}


def _augment_op_enabled(cfg, op: str) -> bool:
  if op == 'crop':
    return bool(cfg.get('random_crop', True))
  value = cfg[f'{op}_prob']
  return any(float(v) > 0 for v in (value if isinstance(value, (tuple, list)) else (value,)))


def _timed_repeats(run) -> list[float]:
  """Seconds per call, one figure per repeat: `run(k)` makes k calls and returns what to wait for."""
  jax.block_until_ready(run(FLAGS.warmup))
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(FLAGS.steps))
    times.append((time.perf_counter() - t0) / FLAGS.steps)
  return times


def time_augmentation(config) -> list[dict]:
  """ms per batch of the device augmentation as the step runs it, and without each op in turn."""
  config = config_lib.finalize(config.copy_and_resolve_references())
  mesh = step_lib.make_mesh(config.train.num_devices)
  batch, channels = fake_batch(config, mesh)
  mean, std = (0.5,) * channels, (0.25,) * channels
  dtype = jnp.bfloat16 if config.train.compute_dtype == 'bfloat16' else jnp.float32
  base = config.data.augment
  results = []
  for name in ['all'] + [f'-{op}' for op in AUGMENT_OPS if _augment_op_enabled(base, op)]:
    cfg = ml_collections.ConfigDict({**base.to_dict(), **AUGMENT_OPS.get(name[1:], {})})

    @jax.jit
    def views(images, indices, step, cfg=cfg):
      v1, v2 = augment.two_views(images, indices, step, config.seed, cfg, config.data.image_size)
      v1, v2 = step_lib.normalize(v1, mean, std), step_lib.normalize(v2, mean, std)
      return jnp.concatenate([v1.astype(dtype), v2.astype(dtype)], axis=0)

    args = (batch['image'], batch['index'], jnp.int32(1))
    times = _timed_repeats(lambda k, views=views, args=args: [views(*args) for _ in range(k)])
    dt = statistics.median(times)
    results.append({'augment': name, 'preset': config.data.augment_preset, 'device': jax.devices()[0].device_kind,
                    'num_devices': mesh.size, 'image_size': config.data.image_size,
                    'batch_size': config.train.batch_size, 'ms_per_batch': round(1e3 * dt, 3),
                    'ms_per_batch_repeats': [round(1e3 * t, 3) for t in times]})
  total = results[0]['ms_per_batch']
  for r in results[1:]:
    r['op_ms'] = round(total - r['ms_per_batch'], 3)  # what the op costs inside the whole augmentation
  return results


def main(argv):
  del argv
  config_lib.set_cpu_devices(FLAGS.config)
  measured_peak = None
  if FLAGS.measure_peak:
    measured_peak = measured_peak_flops(FLAGS.config.train.compute_dtype)
    print(json.dumps({'measured_peak_tflops': round(measured_peak / 1e12, 1), 'device': jax.devices()[0].device_kind,
                      'dtype': FLAGS.config.train.compute_dtype}), flush=True)
  if not FLAGS.variants and not FLAGS.augment_ops:
    raise app.UsageError('nothing to time: give --variants, --augment_ops or both')
  for v in FLAGS.variants:  # fail on a misspelt variant before compiling anything
    try:
      parse_variant(v)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  results = []
  for v in FLAGS.variants:
    try:
      results.append(time_variant(FLAGS.config, v, measured_peak))
      print(json.dumps(results[-1]), flush=True)
    except Exception as e:  # pylint: disable=broad-except
      # One failing variant (say, out of memory) should not cost the others' numbers.
      traceback.print_exc()
      print(json.dumps({'variant': v, 'error': f'{type(e).__name__}: {e}'[:500]}), flush=True)
  if FLAGS.variants and not results:
    raise SystemExit('every benchmark variant failed')
  if FLAGS.augment_ops:
    for r in time_augmentation(FLAGS.config):
      print(json.dumps(r), flush=True)
  if results:
    base = results[0]['ms_per_step']
    print(json.dumps({'relative_ms_per_step': {r['variant']: round(r['ms_per_step'] / base, 3) for r in results}}))
    print(json.dumps(results[0]), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
