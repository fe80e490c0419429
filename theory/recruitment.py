"""The theory's recruitment order: the linear network (theory/linear_net.py) trained under each predictor rule of
configs/study/directpred_why.py, its F measured with the same functions as a real run (byol_jax/recruitment.py).

  python -m theory.recruitment [--steps=30000] [--seeds=2]

The linear network has no normalised loss and no BatchNorm, so only the order in which the rules recruit F's
modes is a prediction for the real network, not the steps. Its data stand in for what the real F starts from:
one dominant input direction (the uncentred mean of a real network's projector output: s_1 / s_2 ~ 20-150 at the
start) above a 1/k tail, augmentation variance 0.2, weight decay 0.004 and EMA rate 0.1 per unit lr (eta and
beta, the paper's units), lr 0.01. In this model a mode grows while p_j (tau_j - (1 + sigma^2) p_j) > eta
(theory/ode.py `growth`): a predictor eigenvalue larger than tau_j / (1 + sigma^2) shrinks its mode, so a rule
that lifts weak modes towards p = 1 (a flatter power, a projection) holds them back instead of recruiting them.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import recruitment
from theory import linear_net

# study row -> the linear network's predictor rule (byol_jax.spectral.directpred_eigenvalues' knobs)
RULES = {
    'linear_sym': dict(predictor='symmetric'),
    'directpred': dict(predictor='directpred', directpred_eps=0.1),
    'directpred_c4': dict(predictor='directpred', directpred_eps=0.1, directpred_power=4.0),
    'directpred_eps05': dict(predictor='directpred', directpred_eps=0.5),
    'directpred_proj': dict(predictor='directpred', directpred_eps=0.1, directpred_projection=0.01),
    'directcopy_eps025': dict(predictor='directpred', directpred_eps=0.25, directpred_power=1.0),
    'directpred_isoloss': dict(predictor='directpred', directpred_eps=0.1, isoloss=True),
    'linear_sym_isoloss': dict(predictor='symmetric', isoloss=True),
}
DIM = 16
DOMINANT = 30.0   # the first input direction's variance; the others 1/k, k = 1..DIM-1
SIGMA2 = 0.2
ETA = 0.004
BETA = 0.1
LR = 0.01
RECORD_EVERY = 100


def predict(rules=None, steps: int = 30000, seeds: int = 2, modes=recruitment.MODES) -> dict:
  """{rule: {'steps': {k: [recruitment step per seed (None: never)]}, 'modes_above_final': [per seed]}}."""
  rules = rules or RULES
  x = jnp.diag(jnp.asarray(np.concatenate([[DOMINANT], 1.0 / np.arange(1, DIM)]), jnp.float32))
  x_prime = SIGMA2 * jnp.eye(DIM, dtype=jnp.float32)
  out = {}
  for name, rule in rules.items():
    per_mode = {k: [] for k in modes}
    final = []
    for seed in range(seeds):
      net0 = linear_net.random_init(jax.random.PRNGKey(seed), DIM, DIM, scale_w=0.1, scale_p=0.3)
      times, metrics, _ = linear_net.train(net0, jax.random.PRNGKey(seed), num_steps=steps, lr=LR, eta=ETA,
                                           beta=BETA, x=x, x_prime=x_prime, record_every=RECORD_EVERY, **rule)
      s = np.asarray(metrics['f_eigenvalues'], np.float64)
      for k, step in recruitment.recruitment_steps(np.arange(len(times)) * RECORD_EVERY, s, modes).items():
        per_mode[k].append(step)
      final.append(int(recruitment.modes_above(s)[-1]))
    out[name] = {'steps': per_mode, 'modes_above_final': final}
  return out


def order(prediction: dict, k: int = 2) -> list[str]:
  """Rules by the median step at which mode k is recruited (never: last)."""
  def key(name):
    got = [v if v is not None else np.inf for v in prediction[name]['steps'][k]]
    return float(np.median(got))
  return sorted(prediction, key=key)


def markdown(prediction: dict) -> str:
  ks = list(next(iter(prediction.values()))['steps'])
  lines = ['| rule | ' + ' | '.join(f'k={k}' for k in ks) + ' | modes above 1e-2 s_1, end |',
           '|---|' + '---|' * len(ks) + '---|']
  for name, p in prediction.items():
    cells = [', '.join('never' if v is None else str(v) for v in p['steps'][k]) for k in ks]
    lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {", ".join(map(str, p["modes_above_final"]))} |')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=30000)
  parser.add_argument('--seeds', type=int, default=2)
  args = parser.parse_args(argv)
  prediction = predict(steps=args.steps, seeds=args.seeds)
  print(markdown(prediction), end='')
  print('order of recruiting the 2nd mode:', ' < '.join(order(prediction)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
