"""ResNet pieces written by hand for speed give what Flax's own give."""
import chex
import jax
import jax.numpy as jnp
from flax import nnx

from byol_jax.models.resnet import max_pool_3x3_s2


def test_max_pool_with_the_cheaper_backward_equals_xla_max_pool_ties_included():
  """max_pool_3x3_s2: same outputs and the very same gradient as nnx.max_pool (the first maximum of each
  window takes it), on ReLU-like inputs full of ties and odd sizes; integer gradients make sums exact."""
  def xla_pool(x):
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

  for shape in ((2, 9, 8, 3), (2, 10, 11, 4)):
    for dtype in (jnp.float32, jnp.bfloat16):
      x = jnp.maximum(jnp.round(2.0 * jax.random.normal(jax.random.PRNGKey(0), shape)), 0.0).astype(dtype)
      w = jnp.round(4.0 * jax.random.normal(jax.random.PRNGKey(1), xla_pool(x).shape)).astype(dtype)
      grad = lambda pool: jax.grad(lambda x: jnp.sum((pool(x) * w).astype(jnp.float32)))(x)
      chex.assert_trees_all_equal(max_pool_3x3_s2(x), xla_pool(x))
      chex.assert_trees_all_equal(grad(max_pool_3x3_s2), grad(xla_pool))


def test_resnet_with_either_max_pool_gives_the_same_features_and_gradients():
  """The ImageNet-stem ResNet, max_pool_impl='taps' (what 'auto' picks on GPUs) against 'xla': the same function, and 'taps'
  does not use XLA's select-and-scatter."""
  from byol_jax.models.resnet import ResNet
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 32, 32, 3))

  def features_and_grads(impl):
    model = ResNet('resnet_tiny', in_channels=3, width=8, stem='imagenet', max_pool_impl=impl, axis_name=None,
                   rngs=nnx.Rngs(0))

    def loss(m):
      features = m(x)
      return jnp.sum(jnp.sin(features)), features

    @nnx.jit
    def run(m):
      (_, features), grads = nnx.value_and_grad(loss, has_aux=True)(m)
      return features, grads

    features, grads = run(model)
    uses_scatter = 'select_and_scatter' in str(jax.make_jaxpr(lambda m: nnx.grad(lambda m: loss(m)[0])(m))(model))
    assert uses_scatter == (impl == 'xla'), impl
    return features, nnx.to_pure_dict(grads)

  chex.assert_trees_all_close(features_and_grads('taps'), features_and_grads('xla'), atol=1e-5, rtol=1e-5)
