"""DirectPred's W_p on one device: accuracy against float64 eigh and time per call, eigh vs Newton-Schulz.

  python scripts/checks/newton_schulz.py
Prints one JSON line per (solver, spectrum).
"""
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import spectral


def corr(d, kind, rng):
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  s = {'loguniform_1e-6': np.logspace(0, -6, d), 'loguniform_1e-8': np.logspace(0, -8, d),
       'rank_half': np.concatenate([np.logspace(0, -3, d // 2), np.zeros(d - d // 2)]),
       'powerlaw': 1.0 / np.arange(1, d + 1) ** 2}[kind]
  return (q * s) @ q.T


def main():
  rng = np.random.default_rng(0)
  d, eps = 256, 0.1
  for kind in ('loguniform_1e-6', 'loguniform_1e-8', 'rank_half', 'powerlaw'):
    f64 = corr(d, kind, rng)
    s, v = np.linalg.eigh(f64)
    p = np.sqrt(np.maximum(s, 0) / s.max()) + eps
    ref = (v * p) @ v.T
    f = jnp.asarray(f64, jnp.float32)
    for solver in ('eigh', 'newton_schulz'):
      fn = jax.jit(lambda c: spectral.predictor_weights_and_ok(c, eps, solver=solver, fallback=jnp.zeros_like(c)))
      w, ok = jax.block_until_ready(fn(f))
      times = []
      for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(20):
          w, ok = fn(f)
        jax.block_until_ready(w)
        times.append((time.perf_counter() - t0) / 20)
      print(json.dumps({'solver': solver, 'spectrum': kind, 'd': d, 'ok': bool(ok), 'device': jax.devices()[0].device_kind,
                        'rel_err_vs_float64': float(np.linalg.norm(np.asarray(w, np.float64) - ref) / np.linalg.norm(ref)),
                        'ms_per_call': round(1e3 * statistics.median(times), 4)}), flush=True)


if __name__ == '__main__':
  main()
