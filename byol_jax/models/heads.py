"""Projector, predictors and the online / target networks."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from byol_jax.choices import PREDICTOR_KINDS
from byol_jax.models.norm import ViewBatchNorm
from byol_jax.models.resnet import ResNet

# PyTorch's nn.Linear default (uniform +-1/sqrt(fan_in)), as the reference code uses.
torch_linear_init = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _torch_bias_init(fan_in):
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def linear(cin, cout, *, use_bias=True, dtype=jnp.float32, rngs):
  return nnx.Linear(cin, cout, use_bias=use_bias, kernel_init=torch_linear_init,
                    bias_init=_torch_bias_init(cin), dtype=dtype, rngs=rngs)


class MLP(nnx.Module):
  """Linear -> BatchNorm -> ReLU -> Linear (BYOL's projector and 2-layer predictor).

  `last_bias`: whether the output Linear has a bias: the paper's reference code's nn.Linear does, BYOL's
  Linear(with_bias=False) does not (under LARS an unadapted, undecayed output bias moves fast at BYOL's lr).
  """

  def __init__(self, cin, hidden, cout, *, bn_affine=True, last_bias=True, axis_name='data',
               dtype=jnp.float32, rngs):
    self.fc1 = linear(cin, hidden, dtype=dtype, rngs=rngs)
    self.bn = ViewBatchNorm(hidden, momentum=0.9, epsilon=1e-5, use_bias=bn_affine, use_scale=bn_affine,
                            axis_name=axis_name, dtype=dtype, rngs=rngs)
    self.fc2 = linear(hidden, cout, use_bias=last_bias, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(nnx.relu(self.bn(self.fc1(x)))).astype(jnp.float32)


class Identity(nnx.Module):
  def __call__(self, x):
    return x


class Tower(nnx.Module):
  """Backbone + projector: the part that online and target networks share."""

  def __init__(self, config, *, in_channels: int, dtype: Any, rngs: nnx.Rngs):
    m = config.model
    self.encoder = ResNet(m.backbone, in_channels=in_channels, width=m.width, stem=m.stem,
                          max_pool_impl=m.max_pool_impl, conv_impl=m.conv_impl, axis_name='data', dtype=dtype,
                          zero_init_last_bn_scale=m.zero_init_last_bn_scale, padding=m.padding, rngs=rngs)
    self.projector = MLP(self.encoder.out_dim, m.projector_hidden, m.projector_dim,
                         bn_affine=m.projector_bn_affine, last_bias=m.projector_output_bias, axis_name='data',
                         dtype=dtype, rngs=rngs)

  def __call__(self, x):
    features = self.encoder(x)
    return features, self.projector(features)


def make_predictor(config, *, dtype, rngs):
  p, d = config.predictor, config.model.projector_dim
  if p.kind == 'mlp':
    return MLP(d, p.hidden, d, bn_affine=p.bn_affine, last_bias=p.output_bias, axis_name='data', dtype=dtype,
               rngs=rngs)
  if p.kind in ('linear', 'linear_symmetric'):
    return linear(d, d, use_bias=p.use_bias, dtype=dtype, rngs=rngs)
  if p.kind in ('directpred', 'directcopy'):
    return linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
  if p.kind == 'none':
    return Identity()
  raise ValueError(f'unknown predictor.kind {p.kind!r}; choose one of {PREDICTOR_KINDS}')


class Online(nnx.Module):
  """The online network: tower, predictor and the online linear probe (trained on stop-grad features)."""

  def __init__(self, config, *, in_channels: int, num_classes: int, dtype: Any, rngs: nnx.Rngs):
    self.tower = Tower(config, in_channels=in_channels, dtype=dtype, rngs=rngs)
    self.predictor = make_predictor(config, dtype=dtype, rngs=rngs)
    self.probe = linear(self.tower.encoder.out_dim, num_classes, rngs=rngs)
