"""The bases of the studies in configs/study/ (not a study itself), and the study skeleton.

`study(name, arg, steps, rows, paper)` returns a study config whose base is one of
  (no arg) / paper_regime  the paper's regime (below) on the Fashion-MNIST network, `steps` steps; 2 CPU cores;
  short                    the short-run base: the same network at lr 0.1, wd 4e-4, EMA 0.99 for 400 steps,
                           which ends inside the early transient (docs/study.md "The short-run transient");
  stl10 / cifar10          configs/stl10.py / configs/cifar10.py unchanged (the paper's recipe, 100 epochs),
                           one GPU: `--config=configs/study/<name>.py:stl10`.

The network (configs/fashion_mnist.py): tiny ResNet width 32, 256-d features, projector 256-512-128 with
BatchNorm affine=False, batch 128. The recipe is the paper's STL-10 one where the ablations need it
(paper section 2): SGD with momentum 0.9, weight decay on every parameter, constant lr and EMA rate, the
target initialised independently of the online network (the reference code), linear predictors without
bias, DirectPred rho 0.3 and eps 0.1, symmetric loss. The network keeps the reference code's choices (its
`nn.Linear` output layers): the projector's and the 2-layer predictor's output layers carry a bias, and every
BatchNorm scale starts at 1 (model.projector_output_bias, predictor.output_bias, model.zero_init_last_bn_scale).

The paper's regime. The theory's findings are about the dynamics in its own units, so the base matches
those units with the paper's STL-10 run (lr 0.03, wd 4e-4, momentum 0.9, EMA 0.996, ~82k steps of batch 128),
not its lr or length:

  | quantity                              | formula                 | paper STL-10 | paper-regime base (3000 steps) |
  |---------------------------------------|-------------------------|--------------|--------------------------------|
  | eta, weight decay per unit lr         | wd / lr                 | 0.0133       | 1.33e-3 / 0.1 = 0.0133         |
  | beta, EMA rate per unit lr            | (1 - tau) / lr          | 0.133        | 0.013 / 0.1 = 0.13             |
  | weight-decay exposure (with momentum) | wd lr steps / (1 - m)   | ~9.8         | 1.33e-3 * 0.1 * 3000 / 0.1 = 4.0 |
  | norm transient (steps)                | (1 - m) / (2 lr wd)     | ~4,200 (5%)  | ~380 (13% of 3000 steps)       |
  | target lag (steps)                    | 1 / (1 - tau)           | 250          | 77                             |

The exposure is the e-folding count weight decay applies to a weight over the run; momentum m multiplies the
effective step by 1 / (1 - m). The norm transient is how long BatchNorm-normalised weights (scale-invariant,
so their norm grows under SGD) take to reach the balance between growth and decay; findings about weight
decay need runs well past it. At 1500 steps the exposure is 2.0, at 2000 2.7. The short-run base
(eta 0.004, beta 0.1, 400 steps: exposure 0.16, transient ~1250 steps) is kept to compare with.

Every run re-estimates its BatchNorm statistics from data before the step-0 evaluation (eval.precise_bn,
byol_jax/config.py), so "step 0" is a random network as training runs it. eval.num_train = 10,000 cuts the
probe's train split (the test split stays whole, 10,000 images).
"""
import ml_collections

from byol_jax.config import load_config_module

NUM_TRAIN_FOR_PROBE = 10_000
BASES = ('paper_regime', 'short', 'stl10', 'cifar10')
SHORT_STEPS = 400


def paper_regime_base(steps: int):
  """The Fashion-MNIST network in the paper's regime (the module docstring's table)."""
  c = short_base(steps)
  c.optim.lr = 0.1
  c.optim.weight_decay = 1.33e-3
  c.ema.tau_base = 0.987
  c.train.checkpoint_every = 250
  return c


def short_base(steps: int):
  c = load_config_module(__file__, '../fashion_mnist.py').get_config()
  c.train.steps = steps
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.train.spectra_every = 100
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 4e-4
  c.optim.schedule = 'constant'
  c.ema.tau_base = 0.99
  c.ema.schedule = 'constant'
  c.ema.target_init = 'independent'
  c.predictor.kind = 'directpred'
  c.predictor.use_bias = False
  c.predictor.rho = 0.3
  c.predictor.eps = 0.1
  c.eval.num_train = NUM_TRAIN_FOR_PROBE
  return c


def base(arg, steps: int):
  """The run config a study starts from (see the module docstring)."""
  arg = arg or 'paper_regime'
  if arg == 'paper_regime':
    c = paper_regime_base(steps)
  elif arg == 'short':
    c = short_base(SHORT_STEPS)
  elif arg in ('stl10', 'cifar10'):
    c = load_config_module(__file__, f'../{arg}.py').get_config('')
  else:
    raise ValueError(f'study base {arg!r} is unknown; use one of {", ".join(BASES)}')
  c.train.progress_bar = False  # the study draws one progress line for all its runs
  return c


def study(name: str, arg, steps: int, rows: dict, paper: dict, seeds: int = 3, reference: str = '',
          pairs: tuple = (), figures: tuple = ()):
  """A study config: name, base, rows (name -> switches of byol_jax/switches.py, in this order), seeds, paper
  (row -> {'value': STL-10 top-1 %, 'table': where}); reference: the row every other row is compared with,
  seed by seed (byol_jax/study/results.py "Paired differences"); pairs: more 'row-other' comparisons; figures:
  what the results draw beside the table ('phase_diagram', 'lr_sweep': byol_jax/study/results.py FIGURES)."""
  c = ml_collections.ConfigDict()
  c.name = name if not arg or arg == 'paper_regime' else f'{name}_{arg}'
  c.base = base(arg, steps)
  c.rows = ml_collections.ConfigDict(rows)
  c.seeds = seeds
  c.reference = reference
  c.pairs = ','.join(pairs)
  c.figures = ','.join(figures)
  c.paper = ml_collections.ConfigDict({k: {'value': v, 'table': t} for k, (v, t) in paper.items()})
  return c
