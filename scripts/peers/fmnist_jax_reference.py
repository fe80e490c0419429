"""byol_jax's side of the checks of the PyTorch peer scripts/peers/torch_fmnist_step.py (configs/fashion_mnist.py).

Run from the repository root with the project's interpreter (no torch here):
    python scripts/peers/fmnist_jax_reference.py [--expect 1557354] [--steps_npz ref.npz]
Prints one JSON line with byol_jax's trainable parameter count (the online state.params: tower = encoder +
projector, predictor, probe; the target tower is a copy, not counted), by part; exits 1 if --expect differs.
With --steps_npz it also runs two training steps of the real step function (byol_jax/step.py, both views in one
pass, batch 8) and writes the initial parameters, the two views, both steps' losses and the online and target
parameters after them; the batch goes in as training's host-made crops with augmentation preset 'none', so each
view is its crop resized to its own size and normalised, the same at both steps. `torch_fmnist_step.py --check
ref.npz` loads those parameters and views into the peer, runs its own two steps and compares.
"""
import argparse, json, os

import jax
import ml_collections
import numpy as np

from byol_jax import config as config_lib, optim, state as state_lib, step as step_lib


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def flat(tree, prefix):
  """{'prefix/tower/encoder/stem_conv/kernel': array, ...}"""
  return {prefix + '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def two_steps(config, networks, state, tx, path, n=8):
  config = config.copy_and_resolve_references()
  config.data.augment_preset, config.data.augment = 'none', ml_collections.ConfigDict()  # no random op
  config = config_lib.finalize(config)
  rng = np.random.default_rng(1)
  batch = dict(view1_u8=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),  # NHWC
               view2_u8=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
               label=rng.integers(0, 10, (n,)).astype(np.int32), index=np.arange(n, dtype=np.int32))
  mean, std = (0.5,), (0.25,)
  step = step_lib.shard_map_step(step_lib.make_step(config, networks, tx, mean, std), step_lib.make_mesh(1),
                                 donate=False)
  view1, view2 = jax.jit(lambda b: step_lib.make_views(b, 0, config, mean, std))(batch)  # what the step sees
  out = {**flat(state.params, 'p0/'), 'view1': np.asarray(view1), 'view2': np.asarray(view2),
         'label': batch['label'], 'index': batch['index']}
  losses = []
  for _ in range(2):
    state, metrics = step(state, batch)
    losses.append([float(metrics['loss']), float(metrics['probe_loss'])])
  out.update(flat(state.params, 'p2/'))
  out.update(flat(state.target_params, 't2/'))
  out['losses'] = np.array(losses, np.float64)
  np.savez(path, **out)
  return losses


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--config', default='configs/fashion_mnist.py')
  ap.add_argument('--expect', type=int, default=None)
  ap.add_argument('--steps_npz', default=None, help='also write the two-step reference for the peer here')
  a = ap.parse_args()
  module = config_lib.load_config_module(a.config, os.path.basename(a.config))
  c = config_lib.finalize(module.get_config())
  channels = 1 if c.data.name == 'fashion_mnist' else 3
  tx = optim.make_optimizer(c)
  networks, st = state_lib.build(c, in_channels=channels, num_classes=10, tx=tx)
  out = {'config': a.config, 'params': count(st.params), **{k: count(v) for k, v in st.params.items()},
         'encoder': count(st.params['tower']['encoder']), 'projector': count(st.params['tower']['projector'])}
  if a.expect is not None:
    out['expect'], out['match'] = a.expect, out['params'] == a.expect
  if a.steps_npz:
    out['steps_npz'], out['losses'] = a.steps_npz, two_steps(c, networks, st, tx, a.steps_npz)
  print(json.dumps(out), flush=True)
  if a.expect is not None and not out['match']:
    raise SystemExit(1)


if __name__ == '__main__':
  main()
