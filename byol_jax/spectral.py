"""DirectPred / DirectCopy math: the correlation estimate F and the eigenvalue transforms.

Shared by byol_jax (real training) and theory/ (linear-network simulation), so both set W_p the same
way. Follows the reference code (luckmatters `ssl/real-dataset`, commit cb23d10, `predictor_reg=corr`,
`balance_type=boost_scale`). All functions are pure and jit-able.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from byol_jax.choices import SOLVERS

# The reference clamps predictor eigenvalues from below at this value.
MIN_EIGENVALUE = 1e-4


def batch_moments(f: jax.Array, axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """(E_B[f f^T], E_B[f]) of predictor inputs f [B, d] over the global batch (pmean over `axis_name`: equal
  shard sizes make that the global-batch mean)."""
  f = f.astype(jnp.float32)
  corr, mean = f.T @ f / f.shape[0], jnp.mean(f, axis=0)
  if axis_name is not None:
    corr, mean = jax.lax.pmean((corr, mean), axis_name)
  return corr, mean


def batch_correlation(f: jax.Array, axis_name: str | None = None, centre: bool = False) -> jax.Array:
  """Uncentred correlation E_B[f f^T] of predictor inputs f [B, d], averaged over the global batch.

  `centre=True` gives this batch's covariance instead (predictor.centre_with='batch_mean').
  """
  corr, mean = batch_moments(f, axis_name)
  return corr - jnp.outer(mean, mean) if centre else corr


def predictor_input_matrix(corr: jax.Array, corr_mean: jax.Array, centre_ema_mean: bool) -> jax.Array:
  """The F that sets W_p: the EMA of the correlation, minus m m^T of the EMA m of the batch means for the
  reference's zero-mean option (predictor.centre=True, centre_with='ema_mean')."""
  return corr - jnp.outer(corr_mean, corr_mean) if centre_ema_mean else corr


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
                           eps_inside: bool = False, projection: float = 0.0) -> jax.Array:
  """Predictor eigenvalues p_j from eigenvalues s_j of F (the reference's `boost_scale`).

  s~_j = max(s_j, 0) / max_k s_k;  eps outside: p_j = max(s~_j^(1/c) + eps, 1e-4);
  eps inside: p_j = max(s~_j + eps, 1e-4)^(1/c) (eps may then be negative: the c_j ablation).
  `power` is c: 2 is DirectPred's square root, 1 is DirectCopy-like (p linear in s).
  `projection` > 0 replaces the power rule by a projection onto F's live modes: p_j = 1 where
  s~_j >= projection, eps below (the flat spectrum an SGD-trained linear predictor settles near here).
  """
  s = jnp.maximum(s, 0.0)
  s_norm = s / jnp.maximum(jnp.max(s), jnp.finfo(s.dtype).tiny)
  if projection > 0:
    return jnp.where(s_norm >= projection, 1.0, jnp.maximum(eps, MIN_EIGENVALUE)).astype(s.dtype)
  if eps_inside:
    return jnp.maximum(s_norm + eps, MIN_EIGENVALUE) ** (1.0 / power)
  return jnp.maximum(s_norm ** (1.0 / power) + eps, MIN_EIGENVALUE)


def directpred_predictor(corr: jax.Array, eps: float, power: float = 2.0,
                         eps_inside: bool = False, projection: float = 0.0) -> jax.Array:
  """W_p = U diag(p) U^T from the eigendecomposition F = U diag(s) U^T. Symmetric, so x @ W == W x."""
  corr = 0.5 * (corr + corr.T)
  s, u = jnp.linalg.eigh(corr)
  p = directpred_eigenvalues(s, eps, power, eps_inside, projection)
  return (u * p) @ u.T


# ---------------------------------------------------------------------------------------------
# The reference's eigensolver. luckmatters decomposes F with `torch.eig`: LAPACK's general
# (non-symmetric) float32 solver sgeev, keeping the real parts of the eigenvalues and the
# eigenvectors in LAPACK's real layout (a complex pair j, j+1 stores Re v in column j and Im v in
# column j+1). On F's live modes it agrees with eigh to float32 round-off; on the near-zero modes
# of a dimensionally collapsed F round-off makes F slightly non-normal to the solver, which returns
# complex pairs and non-orthogonal vectors, so U diag(p) U^T there is not eps times a projector.
# byol_jax runs sgeev on the host (scipy's LAPACK binding) through a callback: exact on every
# backend, but on a GPU or TPU each step then waits for the host.
# ---------------------------------------------------------------------------------------------


