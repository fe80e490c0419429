"""ResNet pieces written by hand for speed give what Flax's own give.

Each case is one compiled program, on numpy's random numbers: eager calls compile every operation for every shape
(jax.random's too), which made these tests 4x slower (tests/test_models.py: 120 s -> 32 s of CPU, 2026-12-06).
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from byol_jax.models.resnet import max_pool_3x3_s2, max_pool_3x3_s2_phases

DN = ('NHWC', 'HWIO', 'NHWC')


def normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def relative_error(a, b) -> float:
  """The largest difference against b's scale (in numpy: jnp on concrete arrays compiles per shape)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def values_and_grads(fn, x, w, strides, padding):
  """The convolution fn(x, w) and its gradients (input, kernel) for a random output gradient: one program."""
  f = lambda x, w: fn(x, w, strides, padding, dimension_numbers=DN)
  dy = normal(2, jax.eval_shape(f, x, w).shape)

  def run(x, w, dy):
    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(dy))
  return jax.jit(run)(x, w, dy)


def _xla_pool(x):
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@jax.jit(static_argnums=0)
def pool_and_grad(pool, x, w):
  return pool(x), jax.grad(lambda x: jnp.sum((pool(x) * w).astype(jnp.float32)))(x)


@pytest.mark.parametrize('shape', [(2, 9, 8, 3), (2, 10, 11, 4), (2, 8, 12, 3), (3, 16, 16, 2)])
def test_max_pool_with_the_cheaper_backward_equals_xla_max_pool_ties_included(shape):
  """max_pool_3x3_s2 and max_pool_3x3_s2_phases: same outputs and the very same gradient as nnx.max_pool (the
  first maximum of each window takes it), on ReLU-like inputs full of ties, even and odd sizes; integer
  gradients make sums exact."""
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jnp.maximum(jnp.round(2.0 * normal(0, shape)), 0.0).astype(dtype)
    w = jnp.round(4.0 * normal(1, jax.eval_shape(_xla_pool, x).shape)).astype(dtype)
    reference = pool_and_grad(_xla_pool, x, w)
    for pool in (max_pool_3x3_s2, max_pool_3x3_s2_phases):
      chex.assert_trees_all_equal(pool_and_grad(pool, x, w), reference)


@pytest.mark.usefixtures('xla_unoptimized')
def test_resnet_with_either_max_pool_gives_the_same_features_and_gradients():
  """The ImageNet-stem ResNet, max_pool_impl='taps' (what 'auto' picks on GPUs) and 'phases' (on CPUs) against
  'xla': the same function, and neither uses XLA's select-and-scatter."""
  from byol_jax.models.resnet import ResNet
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 32, 32, 3))

  def features_and_grads(impl):
    model = ResNet('resnet_tiny', in_channels=3, width=8, stem='imagenet', max_pool_impl=impl, conv_impl='xla',
                   axis_name=None, rngs=nnx.Rngs(0))

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

  reference = features_and_grads('xla')
  for impl in ('taps', 'phases'):
    chex.assert_trees_all_close(features_and_grads(impl), reference, atol=1e-5, rtol=1e-5)


# (input [N, H, W, C], kernel size, stride, output channels): every path of models/native/conv.py, odd sizes included.
CONV_CASES = [
    ((3, 2, 2, 8), 3, 1, 6),    # input smaller than the kernel: forward and input gradient as products
    ((3, 4, 4, 8), 3, 2, 6),    # output gradient (2x2) smaller than the kernel: input gradient as a product
    ((3, 5, 3, 4), 3, 2, 6),    # odd, non-square: forward by XLA, input gradient (3x2) as a product
    ((3, 7, 7, 8), 1, 2, 6),    # 1x1 stride 2 (the shortcut): all three as products
    ((3, 6, 6, 8), 1, 1, 6),    # 1x1 stride 1
    ((3, 8, 8, 4), 3, 1, 6),    # ordinary: XLA's convolution and its transposes
    ((3, 9, 9, 1), 3, 2, 6),    # a one-channel stem, stride 2, odd size
    ((2, 16, 16, 3), 7, 2, 6),  # the ImageNet stem
]


