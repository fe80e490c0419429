"""Per-run speed of K runs trained together (byol_jax/batched.py) against the same runs one after another.

  python scripts/gpu/batched_runs_bench.py [--runs=3,8,16,32] [--steps=50] [--repeats=3] [--data_path=DIR]
      [--row=directpred] [--vary=optim.weight_decay] [--set=key=value ...] [--feeds=host,device]

The network is the Fashion-MNIST study network in the paper's regime (configs/study/_base.py's paper_regime_base,
as configs/study/predictors.py builds it: tiny ResNet width 32, batch 128, 28 px, float32), with the switches of
the study row --row (default directpred, eigh). 'one after another' is one run's ordinary step (byol_jax.step, what
the study runner trains; K runs one after another take K times as long); 'together K' is byol_jax.batched's step
over K runs, seeds 0..K-1 (and with --vary a different value of that key each, so that it is traced). Per-run
speed-up = K x (ms per step alone) / (ms per step of K together). At >= 1.5x on a GPU the study runner was to adopt
batching; on an H100 (2026-12-06) it measured 1.91x at K=3 and 3.93x at K=16, and `python -m byol_jax.study
--batch_runs=K` trains a study's runs so (byol_jax/train_batched.py). scripts/gpu/bench_and_study.sh's predictors
part runs this script on its own network (--set) to size the study.

feed 'host' feeds each step as byol_jax.train does (each run's batch made on the host from its own InMemorySource,
then put on the device: part of a run's cost); feed 'device' rotates 4 batches already on the device (the program
alone). Excluded on both sides: evaluation, checkpoints, and compilation, which is reported apart
(`compile_s`): one run after another compiles each run's step (its seed is part of the program), together once.

On a CPU it runs (say --runs=1,2 --steps=3 --repeats=1) but measures XLA:CPU, where batched convolutions are slower
(docs/benchmarks.md); the figure that decides is the GPU's (scripts/gpu/bench_and_study.sh, part `batched`).
Prints one JSON line per (feed, K) and last a summary line.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: configs/


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def study_config(row: str, sets: list[str]):
  """The run config of the study row `row` (seed 0): configs/study/predictors.py's base with the row's switches."""
  from byol_jax import config as config_lib, switches
  study = config_lib.load_config_module(os.path.join(ROOT, 'configs', 'study', 'x.py'), 'predictors.py').get_config()
  c = study.base
  switches.apply_switches(c, study.rows[row] if row in study.rows else row)
  c.train.num_devices = 1
  config_lib.override(c, {k: _value(v) for k, v in (kv.split('=', 1) for kv in sets)})
  return config_lib.finalize(c)


def run_configs(base, k: int, vary: str):
  """K runs: seeds base.seed + r and, with `vary`, that key at (1 + r / 10) x its base value."""
  from byol_jax import config as config_lib
  configs = []
  for r in range(k):
    c = base.copy_and_resolve_references()
    c.seed = base.seed + r
    if vary:
      config_lib.override(c, {vary: float(_get(base, vary)) * (1 + r / 10)})
    configs.append(c)
  return configs


def _get(c, key: str):
  node = c
  for part in key.split('.'):
    node = node[part]
  return node


def load_images(base, data_path: str):
  """(images, labels) of the train split: Fashion-MNIST from data_path, else random images of its shape."""
  import numpy as np
  from byol_jax.data import sources
  if data_path:
    d = sources.load_dataset('fashion_mnist', data_path)
    return d['train']['images'], d['train']['labels']
  rng = np.random.default_rng(0)
  s = base.data.image_size
  return rng.integers(0, 256, (60000, s, s, 1), dtype=np.uint8), rng.integers(0, 10, (60000,)).astype(np.int32)


def timed(run, steps: int, repeats: int, warmup: int = 2) -> list[float]:
  """Seconds per step, one per repeat; run(k) takes k steps and returns what to wait for."""
  import jax
  jax.block_until_ready(run(warmup))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(steps))
    times.append((time.perf_counter() - t0) / steps)
  return times


def bench_runs(configs, images, labels, mesh, feeds: list[str], steps: int, repeats: int, alone: bool) -> dict:
  """{feed: timings} of configs trained together (alone=False) or of configs[0] by the ordinary step (alone=True),
  compiled once for all feeds."""
  import jax
  from byol_jax import batched, optim, state as state_lib, step as step_lib
  from byol_jax.data import sources
  info = sources.dataset_info('fashion_mnist')
  t0 = time.perf_counter()
  if alone:
    c = configs[0]
    tx = optim.make_optimizer(c)
    networks, state = state_lib.build(c, in_channels=1, num_classes=10, tx=tx)
    step = step_lib.shard_map_step(step_lib.make_step(c, networks, tx, info['mean'], info['std']), mesh)
    state = batched.replicate(mesh, state)
    src = batched.make_sources([c], images, labels)[0]
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(step_lib.AXIS))
    make_batch = lambda k: jax.device_put(src.batch(k), split)
    call = lambda s, b: step(s, b)
  else:
    networks, state, values = batched.build(configs, in_channels=1, num_classes=10)
    step = batched.shard_map_step(batched.make_step(configs[0], networks, info['mean'], info['std']), mesh)
    state, values = batched.replicate(mesh, state), batched.replicate(mesh, batched.as_arrays(values))
    run_sources = batched.make_sources(configs, images, labels)
    make_batch = lambda k: batched.shard_batch(mesh, batched.stack_batches(run_sources, k))
    call = lambda s, b: step(s, b, values)
  state, metrics = call(state, make_batch(0))  # compiles (and takes a first step)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  ready = [make_batch(k) for k in range(1, 5)]
  holder = {'state': state, 'k': 1, 'metrics': metrics}
  results = {}
  for feed in feeds:
    def run(n, feed=feed):
      for _ in range(n):
        b = make_batch(holder['k']) if feed == 'host' else ready[holder['k'] % 4]
        holder['state'], holder['metrics'] = call(holder['state'], b)
        holder['k'] += 1
      return holder['metrics']

    times = timed(run, steps, repeats)
    results[feed] = {'ms_per_step': 1e3 * statistics.median(times), 'ms_repeats': [round(1e3 * t, 3) for t in times],
                     'compile_s': round(compile_s, 1),
                     'finite': bool(jax.numpy.all(jax.numpy.isfinite(holder['metrics']['loss'])))}
  return results


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--runs', default='3,8,16,32', help='comma-separated K (runs trained together)')
  ap.add_argument('--steps', type=int, default=50, help='timed steps per repeat')
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--row', default='directpred', help="configs/study/predictors.py's row (or switches)")
  ap.add_argument('--vary', default='', help='a batchable key given a different value in each run')
  ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='config changes (repeatable)')
  ap.add_argument('--feeds', default='host,device')
  ap.add_argument('--data_path', default='', help='Fashion-MNIST folder (default: random images of its shape)')
  ap.add_argument('--out', default='', help='also append the JSON lines to this file')
  args = ap.parse_args()
  base = study_config(args.row, args.set)
  from byol_jax import config as config_lib
  config_lib.set_cpu_devices(base)  # before JAX starts: one device (train.num_devices=1 uses one anyway)
  import jax
  from byol_jax import step as step_lib
  mesh = step_lib.make_mesh(1)
  images, labels = load_images(base, args.data_path)
  ks = [int(k) for k in args.runs.split(',')]
  common = {'device': jax.devices()[0].device_kind, 'platform': jax.devices()[0].platform, 'jax': jax.__version__,
            'row': args.row, 'vary': args.vary, 'backbone': base.model.backbone, 'width': base.model.width,
            'batch_size': base.train.batch_size, 'compute_dtype': base.train.compute_dtype,
            'predictor': base.predictor.kind, 'solver': base.predictor.solver, 'steps': args.steps,
            'repeats': args.repeats}
  out = open(args.out, 'a') if args.out else None

  def emit(d):
    line = json.dumps({**common, **d})
    print(line, flush=True)
    if out:
      out.write(line + '\n')
      out.flush()

  summary, feeds = {}, args.feeds.split(',')
  one = bench_runs(run_configs(base, 1, ''), images, labels, mesh, feeds, args.steps, args.repeats, alone=True)
  for feed in feeds:
    emit({'feed': feed, 'mode': 'alone', 'runs': 1, **one[feed]})
  for k in ks:  # each K compiled once, timed with each feed; a failure (memory, say) leaves the other K
    try:
      together = bench_runs(run_configs(base, k, args.vary), images, labels, mesh, feeds, args.steps, args.repeats,
                            alone=False)
    except Exception as e:  # pylint: disable=broad-except
      emit({'mode': 'together', 'runs': k, 'error': f'{type(e).__name__}: {e}'[:300]})
      continue
    for feed, r in together.items():
      speedup = k * one[feed]['ms_per_step'] / r['ms_per_step']
      emit({'feed': feed, 'mode': 'together', 'runs': k, **r, 'ms_per_run_step': r['ms_per_step'] / k,
            'per_run_speedup': round(speedup, 3)})
      summary.setdefault(feed, {})[k] = round(speedup, 3)
  # The host feed decides: it is how a study trains (byol_jax.train feeds every step from the host).
  decisive = summary.get('host') or next(iter(summary.values()), {})
  best = max(decisive.values(), default=None)
  emit({'summary': summary, 'best_per_run_speedup': best,
        'adopt_in_study_runner': bool(best is not None and best >= 1.5 and jax.devices()[0].platform == 'gpu')})


if __name__ == '__main__':
  main()