def _sgeev_real_layout(a):
  import numpy as np
  from scipy.linalg import lapack
  wr, _, _, vr, info = lapack.sgeev(np.asarray(a, np.float32), compute_vl=0, compute_vr=1)
  if info != 0:  # never seen on a finite matrix; non-finite F makes the run diverge anyway
    wr = np.full(a.shape[0], np.nan, np.float32)
  return wr.astype(np.float32), vr.astype(np.float32)


def general_eig(corr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(real parts of F's eigenvalues, eigenvectors in LAPACK's real layout), unsorted, from float32
  sgeev as torch.eig returned them. F is passed as it is (not symmetrised), as the reference does."""
  d = corr.shape[0]
  shapes = (jax.ShapeDtypeStruct((d,), jnp.float32), jax.ShapeDtypeStruct((d, d), jnp.float32))
  return jax.pure_callback(_sgeev_real_layout, shapes, corr.astype(jnp.float32), vmap_method='sequential')


def directpred_predictor_general(corr: jax.Array, eps: float, power: float = 2.0, eps_inside: bool = False,
                                 projection: float = 0.0) -> jax.Array:
  """`directpred_predictor` with the reference's general eigensolver: W_p = Q diag(p(Re s)) Q^T."""
  s, q = general_eig(corr)
  p = directpred_eigenvalues(s, eps, power, eps_inside, projection)
  return (q * p) @ q.T


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


# ---------------------------------------------------------------------------------------------
# Eigendecomposition-free W_p (DirectPred c = 2 and c = 1, eps outside the root).
#
# eigh is a long sequential kernel on GPU (~2 ms at d = 256 on an H100); a fixed chain of d x d
# matmuls is not. With eps outside the root, W_p = sqrtm(F / lambda_max) + eps I for c = 2 and
# W_p = F / lambda_max + eps I for c = 1. lambda_max comes from repeated squaring plus a Rayleigh
# quotient, the root from a coupled Newton-Schulz iteration. All products use Precision.HIGHEST:
# the default f32 matmul on GPU may be TF32 (10-bit mantissa), which would wreck both.
#
# Differences from the eigh path (documented, measured in tests/test_spectral_fast.py):
# - The 1e-4 clamp on p_j is not applied. It cannot bind for eps >= 1e-4. For eps < 1e-4 the
#   modes with sqrt(s_j / s_max) < 1e-4 - eps get ~sqrt(s_j / s_max) + eps instead of 1e-4
#   (an absolute difference < 1e-4 per such mode).
# - Negative round-off eigenvalues of F: eigh clamps them to 0; Newton-Schulz maps them to
#   something of order sqrt(|s_j| / s_max) (~1e-3 for f32 round-off) or leaves them near 0.
# - Modes with s_j / s_max below the design floor (NS_MIN_EIGENVALUE) are only partly converged:
#   they come out between 0 and sqrt(s_j / s_max). Their contribution to ||W_p||_F is tiny.
# ---------------------------------------------------------------------------------------------

# Newton-Schulz products in float32 at HIGHEST precision: on an H100 at d = 256 a W_p then costs ~1/10 of eigh
# (scripts/checks/newton_schulz.py measures it); XLA's BF16_BF16_F32_X6 tensor-core products are slower, and
# BF16_BF16_F32_X3 too inaccurate (1e-3 error, a failed root on a rank-deficient F).
_HI = jax.lax.Precision.HIGHEST

# Squarings in `top_eigenvalue`. After k squarings the estimate is the Rayleigh quotient
# sum_j s_j^(m+1) / sum_j s_j^m with m = 2^(k+1); its relative error is at most
# max_r r^m (1 - r) <= 1 / (e m) per eigenvalue r s_max below the top (worst when r = 1 - 1/m;
# a nearly equal top pair, r -> 1, is harmless). k = 11: m = 4096, <= 9e-5 for one such mode.
# 12 matmuls.
TOP_EIGENVALUE_ITERS = 11

# Newton-Schulz design: spectrum of F / lambda_max assumed in [NS_MIN_EIGENVALUE, NS_MAX_EIGENVALUE].
# NS_MAX_EIGENVALUE > 1 tolerates an underestimated lambda_max (up to 4%); NS_MIN_EIGENVALUE = 1e-6
# (sqrt: 1e-3) covers the spectra of F seen in training (1e-6..1 relative).
# NS_ITERS = 10: with the scaled (minimax) schedule of `newton_schulz_schedule`, 10 iterations bring every
# mode in that range to relative error <= 3e-5 (interval bound); plain Newton-Schulz needs ~20 for the same
# floor (t = sigma^2 only grows by 9/4 per step when small). Modes below the floor grow by ~2.47x (sigma)
# per step and are partly converged (s = 1e-7: 0.68 sqrt(s), s = 1e-8: 0.25 sqrt(s); absolute error
# < 1e-4). Against float32 eigh (tests/test_spectral_fast.py, scripts/checks/newton_schulz.py: d = 128, 256;
# log-uniform 1..1e-6 and 1..1e-8, power law, rank 1/2 and 1/4 with exact zeros, top pair 1e-5 apart; eps = 0,
# 0.01, 0.1): relative Frobenius error <= 6.7e-4 at eps = 0 (rank deficient) and <= 1.5e-4 at full rank, about the
# error of float32 eigh itself against float64. Not more than 10: Z -> A^(-1/2) grows on negative
# round-off eigenvalues of F, and more iterations make the root diverge on smaller ones (10: fine down
# to -1e-7 lambda_max, 1e-2 error at -1e-6, divergence below ~-2e-6; 12 diverged on some rank-deficient
# F). The 'newton_schulz' solver checks the root (NS_RESIDUAL_TOL) and then keeps the current W_p
# (training) or falls back to eigh. Cost: 3 matmuls per iteration, 2 for the last.
NS_MIN_EIGENVALUE = 1e-6
NS_MAX_EIGENVALUE = 1.04
NS_ITERS = 10


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HI)