@pytest.mark.usefixtures('xla_unoptimized')
@pytest.mark.parametrize('shape, k, stride, cout', CONV_CASES)
def test_cpu_convolution_equals_lax_convolution_values_and_gradients(shape, k, stride, cout):
  """models/native/conv.py's conv_general_dilated (the CPU default) against lax.conv_general_dilated: the same outputs
  and gradients (input and kernel) within float32 summation order, for every path it takes."""
  from byol_jax.models.native import conv
  x, w = normal(0, shape), normal(1, (k, k, shape[-1], cout)) / k
  pad = ((k - 1) // 2,) * 2
  run = lambda fn: values_and_grads(fn, x, w, (stride, stride), (pad, pad))
  chex.assert_trees_all_close(run(conv.conv_general_dilated), run(jax.lax.conv_general_dilated),
                              atol=1e-5, rtol=1e-5, custom_message=f'{shape} k{k} s{stride}')


# Cases of the compiled kernels (models/native): output channels a multiple of 16 (one and two register
# blocks), input channels 1, 3 and not a multiple of the channel block, strides 1 and 2, odd and non-square
# sizes, maps smaller than the kernel or than a tile, more images than a tile, the 7x7 stem, uneven padding.
NATIVE_CASES = [
    ((3, 14, 14, 32), 3, 1, 32, 1),
    ((3, 9, 9, 1), 3, 2, 32, 1),
    ((2, 7, 5, 12), 3, 2, 48, 1),
    ((4, 2, 2, 64), 3, 1, 16, 1),
    ((5, 2, 2, 160), 3, 1, 32, 1),   # maps smaller than the kernel, 3x3x160 inputs: the compiled forward too
    ((2, 4, 4, 40), 3, 2, 64, 1),
    ((2, 16, 16, 3), 7, 2, 16, 3),
    ((2, 6, 6, 8), 3, 1, 32, 0),
    ((2, 6, 7, 8), 1, 2, 32, 0),
    ((14, 4, 4, 32), 3, 2, 32, 1),   # maps narrower than a tile: the forward tiles 12 images (12 + 2)
    ((13, 5, 5, 16), 3, 1, 64, 1),
    ((2, 13, 16, 8), 3, 1, 32, 2),   # padding wider than a tap's reach: whole rows and columns of zeros
]


@pytest.mark.usefixtures('xla_unoptimized')
@pytest.mark.parametrize('shape, k, stride, cout, pad', NATIVE_CASES)
def test_native_weight_gradient_equals_lax_convolution_values_and_gradients(shape, k, stride, cout, pad):
  """conv_impl='native' (the CPU default where a C++ compiler exists; .ci/run installs one): the compiled weight
  gradient against lax.conv_general_dilated's, and the forward and input gradient unchanged, for every case."""
  from byol_jax.models.native import conv, kernels as native
  assert native.available(), 'the CPU kernels did not build (is g++ installed?)'
  x, w = normal(0, shape), normal(1, (k, k, shape[-1], cout)) / k
  run = lambda fn: values_and_grads(fn, x, w, (stride, stride), ((pad, pad), (pad, pad + 1)))
  # Sums of up to ~600 products in another order: float32 round-off measured against each array's scale.
  errors = jax.tree.map(relative_error, run(conv.conv_general_dilated_native), run(jax.lax.conv_general_dilated))
  assert max(errors) < 2e-6, (shape, k, stride, cout, errors)


def test_native_weight_gradient_replaces_xlas_and_falls_back_where_it_cannot():
  """With conv_impl='native' the kernel gradient of a 3x3 convolution is the custom call, not a convolution;
  output channels that are not a multiple of 16, and bfloat16, keep XLA's."""
  from byol_jax.models.native import conv, kernels as native
  assert native.available()

  def hlo(cout, dtype=jnp.float32):
    x, w = jnp.ones((2, 8, 8, 8), dtype), jnp.ones((3, 3, 8, cout), dtype)
    f = lambda w: jnp.sum(conv.conv_general_dilated_native(x, w, (1, 1), ((1, 1), (1, 1)),
                                                           dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return jax.jit(jax.grad(f)).lower(w).compile().as_text()

  text = hlo(16)
  assert native.TARGET in text and text.count(' convolution(') == 0
  for text in (hlo(12), hlo(16, jnp.bfloat16)):
    assert native.TARGET not in text and text.count(' convolution(') == 1


def test_native_convolution_routing_and_threads():
  """conv_impl='native': a 3x3 convolution with 32 output channels runs forward, input and weight gradient as
  the compiled kernels (no XLA convolution left), and their results do not depend on the thread count."""
  import os
  from byol_jax.models.native import conv, kernels as native
  assert native.available()
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 10, 10, 32))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32))

  def value_and_grads():
    f = lambda x, w: jnp.sum(jnp.sin(conv.conv_general_dilated_native(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
    fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    return fn.lower(x, w).compile().as_text(), fn(x, w)

  text, results = value_and_grads()
  assert text.count(native.CONV_TARGET) >= 2 and native.TARGET in text and text.count(' convolution(') == 0
  for threads in ('0', '1'):
    os.environ['BYOL_JAX_NATIVE_THREADS'] = threads
    try:
      chex.assert_trees_all_equal(value_and_grads()[1], results)
    finally:
      del os.environ['BYOL_JAX_NATIVE_THREADS']


def test_native_kernel_builds_are_cached_per_cpu(tmp_path, monkeypatch):
  """`-march=native` compiles for this CPU, so the build cache (which a cluster's shared home directory may hold
  for many machines) keys on the CPU: the same CPU reuses its library, another CPU gets its own build."""
  import subprocess
  import types
  from byol_jax.models.native import kernels
  monkeypatch.setenv('BYOL_JAX_CACHE', str(tmp_path))
  builds = []

  def fake_run(cmd, **kwargs):  # the compiler: its version, and a stand-in library for a build
    if '-o' in cmd:
      builds.append(cmd)
      open(cmd[cmd.index('-o') + 1], 'wb').close()
    return types.SimpleNamespace(stdout='c++ 1.0')

  monkeypatch.setattr(subprocess, 'run', fake_run)
  monkeypatch.setattr(kernels, 'cpu_description', lambda: 'flags : sse avx avx2')
  avx2 = kernels._build('c++')
  assert kernels._build('c++') == avx2 and len(builds) == 1
  monkeypatch.setattr(kernels, 'cpu_description', lambda: 'flags : sse avx avx2 avx512f')
  avx512 = kernels._build('c++')
  assert avx512 != avx2 and len(builds) == 2


def test_auto_convolution_uses_the_kernels_only_where_the_cpu_holds_their_vectors(monkeypatch):
  """conv_impl='auto' on a CPU: the compiled kernels with AVX2 (or AVX-512), 'matmul_small' without (their
  16-float vectors would live in memory there)."""
  from byol_jax.models import resnet
  monkeypatch.setattr(resnet.kernels, 'available', lambda: True)
  monkeypatch.setattr(resnet, 'cpu_has_avx2', lambda: True)
  assert resnet.resolve_conv_impl('auto') == 'native'
  monkeypatch.setattr(resnet, 'cpu_has_avx2', lambda: False)
  assert resnet.resolve_conv_impl('auto') == 'matmul_small'
  assert resnet.resolve_conv_impl('xla') == 'xla'


def test_cpu_convolution_routes_small_convolutions_around_xla():
  """The point of models/native/conv.py: of a 3x3 convolution over a 2x2 input, only the kernel gradient is left to XLA
  as a convolution (the forward and the input gradient, which XLA would swap, are products on patches)."""
  from byol_jax.models.native import conv
  x, w = jnp.ones((2, 2, 2, 8)), jnp.ones((3, 3, 8, 8))

  def convolutions(fn):
    f = lambda x, w: jnp.sum(fn(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(x, w).compile().as_text().count(' convolution(')

  assert convolutions(jax.lax.conv_general_dilated) == 3
  assert convolutions(conv.conv_general_dilated) == 1


@pytest.mark.usefixtures('xla_unoptimized')
def test_resnet_with_either_convolution_gives_the_same_features_and_gradients():
  """conv_impl='native' (what 'auto' picks on CPUs with AVX2) and 'matmul_small' (on others) against 'xla': the
  ResNet-18 layout at 32 px, down to 2x2 maps in the last stage, gives the same features and parameter gradients."""
  from byol_jax.models.resnet import ResNet
  x = jax.random.uniform(jax.random.PRNGKey(3), (4, 32, 32, 1))

  def features_and_grads(impl):
    model = ResNet('resnet18', in_channels=1, width=16, stem='cifar_stride2', conv_impl=impl, axis_name=None,
                   rngs=nnx.Rngs(0))

    def loss(m):
      features = m(x)
      return jnp.sum(jnp.sin(features)), features

    @nnx.jit
    def run(m):
      (_, features), grads = nnx.value_and_grad(loss, has_aux=True)(m)
      return features, grads

    features, grads = run(model)
    return features, nnx.to_pure_dict(grads)

  # Float32 round-off (another summation order), measured against each array's scale: BatchNorm's backward
  # amplifies the last bits of small entries, so an elementwise rtol would be the wrong yardstick. Measured
  # (2026-11-30): matmul_small 1.7e-6, native 1.1e-5 (its weight gradients sum over images in blocks, and the
  # last stage's BatchNorm sees 16 values per channel here).
  reference = features_and_grads('xla')
  for impl in ('matmul_small', 'native'):
    errors = jax.tree.map(relative_error, features_and_grads(impl), reference)
    assert max(jax.tree.leaves(errors)) < 3e-5, (impl, errors)
