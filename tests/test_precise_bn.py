"""Precise BatchNorm (byol_jax/train.py): the statistics an evaluation re-estimates from data."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from byol_jax import config as config_lib
from byol_jax import optim, train
from byol_jax import state as state_lib
from byol_jax import step as step_lib
from byol_jax.config import load_config_module
from byol_jax.data import augment
from byol_jax.models.norm import ViewBatchNorm

import os
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures('xla_unoptimized')  # numbers against numbers: compile little


def _setup(devices=2):
  c = config_lib.finalize(load_config_module(os.path.join(ROOT, 'configs', 'x.py'), 'tiny.py').get_config())
  c.train.batch_size = 32
  mesh = step_lib.make_mesh(devices)
  data, info = train.load_data(c)
  networks, state = state_lib.build(c, in_channels=3, num_classes=info['num_classes'], tx=optim.make_optimizer(c))
  return c, mesh, data, info, networks, jax.device_put(state, NamedSharding(mesh, P()))


def _batch_mode_features(c, networks, info, state, images):
  """The tower in training mode (statistics of this batch, one view) on un-augmented images: the function
  evaluation with precise BatchNorm over exactly these images must equal."""
  def fn(images):
    x = step_lib.normalize(augment.eval_view(images, c.data.image_size), info['mean'], info['std'])
    model = nnx.merge(networks.online_eval, state.params, state.batch_stats)
    for _, m in nnx.iter_modules(model):
      if isinstance(m, ViewBatchNorm):
        m.use_running_average, m.views = False, 1
    return model.tower(x)
  f, z = jax.vmap(fn, axis_name=step_lib.AXIS)(images[None])  # a one-member 'data' axis: the batch is all there is
  return np.asarray(f[0]), np.asarray(z[0])


def test_precise_bn_evaluation_equals_evaluation_with_the_batch_statistics_of_the_same_images():
  c, mesh, data, info, networks, state = _setup()
  images = data['train'][0][:c.train.batch_size]
  stats_fn = train.make_batch_stats_fn(c, networks, info, mesh)
  precise = train.precise_batch_stats(stats_fn, state, [images], mesh)  # one batch: its own statistics
  features = train.make_feature_fn(c, networks, info)
  f, z = features(state.params, precise, images)  # inference mode with the re-estimated statistics
  f_ref, z_ref = _batch_mode_features(c, networks, info, state, images)
  np.testing.assert_allclose(np.asarray(f), f_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(z), z_ref, rtol=1e-4, atol=1e-4)
  # The untrained statistics (mean 0, var 1) give another network: the test can tell them apart.
  f_init, _ = features(state.params, state.batch_stats, images)
  assert np.abs(np.asarray(f_init) - f_ref).max() > 1e-2
  # The training state is not changed, and statistics outside the tower (the predictor's) are kept.
  chex_leaves = jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                             precise['predictor'], state.batch_stats['predictor']))
  assert all(chex_leaves)


def test_precise_bn_averages_the_batch_statistics_of_its_batches():
  c, mesh, data, info, networks, state = _setup()
  stats_fn = train.make_batch_stats_fn(c, networks, info, mesh)
  a, b = data['train'][0][:32], data['train'][0][32:64]
  both = train.precise_batch_stats(stats_fn, state, [a, b], mesh)
  one_a = train.precise_batch_stats(stats_fn, state, [a], mesh)
  one_b = train.precise_batch_stats(stats_fn, state, [b], mesh)
  jax.tree.map(lambda x, y, z: np.testing.assert_allclose(np.asarray(x), (np.asarray(y) + np.asarray(z)) / 2,
                                                          rtol=1e-5, atol=1e-6), both['tower'], one_a['tower'],
               one_b['tower'])
  # The batches are the same for every run: the first precise_bn_batches x batch_size train images, wrapping.
  c.eval.precise_bn_batches = 3
  batches = list(train.precise_bn_batches(c, data))
  assert len(batches) == 3 and all(len(x) == 32 for x in batches)
  np.testing.assert_array_equal(batches[1], data['train'][0][32:64])
