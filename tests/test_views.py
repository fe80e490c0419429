"""One pass over the concatenated views equals the reference's two separate passes (per-view BatchNorm)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from byol_jax import config as config_lib
from byol_jax.models.heads import Tower
from byol_jax.models.norm import ViewBatchNorm, set_views

pytestmark = pytest.mark.usefixtures('xla_unoptimized')  # numbers against numbers: compile little


def _tower(views):
  config = config_lib.base_config()
  with config.unlocked():
    config.model.backbone, config.model.width, config.model.stem = 'resnet_tiny', 8, 'cifar_stride2'
    config.model.projector_hidden, config.model.projector_dim = 32, 16
    config.model.projector_bn_affine = True
  tower = Tower(config, in_channels=3, dtype=jnp.float32, rngs=nnx.Rngs(0))
  set_views(tower, views)
  g, params, stats = nnx.split(tower, nnx.Param, nnx.BatchStat)
  return g, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def _run(graphdef, params, stats, xs):
  """Applies the tower to each array of xs in turn (train mode); returns outputs and the final stats."""
  outs = []
  for x in xs:
    module = nnx.merge(graphdef, params, stats)
    outs.append(module(x))
    stats = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
  return outs, stats


def test_one_pass_over_both_views_equals_two_separate_passes():
  mesh = jax.sharding.Mesh(jax.devices()[:2], ('data',))  # BatchNorm statistics over 2 devices
  g1, params, stats = _tower(1)
  g2, _, _ = _tower(2)
  rng = np.random.default_rng(0)
  v1 = jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32)
  v2 = jnp.asarray(1.5 + 2.0 * rng.normal(size=(8, 16, 16, 3)), jnp.float32)  # other statistics

  def separate(v1, v2):
    (a, b), s = _run(g1, params, stats, [v1, v2])
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b), s

  def together(v1, v2):
    (out,), s = _run(g2, params, stats, [jnp.concatenate([v1, v2])])
    return out, s

  def mapped(fn):
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P('data'), P('data')), out_specs=(P('data'), P()),
                                 check_vma=False))

  def mixed(v1, v2):  # plain BatchNorm over the concatenated batch: what per-view statistics avoid
    (out,), s = _run(g1, params, stats, [jnp.concatenate([v1, v2])])
    return out, s

  # Each view is split over the devices; both ways give per device [v1 shard; v2 shard].
  (f_sep, z_sep), s_sep = mapped(separate)(v1, v2)
  (f_tog, z_tog), s_tog = mapped(together)(v1, v2)
  chex.assert_trees_all_close(f_tog, f_sep, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(z_tog, z_sep, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(s_tog, s_sep, atol=1e-6, rtol=1e-5)
  (_, z_mixed), _ = mapped(mixed)(v1, v2)
  assert float(jnp.max(jnp.abs(z_mixed - z_sep))) > 1e-2


def test_one_pass_gradients_equal_two_separate_passes():
  """The per-view BatchNorm's written-out backward (models/norm.py, on CPUs) against autodiff through two
  separate passes of flax's BatchNorm, statistics over 2 devices: parameter and input gradients."""
  mesh = jax.sharding.Mesh(jax.devices()[:2], ('data',))
  g1, params, stats = _tower(1)
  g2, _, _ = _tower(2)
  rng = np.random.default_rng(1)
  v1 = jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32)
  v2 = jnp.asarray(0.5 + 3.0 * rng.normal(size=(8, 16, 16, 3)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=(16,)), jnp.float32)  # a loss that weighs every output differently

  def loss(graphdef, views, params, v1, v2):
    outs, _ = _run(graphdef, params, stats, [jnp.concatenate([v1, v2])] if views == 2 else [v1, v2])
    z = jnp.concatenate([o[1] for o in outs])
    return jax.lax.psum(jnp.sum(jnp.sin(z * probe)), 'data')

  def grads(graphdef, views):
    fn = lambda p, a, b: jax.grad(lambda p, a, b: loss(graphdef, views, p, a, b), argnums=(0, 1, 2))(p, a, b)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                                 out_specs=(P(), P('data'), P('data')), check_vma=False))(params, v1, v2)

  together, separate = grads(g2, 2), grads(g1, 1)
  # Float32 round-off, measured against each array's scale (BatchNorm's backward amplifies the last bits of small
  # entries); a bias followed by BatchNorm has a zero gradient, so its scale is floored at 1. Measured
  # (2026-11-30): <= 5e-6 for both this backward and autodiff's through the same one-pass function.
  for t, r in zip(jax.tree.leaves(together), jax.tree.leaves(separate)):
    assert float(jnp.max(jnp.abs(t - r))) <= 2e-5 * max(float(jnp.max(jnp.abs(r))), 1.0)
  assert min(float(jnp.max(jnp.abs(t))) for t in jax.tree.leaves(together)[-2:]) > 1e-1  # input gradients


def test_view_batchnorm_rejects_an_odd_batch():
  bn = ViewBatchNorm(4, rngs=nnx.Rngs(0))
  bn.views = 2
  try:
    bn(jnp.ones((3, 4)))
  except ValueError as e:
    assert 'not divisible by views=2' in str(e)
  else:
    raise AssertionError('expected ValueError')
