"""BatchNorm with per-view statistics, so the two augmented views can share one forward pass.

The reference code (and the DeepMind BYOL code) runs each view through the network on its own, so
BatchNorm normalises each view with that view's statistics. Running the two views as one batch of
2B is much faster on accelerators (half the kernel launches, larger convolutions), but plain
BatchNorm would then mix the statistics of both views. `ViewBatchNorm` with `views = V` splits the
leading axis into V equal groups, normalises each group with its own statistics (over the global
batch: pmean over `axis_name`) and updates the running averages group after group, exactly as V
separate calls would. So one pass over the concatenated views is the same function as the
reference's separate passes (tests/test_views.py checks it).

`views` is a static attribute (part of the graph definition): `set_views(module, 2)` sets it on
every ViewBatchNorm inside `module` before `nnx.split`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


class ViewBatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm (same variables: scale, bias, mean, var) whose batch statistics are per view."""

  views: int = 1

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = self.use_running_average if use_running_average is None else use_running_average
    if use_running_average or self.views == 1 or mask is not None:
      return super().__call__(x, use_running_average, mask=mask)
    v = self.views
    if x.shape[0] % v:
      raise ValueError(f'ViewBatchNorm: batch {x.shape[0]} is not divisible by views={v}')
    xg = x.reshape((v, x.shape[0] // v) + x.shape[1:])
    x32 = xg.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
    ones = jnp.ones(x.shape[-1], x32.dtype)  # (x * 1 + 0 is x exactly: one function with or without affine)
    scale = ones if self.scale is None else self.scale[...].astype(x32.dtype)
    bias = jnp.zeros_like(ones) if self.bias is None else self.bias[...].astype(x32.dtype)
    # The written-out backward on CPUs (faster there, docs/benchmarks.md); autodiff's elsewhere (not measured).
    normalize = _normalize if jax.default_backend() == 'cpu' else lambda *a: _normalize_fwd(*a)[0]
    y, mean, var = normalize(self.epsilon, self.axis_name, x32, scale, bias)
    running_mean, running_var = self.mean[...], self.var[...]
    for g in range(v):  # view after view, as separate calls would update them
      running_mean = self.momentum * running_mean + (1 - self.momentum) * mean[g]
      running_var = self.momentum * running_var + (1 - self.momentum) * var[g]
    self.mean[...] = jax.lax.stop_gradient(running_mean)
    self.var[...] = jax.lax.stop_gradient(running_var)
    return y.astype(self.dtype or x.dtype).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _normalize(epsilon, axis_name, x, scale, bias):
  """Per-view batch normalisation of x [V, B, ..., C] (statistics over every axis but the first and last, and over
  `axis_name`'s devices): (y, mean [V, C], var [V, C]). As flax: Var = E[x^2] - E[x]^2 clipped at 0, one pmean
  for both moments. The statistics are returned for the running averages only: they carry no gradient.

  The gradient is written out (the textbook BatchNorm backward: two sums per channel, then one pass over x)
  instead of left to autodiff, which on XLA:CPU keeps x - mean as an extra array and spends more passes over
  the activations (docs/benchmarks.md); the function is the same up to float32 round-off (tests/test_views.py).
  """
  return _normalize_fwd(epsilon, axis_name, x, scale, bias)[0]


def _stats_shape(x):
  return (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)


def _normalize_fwd(epsilon, axis_name, x, scale, bias):
  axes = tuple(range(1, x.ndim - 1))
  moments = jnp.stack([x.mean(axes), jnp.square(x).mean(axes)])  # [2, V, C]
  if axis_name is not None:
    moments = jax.lax.pmean(moments, axis_name)
  mean, var = moments[0], jnp.maximum(0.0, moments[1] - jnp.square(moments[0]))
  inv = jax.lax.rsqrt(var + epsilon)
  shape = _stats_shape(x)
  y = (x - mean.reshape(shape)) * (inv * scale).reshape(shape) + bias
  return (y, mean, var), (x, mean, inv, scale)


def _normalize_bwd(epsilon, axis_name, residuals, cotangents):
  x, mean, inv, scale = residuals
  dy = cotangents[0]  # (the statistics' cotangents are dropped: see _normalize)
  axes, shape = tuple(range(1, x.ndim - 1)), _stats_shape(x)
  x_hat = (x - mean.reshape(shape)) * inv.reshape(shape)
  sums = jnp.stack([dy.sum(axes), (dy * x_hat).sum(axes)])  # [2, V, C]: d bias, d scale per view
  # Means over the global batch of d x_hat = dy * scale and of d x_hat * x_hat (pmean: as autodiff's transpose).
  local_count = x.size // (x.shape[0] * x.shape[-1])
  means = sums * scale / local_count
  if axis_name is not None:
    means = jax.lax.pmean(means, axis_name)
  dx = (inv * scale).reshape(shape) * dy - inv.reshape(shape) * (
      means[0].reshape(shape) + x_hat * means[1].reshape(shape))
  return dx, sums[1].sum(0), sums[0].sum(0)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def set_views(module: nnx.Module, views: int) -> None:
  """Sets the number of views (batch groups with their own statistics) of every ViewBatchNorm in module."""
  for _, m in nnx.iter_modules(module):
    if isinstance(m, ViewBatchNorm):
      m.views = views
