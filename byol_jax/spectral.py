"""DirectPred / DirectCopy math: the correlation estimate F and the eigenvalue transforms.

Shared by byol_jax (real training) and theory/ (linear-network simulation), so both set W_p the same
way. Follows the reference code (luckmatters `ssl/real-dataset`, commit cb23d10, `predictor_reg=corr`,
`balance_type=boost_scale`), see paper.md section 1.2. All functions are pure and jit-able.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# The reference clamps predictor eigenvalues from below at this value.
MIN_EIGENVALUE = 1e-4


def batch_correlation(f: jax.Array, axis_name: str | None = None, centre: bool = False) -> jax.Array:
  """Uncentred correlation E_B[f f^T] of predictor inputs f [B, d], averaged over the global batch.

  With `axis_name`, the per-device estimates are averaged with `pmean` (equal shard sizes make that
  the global-batch mean). `centre=True` gives the covariance instead (the paper reports it is worse).
  """
  f = f.astype(jnp.float32)
  corr = f.T @ f / f.shape[0]
  mean = jnp.mean(f, axis=0)
  if axis_name is not None:
    corr, mean = jax.lax.pmean((corr, mean), axis_name)
  if centre:
    corr = corr - jnp.outer(mean, mean)
  return corr


def update_correlation(corr: jax.Array, batch_corr: jax.Array, count: jax.Array,
                       rho: float | None) -> jax.Array:
  """F <- rho F + (1 - rho) M_B; the first update (count == 0) sets F = M_B (no bias correction).

  `rho=None` is the reference's cumulative mean over all steps so far.
  """
  if rho is None:
    new = corr + (batch_corr - corr) / (count + 1.0)
  else:
    new = rho * corr + (1.0 - rho) * batch_corr
  return jnp.where(count == 0, batch_corr, new)


def directpred_eigenvalues(s: jax.Array, eps: float, power: float = 2.0,
                           eps_inside: bool = False) -> jax.Array:
  """Predictor eigenvalues p_j from eigenvalues s_j of F (the reference's `boost_scale`).

  s~_j = max(s_j, 0) / max_k s_k;  eps outside: p_j = max(s~_j^(1/c) + eps, 1e-4);
  eps inside: p_j = max(s~_j + eps, 1e-4)^(1/c) (eps may then be negative: the c_j ablation).
  `power` is c: 2 is DirectPred's square root, 1 is DirectCopy-like (p linear in s).
  """
  s = jnp.maximum(s, 0.0)
  s_norm = s / jnp.maximum(jnp.max(s), jnp.finfo(s.dtype).tiny)
  if eps_inside:
    return jnp.maximum(s_norm + eps, MIN_EIGENVALUE) ** (1.0 / power)
  return jnp.maximum(s_norm ** (1.0 / power) + eps, MIN_EIGENVALUE)


def directpred_predictor(corr: jax.Array, eps: float, power: float = 2.0,
                         eps_inside: bool = False) -> jax.Array:
  """W_p = U diag(p) U^T from the eigendecomposition F = U diag(s) U^T. Symmetric, so x @ W == W x."""
  corr = 0.5 * (corr + corr.T)
  s, u = jnp.linalg.eigh(corr)
  p = directpred_eigenvalues(s, eps, power, eps_inside)
  return (u * p) @ u.T


def directcopy_predictor(corr: jax.Array, eps: float) -> jax.Array:
  """DirectCopy: W_p = F / lambda_max(F) + eps I.

  Normalised by the spectral norm, like DirectPred with c = 1 (the reference's working equivalent),
  because the loss is scale-free in W_p only up to the eps I term: without normalisation eps would
  mean different things as F's scale drifts during training.
  """
  corr = 0.5 * (corr + corr.T)
  top = jnp.linalg.eigvalsh(corr)[-1]
  return corr / jnp.maximum(top, jnp.finfo(corr.dtype).tiny) + eps * jnp.eye(corr.shape[0], dtype=corr.dtype)


def symmetrize(w: jax.Array) -> jax.Array:
  return 0.5 * (w + w.T)


def spectral_stats(corr: jax.Array, w_p: jax.Array) -> dict[str, jax.Array]:
  """What the paper's Fig. 2 plots, measured in F's eigenbasis (eigenvalues in descending order).

  - `corr_eigenvalues`: s_j, eigenvalues of F.
  - `predictor_eigenvalues`: u_j^T W_p u_j, W_p's eigenvalues once aligned with F.
  - `alignment`: cos(W_p u_j, u_j); 1 for every j once the eigenspaces align.
  - `commutator_norm`: ||F W_p - W_p F||_F / (||F||_F ||W_p||_F).
  - `asymmetry`: ||W_p - W_p^T||_F / ||W_p||_F.
  """
  corr = 0.5 * (corr + corr.T)
  s, u = jnp.linalg.eigh(corr)
  s, u = s[::-1], u[:, ::-1]
  wu = w_p @ u
  diag = jnp.sum(u * wu, axis=0)
  cos = diag / jnp.maximum(jnp.linalg.norm(wu, axis=0), 1e-12)
  norm_w = jnp.maximum(jnp.linalg.norm(w_p), 1e-12)
  comm = corr @ w_p - w_p @ corr
  return {
      'corr_eigenvalues': s,
      'predictor_eigenvalues': diag,
      'alignment': cos,
      'commutator_norm': jnp.linalg.norm(comm) / (jnp.maximum(jnp.linalg.norm(corr), 1e-12) * norm_w),
      'asymmetry': jnp.linalg.norm(w_p - w_p.T) / norm_w,
  }
