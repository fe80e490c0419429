"""The random network a study's "step 0" stands for: probe, kNN and collapse indicators of randomly initialised
networks, with BatchNorm's untrained running statistics (mean 0, var 1) and with statistics estimated from data
(precise BN, eval.precise_bn), over seeds.

  python scripts/checks/random_network.py [--config=configs/study/predictors.py] [--seeds=5] [--out=FILE.json]

The config is a study config (its base is used) or a run config. Prints one JSON line per (seed, mode) and a
summary (mean, sample std) per mode; --out writes them all as one JSON file.
"""
import json
import os

import numpy as np
from absl import app, flags

flags.DEFINE_string('config', 'configs/study/predictors.py', 'A study config (its base) or a run config.')
flags.DEFINE_integer('seeds', 5, 'Seeds 0..seeds-1.')
flags.DEFINE_string('out', '', 'Also write the results to this JSON file.')
FLAGS = flags.FLAGS
KEYS = ('linear_probe_top1', 'knn_top1', 'z_std_times_sqrt_d', 'z_effective_rank', 'feature_effective_rank')


def main(argv):
  del argv
  from byol_jax import config as config_lib
  from byol_jax.config import load_config_module
  config = load_config_module(os.path.abspath(FLAGS.config), os.path.basename(FLAGS.config)).get_config()
  config = config.base if 'base' in config else config
  config_lib.set_cpu_devices(config)
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  from byol_jax import features, optim
  from byol_jax import state as state_lib
  from byol_jax import step as step_lib
  config = config_lib.finalize(config)
  mesh = step_lib.make_mesh(config.train.num_devices)
  data, info = features.load_data(config)
  rows = []
  for seed in range(FLAGS.seeds):
    config.seed = seed
    networks, state = state_lib.build(config, in_channels=data['train'][0].shape[-1],
                                      num_classes=info['num_classes'], tx=optim.make_optimizer(config))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    feature_fn = features.make_feature_fn(config, networks, info)
    precise = features.precise_batch_stats(features.make_batch_stats_fn(config, networks, info, mesh), state,
                                           features.precise_bn_batches(config, data), mesh)
    for mode, evaluated in (('untrained_bn', state), ('precise_bn', state.replace(batch_stats=precise))):
      result = features.run_evaluation(config, feature_fn, evaluated, data, info, mesh)
      row = {'seed': seed, 'mode': mode, **{k: float(result[k]) for k in KEYS}}
      print(json.dumps(row), flush=True)
      rows.append(row)
  summary = {mode: {k: {'mean': float(np.mean([r[k] for r in rows if r['mode'] == mode])),
                        'std': float(np.std([r[k] for r in rows if r['mode'] == mode], ddof=1))
                        if FLAGS.seeds > 1 else None} for k in KEYS}
             for mode in ('untrained_bn', 'precise_bn')}
  print(json.dumps({'summary': summary, 'seeds': FLAGS.seeds, 'config': FLAGS.config,
                    'precise_bn_batches': config.eval.precise_bn_batches,
                    'probe_train_examples': config.eval.num_train or 'all'}), flush=True)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump({'rows': rows, 'summary': summary, 'config': FLAGS.config}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
