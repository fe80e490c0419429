"""The built-in linear probes against scikit-learn's LogisticRegression on the same exported features.

  python -m byol_jax.embed --workdir=<run> --split=train --out=train.npz
  python -m byol_jax.embed --workdir=<run> --split=test --out=test.npz
  python scripts/checks/linear_probe.py train.npz test.npz [--c=0.1]
  <venv with scikit-learn>/bin/python scripts/checks/linear_probe.py train.npz test.npz --sklearn_c=1,0.1 --skip_builtin

Prints one JSON line per probe: the built-in L-BFGS probe (eval.probe_c), the built-in Adam probe with the
Fashion-MNIST config's settings, and with --sklearn_c scikit-learn's LogisticRegression(C) (lbfgs, tol 1e-6)
on the same standardised features (StandardScaler): with the same C, the same objective. scikit-learn is not a
dependency of byol_jax: run that part in a throwaway venv (numpy + scikit-learn), with --skip_builtin. Wall and CPU seconds of the second call (without compilation).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _timed(fn):
  wall, cpu = time.time(), time.process_time()
  out = fn()
  return out, round(time.time() - wall, 1), round(time.process_time() - cpu, 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('train')
  parser.add_argument('test')
  parser.add_argument('--c', type=float, default=0.1, help="sklearn's C of the L-BFGS probe")
  parser.add_argument('--sklearn_c', default='', help="comma-separated C values for scikit-learn")
  parser.add_argument('--skip_builtin', action='store_true', help='only scikit-learn (a venv without jax)')
  args = parser.parse_args()
  tr, te = np.load(args.train), np.load(args.test)
  x, y, xt, yt = tr['features'], tr['labels'], te['features'], te['labels']
  classes = int(max(y.max(), yt.max())) + 1
  probes = {} if args.skip_builtin else {'lbfgs': dict(solver='lbfgs', c=args.c),
            'adam': dict(solver='adam', epochs=30, batch_size=256, learning_rate=3e-3, weight_decay=1e-4)}
  for name, kw in probes.items():
    from byol_jax import evaluate as ev  # pylint: disable=import-outside-toplevel
    ev.linear_probe(x, y, xt, yt, classes, **kw)  # compile
    r, wall, cpu = _timed(lambda: ev.linear_probe(x, y, xt, yt, classes, **kw))  # pylint: disable=cell-var-from-loop
    r.pop('test_top1_per_epoch')
    print(json.dumps({'probe': name, **kw, **r, 'seconds': wall, 'cpu_seconds': cpu}), flush=True)
  if args.sklearn_c:
    from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
    from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
    scaler = StandardScaler().fit(x)
    xs, xts = scaler.transform(x), scaler.transform(xt)
    for c in (float(v) for v in args.sklearn_c.split(',')):
      m, wall, cpu = _timed(lambda: LogisticRegression(C=c, max_iter=5000, tol=1e-6).fit(xs, y))  # pylint: disable=cell-var-from-loop
      print(json.dumps({'probe': 'sklearn', 'C': c, 'l2': 1 / (c * len(x)), 'top1': m.score(xts, yt),
                        'train_top1': m.score(xs, y), 'iterations': int(m.n_iter_[0]), 'seconds': wall,
                        'cpu_seconds': cpu}), flush=True)


if __name__ == '__main__':
  main()
