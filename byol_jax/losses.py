"""The non-contrastive losses. The caller places the stop-gradient (it is an ablation switch)."""
from __future__ import annotations

import jax
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


def ssl_loss(p1, p2, t1, t2, z, method: str, symmetric: bool = True, isoloss: bool = False):
  """The batch mean of `symmetric_loss`; with `isoloss`, plus `isotropic_term` (z = [z1; z2], the predictor's
  input, from which the caller computed p = [p1; p2] under stop-gradient)."""
  def mean_loss(p1, p2):
    return jnp.mean(symmetric_loss(p1, p2, t1, t2, method, symmetric))
  loss = mean_loss(p1, p2)
  if isoloss:
    loss = loss + isotropic_term(z, jnp.concatenate(jax.grad(mean_loss, (0, 1))(p1, p2)))
  return loss


def isotropic_term(z, grad_p):
  """IsoLoss's correction (Halvagal, Laborieux & Zenke 2023, "Implicit variance regularization in
  non-contrastive SSL"): zero in value, with gradient `grad_p` with respect to z.

  With p = W_p z the loss sends dL/dz = W_p^T dL/dp to the predictor's input: in W_p's eigenbasis every mode's
  gradient is multiplied by its predictor eigenvalue p_j, which holds back the small modes (the paper's
  implicit variance regularisation). IsoLoss removes that factor. The step computes p from stop_gradient(z)
  (so the predictor still learns from the loss and z gets nothing through W_p) and adds this term, so that z
  receives dL/dp itself. `grad_p` is dL/dp at the current p (the caller's jax.grad), under stop-gradient.
  """
  return jnp.sum((z - jax.lax.stop_gradient(z)).astype(jnp.float32) * jax.lax.stop_gradient(grad_p))
