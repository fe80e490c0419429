"""ResNet backbones (v1, as torchvision builds them) in Flax NNX.

`stem='imagenet'`: 7x7 stride-2 conv + 3x3 max-pool (ImageNet, STL-10 at 96 px).
`stem='cifar'`: one 3x3 stride-1 conv and no max-pool (CIFAR).
`stem='cifar_stride2'`: one 3x3 stride-2 conv, no max-pool: 4x cheaper on small images (Fashion-MNIST on CPU).
The ImageNet stem's max-pool, three implementations of one function (the same outputs and gradients as XLA's):
`max_pool_impl='taps'` is `max_pool_3x3_s2` (cheaper backward: 3.5% faster ResNet-18 steps on an H100),
'phases' is `max_pool_3x3_s2_phases` (the same forward; the backward written on the input's 2x2 phases, dense
shifts instead of strided pads: ~1.6x faster pool than XLA's on CPU), 'xla' is nnx.max_pool; 'auto' (default)
picks 'taps' on GPUs, 'phases' on CPUs and 'xla' on TPUs.
`padding='symmetric'` (default) pads as torchvision does; 'same' as TensorFlow/Haiku (DeepMind's BYOL): at stride 2
on an even side one pixel less before than after, in the stem convolution, the max-pool and the strided 3x3
convolutions (their CPU kernels and the taps/phases pools then give way to XLA's: byol_jax/weights.py imports).
BatchNorm takes `axis_name` so that, inside shard_map/pmap, its statistics are over the global batch, and
keeps per-view statistics when the views share one pass (models/norm.py).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from byol_jax.choices import CONV_IMPLS, MAX_POOL_IMPLS, PADDINGS, STEMS
from byol_jax.models.native import conv as cpu_conv, cpu_has_avx2, kernels
from byol_jax.models.norm import ViewBatchNorm

# torchvision initialises convolutions with kaiming_normal(fan_out, relu).
conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# (block kind, blocks per stage) for each named architecture (model.backbone: choices.BACKBONES).
ARCHITECTURES = {
    'resnet_tiny': ('basic', (1, 1, 1, 1)),
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
    'resnet101': ('bottleneck', (3, 4, 23, 3)),
    'resnet152': ('bottleneck', (3, 8, 36, 3)),
    'resnet200': ('bottleneck', (3, 24, 36, 3)),  # BYOL's largest (ResNet-200 2x: width 128)
}

# The convolution function of each conv_impl (models/native/conv.py: XLA:CPU's slow cases as matrix products;
# 'native' adds the compiled CPU convolution kernels of models/native/kernels.py).
CONV_FUNCTIONS = {'xla': jax.lax.conv_general_dilated, 'matmul_small': cpu_conv.conv_general_dilated,
                  'native': cpu_conv.conv_general_dilated_native}


def resolve_conv_impl(conv_impl: str) -> str:
  """'auto': on CPUs with AVX2 'native' where its kernels build, on other CPUs 'matmul_small', XLA's
  convolutions elsewhere (docs/cpu_kernels.md "Build")."""
  if conv_impl == 'auto':
    if jax.default_backend() != 'cpu':
      return 'xla'
    return 'native' if cpu_has_avx2() and kernels.available() else 'matmul_small'
  return conv_impl


def _conv(cin, cout, k, stride, dtype, rngs, conv_impl='xla', padding='symmetric'):
  pad = (k - 1) // 2
  # padding='same' (TensorFlow/Haiku) differs from symmetric only for a kernel > 1 at stride 2 on an even side: one
  # pixel less before than after. XLA's convolution takes 'SAME'; a string padding routes the CPU conv_impls
  # (native, matmul_small) to it, so those layers run on XLA's convolution (docs/weights.md).
  pads = 'SAME' if padding == 'same' and stride > 1 and k > 1 else ((pad, pad), (pad, pad))
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=pads, use_bias=False,
                  kernel_init=conv_init, dtype=dtype, rngs=rngs, conv_general_dilated=CONV_FUNCTIONS[conv_impl])


def _pool_taps(x):
  """The 9 taps of the 3x3 stride-2 windows (padding 1, -inf outside), first to last in scan order."""
  ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [x[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2, :] for i in range(3) for j in range(3)]


def max_pool_3x3_s2(x):
  """nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))) with the same gradient (to the first
  maximum of each window in scan order, as XLA's select-and-scatter), computed more cheaply.

  The forward also keeps which tap was each window's maximum (int8, 1/8 of the input's bytes in bf16); the
  backward places each output gradient back with 9 interior pads (one fusion that reads that index and
  the output gradient). XLA's own backward reads the input again and zero-fills and scatters into a padded
  copy of it. For the ResNet-18 step at 96 px and batch 256 on an H100: 1.35 GB less memory traffic, 3.5%
  faster steps (docs/benchmarks.md); a NaN input gets no gradient.
  """
  return _max_pool(x.shape[1], x.shape[2], x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))  # the input's height and width are static
def _max_pool(h, w, x):
  return _max_pool_fwd(h, w, x)[0]


def _max_pool_fwd(h, w, x):
  taps = _pool_taps(x)
  y = functools.reduce(jnp.maximum, taps)
  first = jnp.full(y.shape, len(taps), jnp.int8)  # index of the first tap equal to the maximum
  for k in reversed(range(len(taps))):
    first = jnp.where(taps[k] == y, jnp.int8(k), first)
  return y, first


def _max_pool_bwd(h, w, first, dy):
  zero = jnp.zeros((), dy.dtype)
  dx = 0
  for k in range(9):
    i, j = divmod(k, 3)
    grad = jnp.where(first == k, dy, zero)
    # Output (a, b) of tap (i, j) reads padded input (2a + i, 2b + j): interior padding 1 puts it there.
    dx = dx + jax.lax.pad(grad, zero, ((0, 0, 0), (i, h + 2 - i - 2 * grad.shape[1] + 1, 1),
                                       (j, w + 2 - j - 2 * grad.shape[2] + 1, 1), (0, 0, 0)))
  return (dx[:, 1:h + 1, 1:w + 1, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_3x3_s2_phases(x):
  """max_pool_3x3_s2 with the backward written on the input's 2x2 phases (even height and width; others fall
  back to max_pool_3x3_s2's backward).

  Input row 2a + r - 1 is tap row r of output row a: tap row 1 is phase 0 of block a, tap row 2 phase 1 of
  block a, tap row 0 phase 1 of block a - 1. So each phase's gradient is a sum of the taps' gradients, some
  shifted by one block: dense slices and adds XLA:CPU fuses into one loop, where the strided interior pads
  of max_pool_3x3_s2 (good on GPUs) and XLA's select-and-scatter are slow there."""
  return _max_pool_phases(x.shape[1], x.shape[2], x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _max_pool_phases(h, w, x):
  return _max_pool_fwd(h, w, x)[0]


def _next_block(g, axis):
  """out[a] = g[a + 1] along axis, 0 after the last block."""
  pad = [(0, 0)] * g.ndim
  pad[axis] = (0, 1)
  return jax.lax.slice_in_dim(jnp.pad(g, pad), 1, g.shape[axis] + 1, axis=axis)


def _max_pool_phases_bwd(h, w, first, dy):
  n, ho, wo, c = dy.shape
  if (h, w) != (2 * ho, 2 * wo):
    return _max_pool_bwd(h, w, first, dy)
  zero = jnp.zeros((), dy.dtype)
  g = [[jnp.where(first == 3 * i + j, dy, zero) for j in range(3)] for i in range(3)]  # tap (row i, column j)
  rows = [g[1], [g[2][j] + _next_block(g[0][j], 1) for j in range(3)]]  # row phase 0, 1; still by tap column
  phases = [[r[1], r[2] + _next_block(r[0], 2)] for r in rows]  # [row phase][column phase]: [n, ho, wo, c]
  dx = jnp.stack([jnp.stack(phases[0], 3), jnp.stack(phases[1], 3)], 2)  # [n, ho, 2, wo, 2, c]
  return (dx.reshape(n, h, w, c),)


_max_pool_phases.defvjp(_max_pool_fwd, _max_pool_phases_bwd)


def _bn(c, axis_name, dtype, rngs, zero_scale=False):
  return ViewBatchNorm(c, momentum=0.9, epsilon=1e-5, axis_name=axis_name, dtype=dtype,
                       scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
                       rngs=rngs)


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin, width, stride, *, axis_name, dtype, rngs, conv_impl='xla', zero_init_last_bn_scale=False,
               padding='symmetric'):
    cout = width * self.expansion
    self.conv1 = _conv(cin, width, 3, stride, dtype, rngs, conv_impl, padding)
    self.bn1 = _bn(width, axis_name, dtype, rngs)
    self.conv2 = _conv(width, cout, 3, 1, dtype, rngs, conv_impl)
    self.bn2 = _bn(cout, axis_name, dtype, rngs, zero_scale=zero_init_last_bn_scale)
    needs_projection = stride != 1 or cin != cout
    self.shortcut = _conv(cin, cout, 1, stride, dtype, rngs, conv_impl) if needs_projection else None
    self.shortcut_bn = _bn(cout, axis_name, dtype, rngs) if needs_projection else None

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.shortcut is not None:
      x = self.shortcut_bn(self.shortcut(x))
    return nnx.relu(x + y)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, width, stride, *, axis_name, dtype, rngs, conv_impl='xla', zero_init_last_bn_scale=False,
               padding='symmetric'):
    cout = width * self.expansion
    self.conv1 = _conv(cin, width, 1, 1, dtype, rngs, conv_impl)
    self.bn1 = _bn(width, axis_name, dtype, rngs)
    self.conv2 = _conv(width, width, 3, stride, dtype, rngs, conv_impl, padding)  # stride on the 3x3, as torchvision (v1.5)
    self.bn2 = _bn(width, axis_name, dtype, rngs)
    self.conv3 = _conv(width, cout, 1, 1, dtype, rngs, conv_impl)
    self.bn3 = _bn(cout, axis_name, dtype, rngs, zero_scale=zero_init_last_bn_scale)
    needs_projection = stride != 1 or cin != cout
    self.shortcut = _conv(cin, cout, 1, stride, dtype, rngs, conv_impl) if needs_projection else None
    self.shortcut_bn = _bn(cout, axis_name, dtype, rngs) if needs_projection else None

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.shortcut is not None:
      x = self.shortcut_bn(self.shortcut(x))
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """ResNet trunk: images [B, H, W, C] in [0, 1] -> globally pooled features [B, out_dim] (float32).

  `zero_init_last_bn_scale`: the last BatchNorm of every residual block starts with scale 0, so each block starts
  as its shortcut (Goyal et al. 2017; BYOL's Haiku ResNet does it in its bottleneck blocks). The random init is
  otherwise the same: the same keys draw the same convolutions.
  """

  def __init__(self, architecture: str, *, in_channels: int, width: int = 64, stem: str = 'imagenet',
               max_pool_impl: str = 'auto', conv_impl: str = 'auto', axis_name: str | None = 'data', dtype: Any = jnp.float32,
               zero_init_last_bn_scale: bool = False, padding: str = 'symmetric', rngs: nnx.Rngs):
    if architecture not in ARCHITECTURES:
      raise ValueError(f'unknown backbone {architecture!r}; choose one of {sorted(ARCHITECTURES)}')
    if stem not in STEMS:
      raise ValueError(f'unknown stem {stem!r}; choose one of {STEMS}')
    if max_pool_impl not in MAX_POOL_IMPLS:
      raise ValueError(f'unknown max_pool_impl {max_pool_impl!r}; choose one of {MAX_POOL_IMPLS}')
    if conv_impl not in CONV_IMPLS:
      raise ValueError(f'unknown conv_impl {conv_impl!r}; choose one of {CONV_IMPLS}')
    if padding not in PADDINGS:
      raise ValueError(f'unknown padding {padding!r}; choose one of {PADDINGS}')
    conv_impl = resolve_conv_impl(conv_impl)  # the same function either way; only the speed differs
    kind, stages = ARCHITECTURES[architecture]
    block = BasicBlock if kind == 'basic' else Bottleneck
    if max_pool_impl == 'auto':  # the same function either way; only the speed differs
      max_pool_impl = {'gpu': 'taps', 'cpu': 'phases'}.get(jax.default_backend(), 'xla')
    self.stem, self.max_pool_impl, self.padding = stem, max_pool_impl, padding
    self.stem_conv = _conv(in_channels, width, 7 if stem == 'imagenet' else 3, 1 if stem == 'cifar' else 2,
                           dtype, rngs, conv_impl, padding)
    self.stem_bn = _bn(width, axis_name, dtype, rngs)
    blocks = []
    cin = width
    for i, n in enumerate(stages):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block(cin, width * 2**i, stride, axis_name=axis_name, dtype=dtype, rngs=rngs,
                            conv_impl=conv_impl, zero_init_last_bn_scale=zero_init_last_bn_scale, padding=padding))
        cin = width * 2**i * block.expansion
    self.blocks = nnx.List(blocks)
    self.out_dim = cin

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem_conv(x)))
    if self.stem == 'imagenet':
      if self.padding == 'same':  # -inf padding as 'SAME' places it; the taps/phases pools pad (1, 1) only
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
      elif self.max_pool_impl == 'taps':
        x = max_pool_3x3_s2(x)
      elif self.max_pool_impl == 'phases':
        x = max_pool_3x3_s2_phases(x)
      else:
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