def top_eigenvalue(corr: jax.Array, iters: int = TOP_EIGENVALUE_ITERS) -> jax.Array:
  """lambda_max of a symmetric PSD matrix: `iters` normalised squarings, then a Rayleigh quotient.

  B = A^(2^iters) / ||.||_F (each squaring renormalised, so nothing over- or underflows) is, up to
  scale, a sum of the top eigenprojectors weighted by (s_j / s_max)^(2^iters). The estimate is
  <A B, B> / <B, B> = sum_j s_j^(m+1) / sum_j s_j^m with m = 2^(iters+1): a Rayleigh quotient
  averaged over all start vectors, second order in the error of B, so a nearly degenerate top pair
  costs nothing. iters + 1 matmuls, no data-dependent control flow. Returns 0 for F = 0.
  """
  a = 0.5 * (corr + corr.T).astype(jnp.float32)
  tiny = jnp.finfo(jnp.float32).tiny
  b = a / jnp.maximum(jnp.linalg.norm(a), tiny)
  for _ in range(iters):
    b = _mm(b, b)
    b = b / jnp.maximum(jnp.linalg.norm(b), tiny)
  ab = _mm(a, b)
  return jnp.sum(ab * b) / jnp.maximum(jnp.sum(b * b), tiny)


def newton_schulz_schedule(iters: int, min_eigenvalue: float | None = NS_MIN_EIGENVALUE,
                           max_eigenvalue: float = NS_MAX_EIGENVALUE,
                           cushion: float = 0.1) -> tuple[tuple[float, float], ...]:
  """Per-iteration coefficients (a_k, b_k) of sigma <- sigma (a_k + b_k sigma^2), sigma = sqrt(t).

  `min_eigenvalue=None`: plain Newton-Schulz, (1.5, -0.5) every step. Otherwise the greedy
  minimax (scaled Newton-Schulz, Chen & Chow 2014 / "Polar Express" 2025) odd cubic for the
  current interval [l, u] of sigma, starting from [sqrt(min), sqrt(max)]: sigma' = c g(alpha sigma
  / u), g(y) = (3y - y^3) / 2, alpha^2 = 3 / (1 + r + r^2), r = l / u, c = 2 / (1 + g(alpha r)),
  which maps [l, u] onto [2 - c, c] (equioscillation). The lower end is cushioned to >= cushion * u
  so no mode is ever mapped close to 0 (keeps round-off from being amplified). Once the interval
  is tight the coefficients become (1.5, -0.5). Pure Python, evaluated at trace time.
  """
  if min_eigenvalue is None:
    return ((1.5, -0.5),) * iters
  lo, hi = math.sqrt(min_eigenvalue), math.sqrt(max_eigenvalue)
  out = []
  for _ in range(iters):
    r = max(lo, cushion * hi) / hi
    alpha = math.sqrt(3.0 / (1.0 + r + r * r))
    y = alpha * r
    c = 2.0 / (1.0 + 1.5 * y - 0.5 * y ** 3)
    s = alpha / hi
    a_k, b_k = 1.5 * c * s, -0.5 * c * s ** 3
    out.append((a_k, b_k))
    f = lambda x: x * (a_k + b_k * x * x)  # pylint: disable=cell-var-from-loop
    lo, hi = min(f(lo), f(hi)), c
  return tuple(out)


