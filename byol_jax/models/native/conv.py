"""Convolutions for XLA:CPU: the same function as `lax.conv_general_dilated`, without its slow cases.

XLA's algebraic simplifier swaps a convolution's operands when the input is smaller than the kernel
(a 3x3 kernel over the 2x2 maps of ResNet's last stage, or over the 2x2 output gradient of a stride-2
3x3 convolution from 4x4). The CPU runtime then runs the swapped convolution on a slow generic path:
300-650 ms where a matrix product of the same numbers takes 5-15 ms (docs/records/benchmarks_log_2026-11.md,
"The training step on CPU"). Those few layers were most of the CPU training step: ~70% of the default Fashion-MNIST
step and of the ResNet-18 step at 64 px.

`conv_general_dilated` (a drop-in `conv_general_dilated` for `nnx.Conv`) keeps XLA's convolution where
it is fast and computes the rest as matrix products on patches (im2col), with a custom VJP so that the
backward pass makes the same choice:
  - forward: matrix product when the input is smaller than the kernel, or the kernel is 1x1;
  - input gradient: when the output gradient is smaller than the kernel (XLA would swap it), or 1x1,
    the gradient of the patches (one product) is placed back with padded slices (col2im);
  - weight gradient: a product of patches and output gradient for 1x1 kernels (XLA's form is a
    convolution with a batch-sized window: ~10x slower there), XLA's transpose otherwise.
`conv_general_dilated_native` is the same with the compiled CPU kernels (kernels.py) where they are built
and faster (float32; docs/benchmarks.md): the weight gradients of kernels larger than 1x1 (XLA transposes
x and dy for them and then runs at ~25 GFLOP/s; the kernel reads them in place at 90-235 GFLOP/s), and the
forward and stride-1 input gradient of the other convolutions whose kernel holds at most 1152 inputs
(3x3x128: 1.1-2.1x XLA's there; with 256 input channels XLA's is faster), and the forward over maps smaller
than a kernel of up to 3x3x256 (2x2 maps: the kernel skips the taps in the padding, which im2col
multiplies). XLA's computation everywhere else and on other platforms.
Results equal XLA's up to float32 summation order (tests/test_models.py). Anything else (dilations,
groups, other layouts) goes to `lax.conv_general_dilated` unchanged.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from byol_jax.models.native import kernels

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _is_nhwc(dimension_numbers) -> bool:
  expected = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == expected
  return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, *, native_kernels=False,
                         **kwargs):
  """`lax.conv_general_dilated` with XLA:CPU's slow cases computed as matrix products (see module doc);
  `native_kernels`: kernels.py's compiled kernels on CPU where they are faster (see module doc)."""
  plain = (lhs.ndim == 4 and _is_nhwc(dimension_numbers) and feature_group_count == 1 and not isinstance(padding, str)
           and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and kwargs.get('preferred_element_type') is None and kwargs.get('out_sharding') is None)
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision, **kwargs)
  strides = tuple(int(s) for s in window_strides)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(strides, pads, precision, bool(native_kernels), lhs, rhs)


def conv_general_dilated_native(*args, **kwargs):
  """`conv_general_dilated` with the compiled CPU kernels (see module doc)."""
  return conv_general_dilated(*args, native_kernels=True, **kwargs)


def _xla_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


def _out_size(size, k, stride, pad):
  return (size + pad[0] + pad[1] - k) // stride + 1


