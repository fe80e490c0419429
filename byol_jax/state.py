"""The training state: one pytree of arrays, and the network definitions that interpret it."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from byol_jax import spectral
from byol_jax.models.heads import Online, Tower
from byol_jax.models.norm import set_views


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # int32 scalar: optimizer steps taken
  params: Any                  # online parameters {'tower', 'predictor', 'probe'} (pure dicts)
  batch_stats: Any             # online BatchNorm running statistics
  target_params: Any           # target tower parameters (EMA of the online tower)
  target_batch_stats: Any      # target BatchNorm statistics (its own forward passes, never EMA'd)
  opt_state: optax.OptState
  corr: jax.Array              # DirectPred's F, [d, d] (kept, unused, for other predictors)
  corr_count: jax.Array        # number of F updates so far
  corr_mean: jax.Array         # EMA of the batch means of the predictor input, [d] (predictor.centre_with='ema_mean')


@dataclasses.dataclass(frozen=True)
class Networks:
  """Static graph definitions (hashable), for nnx.merge inside pure functions.

  The *_train definitions take both views as one batch [view 1; view 2] (BatchNorm statistics per
  view); the *_eval ones use the running statistics.
  """
  online_train: Any
  online_eval: Any
  tower_train: Any
  tower_eval: Any


def _dtype(config):
  return jnp.bfloat16 if config.train.compute_dtype == 'bfloat16' else jnp.float32


def build(config, *, in_channels: int, num_classes: int, tx: optax.GradientTransformation):
  """Creates the networks and the initial state (on the host; the caller places it on devices)."""
  key = jax.random.PRNGKey(config.seed)
  k_online, k_target = jax.random.split(key)
  online = Online(config, in_channels=in_channels, num_classes=num_classes, dtype=_dtype(config),
                  rngs=nnx.Rngs(k_online))
  target = Tower(config, in_channels=in_channels, dtype=_dtype(config), rngs=nnx.Rngs(k_target))
  set_views(online, 2)
  set_views(target, 2)
  online_train, params, stats = nnx.split(online, nnx.Param, nnx.BatchStat)
  tower_train, target_params, target_stats = nnx.split(target, nnx.Param, nnx.BatchStat)
  online.eval()
  target.eval()
  networks = Networks(online_train, nnx.split(online, nnx.Param, nnx.BatchStat)[0],
                      tower_train, nnx.split(target, nnx.Param, nnx.BatchStat)[0])
  params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
  target_params, target_stats = nnx.to_pure_dict(target_params), nnx.to_pure_dict(target_stats)
  if config.ema.target_init == 'copy':
    target_params, target_stats = params['tower'], stats['tower']
  kind = config.predictor.kind
  if kind == 'linear_symmetric':
    params['predictor']['kernel'] = spectral.symmetrize(params['predictor']['kernel'])
  d = config.model.projector_dim
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
      target_params=jax.tree.map(jnp.copy, target_params), target_batch_stats=jax.tree.map(jnp.copy, target_stats),
      opt_state=tx.init(params), corr=jnp.zeros((d, d), jnp.float32), corr_count=jnp.zeros((), jnp.int32),
      corr_mean=jnp.zeros((d,), jnp.float32))
  return networks, state