def sqrtm_newton_schulz(a: jax.Array, iters: int = NS_ITERS,
                        min_eigenvalue: float | None = NS_MIN_EIGENVALUE) -> jax.Array:
  """Principal square root of a symmetric PSD `a` whose spectrum lies in (0, 1] (up to ~4% above).

  Coupled Newton-Schulz (Higham, Functions of Matrices, eq. 6.35): Y0 = A, Z0 = I,
  T = a_k I + b_k Z Y, Y <- Y T, Z <- T Z; Y -> A^(1/2), Z -> A^(-1/2). Plain Newton-Schulz is
  (a_k, b_k) = (1.5, -0.5), i.e. T = (3I - ZY)/2 (pass `min_eigenvalue=None`); by default the
  scaled schedule of `newton_schulz_schedule`, which converges in about half the iterations for
  small eigenvalues. Fixed iteration count (3 matmuls each, 2 for the last), float32, all
  products at Precision.HIGHEST. Output symmetrised.
  """
  a = 0.5 * (a + a.T).astype(jnp.float32)
  eye = jnp.eye(a.shape[0], dtype=jnp.float32)
  y, z = a, eye
  sched = newton_schulz_schedule(iters, min_eigenvalue)
  for k, (a_k, b_k) in enumerate(sched):
    t = a_k * eye + b_k * (y if k == 0 else _mm(z, y))  # Z0 = I: Z0 Y0 = A
    if k == 0:
      y, z = _mm(y, t), t
    elif k == len(sched) - 1:
      y = _mm(y, t)
    else:
      y, z = _mm(y, t), _mm(t, z)
  return 0.5 * (y + y.T)


def newton_schulz_matmuls(iters: int = NS_ITERS, top_iters: int = TOP_EIGENVALUE_ITERS,
                          power: float = 2.0) -> int:
  """d x d matmuls in one `directpred_predictor_fast` call (each 2 d^3 FLOPs)."""
  root = 0 if power == 1 else (3 * iters - 3 if iters > 1 else iters)
  return top_iters + 1 + root


def _fast_predictor(corr, eps, power, eps_inside, iters, top_iters, check=True):
  """(W_p, ok): ok is False when the root failed (non-finite, or ||S^2 - A||_F > NS_RESIDUAL_TOL ||A||_F)."""
  if eps_inside:
    raise ValueError('directpred_predictor_fast: eps_inside=True needs eigh')
  if power not in (1, 2):
    raise ValueError(f'directpred_predictor_fast: power must be 1 or 2, got {power}')
  a = 0.5 * (corr + corr.T).astype(jnp.float32)
  top = top_eigenvalue(a, top_iters)
  a = a / jnp.maximum(top, jnp.finfo(jnp.float32).tiny)
  if power == 1:
    w, ok = a, jnp.all(jnp.isfinite(a))
  else:
    w = sqrtm_newton_schulz(a, iters)
    ok = jnp.array(True)
    if check:
      res = jnp.linalg.norm(_mm(w, w) - a)
      ok = jnp.isfinite(res) & (res <= NS_RESIDUAL_TOL * jnp.linalg.norm(a))
  return w + eps * jnp.eye(a.shape[0], dtype=jnp.float32), ok


