"""The non-contrastive losses. The caller places the stop-gradient (it is an ablation switch)."""
from __future__ import annotations

import jax.numpy as jnp


def _normalize(x, eps=1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine(p, z):
  return jnp.sum(_normalize(p) * _normalize(z), axis=-1)


def regression_loss(p, z):
  """BYOL's normalised regression ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), per example."""
  return 2.0 - 2.0 * cosine(p, z)


def symmetric_loss(p1, p2, z1, z2, method: str, symmetric: bool = True):
  """Per-example loss of predictions p_v against targets z_v of the other view.

  BYOL (and the DirectPred reference) SUMS the two directions: l(p1, z2) + l(p2, z1), in [0, 8].
  SimSiam AVERAGES its negative cosines: -(cos(p1, z2) + cos(p2, z1)) / 2, in [-1, 1].
  Both follow their papers; the sum doubles BYOL's effective learning rate relative to one direction.
  `symmetric=False` keeps only view 1 -> view 2 (ImageNet 60-epoch setting of the paper).
  """
  if method == 'byol':
    loss = regression_loss(p1, z2)
    return loss + regression_loss(p2, z1) if symmetric else loss
  if symmetric:
    return -0.5 * (cosine(p1, z2) + cosine(p2, z1))
  return -cosine(p1, z2)
