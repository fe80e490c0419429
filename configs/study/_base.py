"""The base run of every study in configs/study/ (not a study itself), and the study skeleton.

`study(name, arg, steps)` returns a study config whose base is one of
  (no arg) / fashion_mnist  the Fashion-MNIST default network (configs/fashion_mnist.py: tiny ResNet width 32,
                            256-d features, projector 256-512-128 with BatchNorm affine=False), 2 CPU cores;
  stl10 / cifar10           configs/stl10.py / configs/cifar10.py unchanged (the paper's recipe, 100 epochs),
                            one GPU: `--config=configs/study/<name>.py:stl10`.

Fashion-MNIST base: the paper's STL-10 recipe where it matters for the ablations (shared/design/paper.md
section 2): SGD with momentum 0.9, weight decay 4e-4 on every parameter, constant lr; a constant EMA
rate; the target initialised independently of the online network (the reference code); linear predictors
without bias; DirectPred rho 0.3, eps 0.1 as the default predictor; symmetric loss.

lr 0.1, not the paper's 0.03: measured 2026-11-30 (one seed, docs/study.md), the 2-layer predictor gained
+1.8 probe points over the random network in 300 steps at 0.03 and +5.2 in 400 steps at 0.1; a study run
is a few hundred steps, not the paper's ~80k. In the theory's units (eta = wd / lr, beta = (1 - tau) / lr)
the base is eta = 0.004 and beta = 0.1 (the paper's STL-10 recipe: 0.0133 and 0.133).

EMA rate 0.99, not the paper's 0.996. The paper's 0.996 over 82k steps makes the target lag ~250 steps,
0.3% of its run. A study run is a few hundred steps: at 0.996 the target would still hold 0.996^400 = 20%
of its random initialisation at the end and lag the online network by most of the run, so "EMA" would
mean "a nearly frozen, partly random target", not the slowly following target of the paper. At 0.99 (a lag
of ~100 steps, 0.99^400 = 2% of the initialisation left) the target follows within the run, and the theory's
EMA rate beta = (1 - tau) / lr (paper 0.133) is 0.1, the same order. Constant, not BYOL's cosine
schedule: the paper's recipe, and `no_ema` / `tau<x>` then mean one rate for the whole run.

The step count is set by each study (one `STEPS` per file, 400, sized in docs/study.md); eval.num_train =
10,000 cuts the probe's train split (the test split stays whole, 10,000 images).
"""
import ml_collections

from byol_jax.config import load_config_module

NUM_TRAIN_FOR_PROBE = 10_000
BASES = ('fashion_mnist', 'stl10', 'cifar10')


def fashion_mnist_base(steps: int):
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
  arg = arg or 'fashion_mnist'
  if arg == 'fashion_mnist':
    c = fashion_mnist_base(steps)
  elif arg in ('stl10', 'cifar10'):
    c = load_config_module(__file__, f'../{arg}.py').get_config('')
  else:
    raise ValueError(f'study base {arg!r} is unknown; use one of {", ".join(BASES)}')
  c.train.progress_bar = False  # the study draws one progress line for all its runs
  return c


def study(name: str, arg, steps: int, rows: dict, paper: dict, seeds: int = 3):
  """A study config: name, base, rows (name -> configs/stl10.py switches, in this order), seeds, paper
  (row -> {'value': STL-10 top-1 %, 'table': where})."""
  c = ml_collections.ConfigDict()
  c.name = name if not arg or arg == 'fashion_mnist' else f'{name}_{arg}'
  c.base = base(arg, steps)
  c.rows = ml_collections.ConfigDict(rows)
  c.seeds = seeds
  c.paper = ml_collections.ConfigDict({k: {'value': v, 'table': t} for k, (v, t) in paper.items()})
  return c
