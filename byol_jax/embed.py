"""Export frozen backbone features of a split from a run's latest checkpoint.

  python -m byol_jax.embed --workdir=<dir> --split=test --out=features.npz

Writes `features` [N, D] (float32) and `labels` [N] (int32), for evaluating them your own way.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

from byol_jax import cli

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs: `embed` is also a library function (weights.py, tests), and
  importing it must not claim --workdir in a process that defines its own."""
  flags.DEFINE_string('workdir', None, 'A training run directory (holds config.json and checkpoints/).')
  flags.DEFINE_enum('split', 'test', ['train', 'test'], 'Which split to embed.')
  flags.DEFINE_string('out', None, 'Output .npz path.')


def embed(workdir: str, split: str):
  import jax
  from byol_jax import checkpoint, config as config_lib, features, optim, rundir, state as state_lib, step as step_lib
  if not os.path.exists(os.path.join(workdir, rundir.CONFIG)):
    raise FileNotFoundError(f'{os.path.join(workdir, rundir.CONFIG)} not found: --workdir must be a byol_jax '
                            'training run directory')
  config = config_lib.finalize(rundir.load_config(workdir))
  mesh = step_lib.make_mesh(config.train.num_devices)
  config.eval.num_train = 0  # embed the whole split
  data, info = features.load_data(config)
  tx = optim.make_optimizer(config)
  in_channels = data['train'][0].shape[-1] if data is not None else 3
  networks, state = state_lib.build(config, in_channels=in_channels, num_classes=info['num_classes'], tx=tx)
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, rundir.CHECKPOINTS))
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt.directory}')
  state = ckpt.restore(state)
  feature_fn = features.make_feature_fn(config, networks, info)
  bs = max(mesh.size, config.eval.batch_size // mesh.size * mesh.size)
  feats, labels, _ = features.extract_features(feature_fn, state, features.eval_batches(config, data, split, bs),
                                               mesh)
  return feats.astype(np.float32), labels.astype(np.int32), int(jax.device_get(state.step))


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
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)  # no --config: the run's config.json
