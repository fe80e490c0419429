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
    axes = tuple(range(1, xg.ndim - 1))  # per view, per channel (channels last)
    # As flax: float32 statistics, Var = E[x^2] - E[x]^2 clipped at 0, one pmean for both moments.
    x32 = xg.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
    moments = jnp.stack([x32.mean(axes), jnp.square(x32).mean(axes)])  # [2, V, C]
    if self.axis_name is not None:
      moments = jax.lax.pmean(moments, self.axis_name)
    mean, var = moments[0], jnp.maximum(0.0, moments[1] - jnp.square(moments[0]))
    running_mean, running_var = self.mean[...], self.var[...]
    for g in range(v):  # view after view, as separate calls would update them
      running_mean = self.momentum * running_mean + (1 - self.momentum) * mean[g]
      running_var = self.momentum * running_var + (1 - self.momentum) * var[g]
    self.mean[...] = jax.lax.stop_gradient(running_mean)
    self.var[...] = jax.lax.stop_gradient(running_var)
    stats_shape = (v,) + (1,) * len(axes) + (x.shape[-1],)
    mul = jax.lax.rsqrt(var + self.epsilon).reshape(stats_shape)
    if self.scale is not None:
      mul = mul * self.scale[...]
    y = (x32 - mean.reshape(stats_shape)) * mul
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(self.dtype or x.dtype).reshape(x.shape)


def set_views(module: nnx.Module, views: int) -> None:
  """Sets the number of views (batch groups with their own statistics) of every ViewBatchNorm in module."""
  for _, m in nnx.iter_modules(module):
    if isinstance(m, ViewBatchNorm):
      m.views = views