def _patches(x, kernel_hw, strides, pads):
  """[N, Ho, Wo, kh * kw * C]: the input under each kernel tap, taps in (i, j) order (HWIO's order)."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  n, h, w, c = x.shape
  ho, wo = _out_size(h, kh, sh, pads[0]), _out_size(w, kw, sw, pads[1])
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  taps = [lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _small(spatial, kernel_hw) -> bool:
  """XLA swaps the operands of a convolution whose input is smaller than its kernel; 1x1 is a product."""
  return tuple(kernel_hw) == (1, 1) or spatial[0] < kernel_hw[0] or spatial[1] < kernel_hw[1]


def _native_forward(x, w, native_kernels) -> bool:
  """Whether the compiled forward is used (see module doc): kernels of up to 3x3x128 inputs, and up to 3x3x256 over
  maps smaller than the kernel (the default network's 2x2 stage: the kernel skips the taps that fall in the padding,
  which im2col multiplies; with ResNet-18's 3x3x512 the step is slower, measured)."""
  kh, kw, cin, _ = w.shape
  limit = 2304 if _small(x.shape[1:3], (kh, kw)) else 1152
  return (native_kernels and kernels.conv_supports(x, w) and (kh, kw) != (1, 1) and kh * kw * cin <= limit
          and kernels.available())


def _native_conv(x, w, strides, pads, precision, native_kernels):
  """XLA's convolution, or on CPU the compiled one where it is faster (see module doc)."""
  if not _native_forward(x, w, native_kernels):
    return _xla_conv(x, w, strides, pads, precision)
  return lax.platform_dependent(
      x, w, cpu=lambda x_, w_: kernels.conv(x_, w_, strides, pads),
      default=lambda x_, w_: _xla_conv(x_, w_, strides, pads, precision))  # the kernel exists for CPUs only


def _forward(strides, pads, precision, native_kernels, x, w):
  kh, kw, cin, cout = w.shape
  if not _small(x.shape[1:3], (kh, kw)) or _native_forward(x, w, native_kernels):
    return _native_conv(x, w, strides, pads, precision, native_kernels)
  p = _patches(x, (kh, kw), strides, pads)
  y = jnp.dot(p.reshape(-1, kh * kw * cin), w.reshape(kh * kw * cin, cout), precision=precision)
  return y.reshape(p.shape[:3] + (cout,)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _conv(strides, pads, precision, native_kernels, x, w):
  return _forward(strides, pads, precision, native_kernels, x, w)


def _conv_fwd(strides, pads, precision, native_kernels, x, w):
  return _forward(strides, pads, precision, native_kernels, x, w), (x, w)


def _col2im(dpatches, x_shape, kernel_hw, strides, pads):
  """The transpose of `_patches`: each tap's gradient padded back to its place, summed; padding cut."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  n, h, w, c = x_shape
  ho, wo = dpatches.shape[1:3]
  hp, wp = h + pads[0][0] + pads[0][1], w + pads[1][0] + pads[1][1]
  zero = jnp.zeros((), dpatches.dtype)
  dx = 0
  for k in range(kh * kw):
    i, j = divmod(k, kw)
    tap = dpatches[..., k * c:(k + 1) * c]
    dx = dx + lax.pad(tap, zero, ((0, 0, 0), (i, hp - i - sh * (ho - 1) - 1, sh - 1),
                                  (j, wp - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
  return dx[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w, :]


def _weight_grad(x, dy, w, strides, pads, precision, native_kernels):
  xla = lambda x_, dy_: jax.vjp(lambda w_: _xla_conv(x_, w_, strides, pads, precision), w)[1](dy_)[0]
  if not (native_kernels and kernels.supports(x, dy, w) and kernels.available()):
    return xla(x, dy)
  compiled = lambda x_, dy_: kernels.conv_weight_grad(x_, dy_, w.shape[:2], strides, pads)
  return lax.platform_dependent(x, dy, cpu=compiled, default=xla)  # the kernel exists for CPUs only


def _conv_bwd(strides, pads, precision, native_kernels, residuals, dy):
  x, w = residuals
  kh, kw, cin, cout = w.shape
  dy2 = dy.reshape(-1, cout)
  one_by_one = (kh, kw) == (1, 1)
  if _small(dy.shape[1:3], (kh, kw)):  # (also where the compiled kernel exists: it would need a transposed copy
    # of the kernel, 9 MB for 3x3x512x512, which costs more than col2im's padding)
    dpatches = jnp.dot(dy2, w.reshape(kh * kw * cin, cout).T, precision=precision)
    dx = _col2im(dpatches.reshape(dy.shape[:3] + (kh * kw * cin,)), x.shape, (kh, kw), strides, pads)
  elif strides == (1, 1) and native_kernels and all(lo < k and hi < k for (lo, hi), k in zip(pads, (kh, kw))):
    # Stride 1: the input gradient is the convolution of dy, padded by k - 1 - pad, with the flipped kernel
    # whose input and output channels are swapped.
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dx = _native_conv(dy, w_t, strides, ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]),
                                         (kw - 1 - pads[1][0], kw - 1 - pads[1][1])), precision, native_kernels)
  else:
    dx = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads, precision), x)[1](dy)[0]
  if one_by_one:
    p = _patches(x, (kh, kw), strides, pads).reshape(-1, cin)
    dw = jnp.dot(p.T, dy2, precision=precision).reshape(w.shape)
  else:
    dw = _weight_grad(x, dy, w, strides, pads, precision, native_kernels)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
