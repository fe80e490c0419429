"""Schedules as pure functions of the step: learning rate and the EMA rate tau."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate(config) -> optax.Schedule:
  o = config.optim
  peak = o.lr * (config.train.batch_size / 256 if o.scale_by_batch else 1.0)
  if o.schedule == 'constant':
    return optax.constant_schedule(peak)
  return optax.warmup_cosine_decay_schedule(0.0, peak, o.warmup_steps, config.train.steps, end_value=0.0)


def tau(step, config):
  """BYOL's tau(k) = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, or tau_base when constant.

  SimSiam has no EMA: its target is the online network, so tau is irrelevant there.
  """
  base = config.ema.tau_base
  if config.ema.schedule == 'constant':
    return jnp.asarray(base, jnp.float32)
  k = jnp.minimum(step, config.train.steps).astype(jnp.float32)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * k / config.train.steps) + 1.0) / 2.0


def ema(target, online, tau_value):
  """target <- tau target + (1 - tau) online, leaf by leaf."""
  return jax.tree.map(lambda t, o: tau_value * t + (1.0 - tau_value) * o, target, online)
