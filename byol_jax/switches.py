"""The switch language of the paper's ablations: `linear_sym,no_ema,wd4e-3` -> changes to a config.

configs/stl10.py and configs/cifar10.py take switches as their argument (`--config=configs/stl10.py:linear,no_ema`)
and a study's rows are switches applied to its base (docs/study.md). Comma-separated, applied left to
right:
  directpred | directcopy | linear | linear_sym | mlp | none    predictor.kind
  bias          linear predictor with bias
  no_ema        EMA rate 0 (target = online after each step)    tau<x>     constant EMA rate x (tau0 = no_ema)
  simsiam       SimSiam target                                  no_stop_grad  remove the target's stop-gradient
  no_wd         weight decay 0 everywhere                       wd<x>      weight decay x on trunk and predictor
  wd_predictor_only  the trunk's weight decay on the predictor only, 0 on the trunk
  rho<x> eps<x> freq<n>  DirectPred's knobs                     cj<c>      Tbl 7: p_j = sqrt(max(s_j - c, 0))
  cumulative    F = running mean over all steps                 alphap<x>  predictor lr multiplier (Fig. 6)
  centre        DirectPred on the covariance of f               seed<n>    the seed
  epochs<n>     n epochs (what an epoch is, the caller decides: `apply_ablations`, or a study's n/100 of its base)
  lr<x>         learning rate x (trunk; the predictor's is alphap times it)
  power<c>      DirectPred's c in p = s^(1/c) + eps            proj<x>    DirectPred as a projection: p = 1 where
                                                               s / s_max >= x, eps below
  general       DirectPred/DirectCopy with the reference's general (non-symmetric) eigensolver
  isoloss       IsoLoss (Halvagal et al. 2023): z gets the loss's gradient without W_p^T (linear predictors)
Imports nothing but the standard library, so loading a config stays free of JAX.
"""

PREDICTORS = {'directpred': 'directpred', 'directcopy': 'directcopy', 'linear': 'linear',
              'linear_sym': 'linear_symmetric', 'mlp': 'mlp', 'none': 'none'}


def _number(token, prefix):
  try:
    return float(token[len(prefix):])
  except ValueError:
    raise ValueError(f'config argument {token!r}: expected {prefix}<number>') from None


def apply_switches(c, arg):
  """Applies the comma-separated switches of `arg` (see the module docstring) to c, left to right.

  Returns the number of epochs asked for by an `epochs<n>` switch, or None; the caller decides what an
  epoch is (apply_ablations: n passes over the data; a study: n/100 of the study's base steps).
  Raises ValueError naming an unknown or malformed switch."""
  epochs = None
  for t in [t.strip() for t in (arg or '').split(',') if t.strip()]:
    if t in PREDICTORS:
      c.predictor.kind = PREDICTORS[t]
    elif t == 'bias':
      c.predictor.use_bias = True
    elif t == 'no_ema':
      c.ema.tau_base = 0.0
      c.ema.schedule = 'constant'  # a cosine schedule would raise tau from 0 to 1
    elif t == 'simsiam':
      c.method = 'simsiam'
    elif t == 'no_stop_grad':
      c.stop_gradient = False
    elif t == 'wd_predictor_only':
      c.predictor.weight_decay = c.optim.weight_decay
      c.optim.weight_decay = 0.0
    elif t == 'no_wd':
      c.optim.weight_decay = 0.0
      c.predictor.weight_decay = 0.0
    elif t == 'cumulative':
      c.predictor.cumulative_mean = True
    elif t == 'centre':
      c.predictor.centre = True
    elif t == 'isoloss':
      c.loss.isoloss = True
    elif t == 'general':
      c.predictor.solver = 'general'
    elif t.startswith('power'):
      c.predictor.power = _number(t, 'power')
    elif t.startswith('proj'):
      c.predictor.projection_threshold = _number(t, 'proj')
    elif t.startswith('rho'):
      c.predictor.rho = _number(t, 'rho')
    elif t.startswith('eps'):
      c.predictor.eps = _number(t, 'eps')
    elif t.startswith('freq'):
      c.predictor.freq = int(_number(t, 'freq'))
    elif t.startswith('cj'):  # p_j = sqrt(max(s_j - c_j, 0)): eps inside the root, eps = -c_j (Tbl 7)
      c.predictor.eps_inside = True
      c.predictor.eps = -_number(t, 'cj')
    elif t.startswith('alphap'):
      c.predictor.lr_mult = _number(t, 'alphap')
    elif t.startswith('wd'):
      c.optim.weight_decay = _number(t, 'wd')
      c.predictor.weight_decay = None  # the predictor follows the trunk
    elif t.startswith('tau'):
      c.ema.tau_base = _number(t, 'tau')
      c.ema.schedule = 'constant'
    elif t.startswith('lr'):
      c.optim.lr = _number(t, 'lr')
    elif t.startswith('epochs'):
      epochs = int(_number(t, 'epochs'))
    elif t.startswith('seed'):
      c.seed = int(_number(t, 'seed'))
    else:
      raise ValueError(f'unknown config argument {t!r}; the switches are listed in byol_jax/switches.py')
  return epochs


def apply_ablations(c, arg, num_train, epochs=100):
  """Applies the switches of `arg` (apply_switches) and sets train.steps = epochs * num_train // batch,
  epochs from an `epochs<n>` switch or the default. Returns c."""
  asked = apply_switches(c, arg)
  c.train.steps = (asked if asked is not None else epochs) * num_train // c.train.batch_size
  return c