def directpred_predictor_fast(corr: jax.Array, eps: float, power: float = 2.0,
                              eps_inside: bool = False, iters: int = NS_ITERS,
                              top_iters: int = TOP_EIGENVALUE_ITERS) -> jax.Array:
  """`directpred_predictor` without eigh, for power in {1, 2} and eps outside the root.

  power 2: W_p = sqrtm(F / lambda_max) + eps I;  power 1: W_p = F / lambda_max + eps I.
  Raises ValueError otherwise (`predictor_weights` then uses eigh). See the notes above
  TOP_EIGENVALUE_ITERS for where it differs from the eigh path (1e-4 clamp, round-off modes).
  No safety net: use `predictor_weights(..., solver='newton_schulz')` in training.
  """
  return _fast_predictor(corr, eps, power, eps_inside, iters, top_iters, check=False)[0]


# Fallback threshold of the 'newton_schulz' solver: relative residual ||S^2 - A||_F / ||A||_F of the
# root S of A = F / lambda_max. Healthy roots measure 1e-5..1.1e-4 (float32 round-off); a root that
# diverged on a negative eigenvalue of F below about -2e-6 lambda_max measures >= 1e2 (or inf).
NS_RESIDUAL_TOL = 1e-3


def predictor_weights(corr: jax.Array, eps: float, power: float = 2.0, eps_inside: bool = False,
                      solver: str = 'eigh') -> jax.Array:
  """W_p from F. solver 'eigh': `directpred_predictor` (exact reference). solver 'newton_schulz':
  the eigh-free path (`directpred_predictor_fast`) for power in {1, 2} with eps outside the root;
  other options use eigh. For power 2 it also checks the root (one more matmul) and, if that check
  fails (non-finite, or residual above NS_RESIDUAL_TOL: F with a clearly negative eigenvalue),
  computes the eigh result instead via lax.cond (only one branch runs). solver 'general': the
  reference's float32 general eigensolver on the host (`directpred_predictor_general`).
  `power`, `eps_inside` and `solver` must be static Python values; `eps` may be traced.
  """
  return predictor_weights_and_ok(corr, eps, power, eps_inside, solver)[0]


def predictor_weights_and_ok(corr: jax.Array, eps: float, power: float = 2.0, eps_inside: bool = False,
                             solver: str = 'eigh', fallback: jax.Array | None = None, projection: float = 0.0
                             ) -> tuple[jax.Array, jax.Array]:
  """`predictor_weights` and whether the Newton-Schulz root passed its check (always True for eigh).
  With `fallback` (the training step passes the current W_p) a failed root returns it (jnp.where, no
  control flow) instead of the eigh result under lax.cond: on a GPU a conditional makes the host wait
  for its predicate every step."""
  if solver not in SOLVERS:
    raise ValueError(f'unknown predictor solver {solver!r}; expected one of {SOLVERS}')
  if solver == 'general':
    return directpred_predictor_general(corr, eps, power, eps_inside, projection), jnp.array(True)
  if solver == 'eigh' or eps_inside or power not in (1, 2) or projection > 0:
    return directpred_predictor(corr, eps, power, eps_inside, projection), jnp.array(True)
  w, ok = _fast_predictor(corr, eps, power, eps_inside, NS_ITERS, TOP_EIGENVALUE_ITERS)
  if fallback is not None:
    return jnp.where(ok, w, fallback.astype(w.dtype)), ok
  if power == 1:
    return w, ok
  return jax.lax.cond(ok, lambda: w, lambda: directpred_predictor(corr, eps, power, eps_inside)), ok
