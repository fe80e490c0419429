"""Two or more variants of the training step compiled in one process and timed alternately (A/B on a drifting VM).

  python scripts/cpu/step_ab.py --variants=no_augment,no_augment+conv_matmul_small [--rounds=15] [--ab_steps=3]
      [--config=configs/stl10.py --config.train.batch_size=32 ...]

Separate `bench` processes run minutes apart, and a shared VM drifts by +-15-30% in that time, so a 5% change hides
in the noise. Here every variant (`byol_jax.bench` variant strings) is compiled first, then each round times
`--ab_steps` steps of each in turn; the table gives each variant's median images/s and the median [quartiles] of its
per-round speed relative to the first variant. The state buffers are donated as in training.
"""
import statistics
import time

import jax
from absl import app, flags

from byol_jax import bench  # (defines --config and --variants, as for `python -m byol_jax.bench`)
from byol_jax import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_integer('rounds', 15, 'rounds; each times every variant once')
flags.DEFINE_integer('ab_steps', 3, 'steps per variant per round')


def build(config, variant):
  """A function running k steps of `variant` (its state kept inside), and the batch size."""
  config, _, _, step, state, batch = bench.build_variant(config, variant)
  compiled = step.lower(state, batch).compile()
  box = [state]

  def run(k):
    for _ in range(k):
      box[0], _ = compiled(box[0], batch)
    jax.block_until_ready(box[0])
  return run, config.train.batch_size


def main(argv):
  del argv
  config_lib.set_cpu_devices(FLAGS.config)
  runs = [build(FLAGS.config, v) for v in FLAGS.variants]
  for run, _ in runs:
    run(2)  # warm-up
  times = [[] for _ in runs]
  for _ in range(FLAGS.rounds):
    for (run, _), t in zip(runs, times):
      start = time.perf_counter()
      run(FLAGS.ab_steps)
      t.append((time.perf_counter() - start) / FLAGS.ab_steps)
  print(f'{jax.device_count()} devices, {FLAGS.rounds} rounds of {FLAGS.ab_steps} steps per variant')
  print('| variant | images/s (median) | speed vs the first, per round: median [quartiles] |')
  print('|---|---|---|')
  for v, (_, batch_size), t in zip(FLAGS.variants, runs, times):
    ratios = sorted(a / b for a, b in zip(times[0], t))
    q = lambda f: ratios[int(f * (len(ratios) - 1))]
    print(f'| {v} | {batch_size / statistics.median(t):.1f} | {statistics.median(ratios):.3f} [{q(0.25):.3f}, {q(0.75):.3f}] |')


if __name__ == '__main__':
  app.run(main)
