"""Export frozen backbone features of a split from a run's latest checkpoint.

  python -m byol_jax.embed --workdir=<dir> --split=test --out=features.npz

Writes `features` [N, D] (float32) and `labels` [N] (int32), for evaluating them your own way.
"""
from __future__ import annotations

import json
import os
import sys

import ml_collections
import numpy as np
from absl import app, flags

from byol_jax import cli

flags.DEFINE_string('workdir', None, 'A training run directory (holds config.json and checkpoints/).')
flags.DEFINE_enum('split', 'test', ['train', 'test'], 'Which split to embed.')
flags.DEFINE_string('out', None, 'Output .npz path.')
FLAGS = flags.FLAGS


def embed(workdir: str, split: str):
  import jax
  from byol_jax import checkpoint, config as config_lib, optim, state as state_lib, step as step_lib, train
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} not found: --workdir must be a byol_jax training run directory')
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  # JSON turns tuples into lists; the augmentation config is not used for embedding.
  config = config_lib.finalize(config)
  mesh = step_lib.make_mesh(config.train.num_devices)
  config.eval.num_train = 0  # embed the whole split
  data, info = train.load_data(config)
  tx = optim.make_optimizer(config)
  in_channels = data['train'][0].shape[-1] if data is not None else 3
  networks, state = state_lib.build(config, in_channels=in_channels, num_classes=info['num_classes'], tx=tx)
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'))
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt.directory}')
  state = ckpt.restore(state)
  feature_fn = train.make_feature_fn(config, networks, info)
  bs = max(mesh.size, config.eval.batch_size // mesh.size * mesh.size)
  features, labels, _ = train.extract_features(feature_fn, state, train.eval_batches(config, data, split, bs), mesh)
  return features.astype(np.float32), labels.astype(np.int32), int(jax.device_get(state.step))


def main(argv):
  del argv
  if not FLAGS.workdir or not FLAGS.out:
    print('error: --workdir and --out are required', file=sys.stderr)
    sys.exit(2)
  try:
    features, labels, step = embed(FLAGS.workdir, FLAGS.split)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  np.savez(FLAGS.out, features=features, labels=labels)
  print(f'wrote {FLAGS.out}: features {features.shape} from step {step}, labels {labels.shape}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)  # no --config: the run's config.json
