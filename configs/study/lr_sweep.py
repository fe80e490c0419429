"""Study: an lr sweep at fixed eta = wd / lr, beta = (1 - tau) / lr and theory time lr * steps, which tells the
paper's map of its ODEs to training from the optimizer's (paper Sec. 4, Obs#5; byol_jax/study/phase_map.py).

Command:  python -m byol_jax.study --config=configs/study/lr_sweep.py --workdir=runs/study/lr_sweep --parallel=2
GPU:      --config=configs/study/lr_sweep.py:stl10 (or :cifar10): the same sweep around that recipe's lr.

Symmetric linear predictor, 1 seed (`--config.seeds=3 --runs=<row>:1,<row>:2` adds seeds to a row; `--runs` picks
the cells to train). lr in {1/2, 1, 2, 4} x the base's lr, and at each lr: weight decay wd = eta * lr (trunk and
predictor), EMA rate tau = 1 - beta * lr with the base's beta, and steps = the base's STEPS * (base lr / lr), so
every row reaches the same theory time. Rows `eta<eta>_lr<lr>`. At the paper-regime base (lr 0.1, beta 0.13, 1000
steps at lr 0.1, t = lr * steps = 100):

  | eta = wd / lr | lr 0.05 (2000 steps) | lr 0.1 (1000 steps) | lr 0.2 (500 steps) | lr 0.4 (250 steps) |
  |---------------|----------------------|---------------------|--------------------|--------------------|
  | 0             | wd 0                 | wd 0                | wd 0               | wd 0               |
  | 0.025         | wd 0.00125           | wd 0.0025           | wd 0.005           | wd 0.01            |
  | 0.1           | wd 0.005             | wd 0.01             | wd 0.02            | wd 0.04            |
  | 0.4           | wd 0.02              | wd 0.04             | wd 0.08            | wd 0.16            |
  | tau           | 0.9935               | 0.987               | 0.974              | 0.948              |

What each map predicts for the theory mode (phase_map.py: p_j(0) = 0.4 on the parabola; eta_c = 1/4, beyond it
every mode collapses, Obs#5), computed by the study into lr_sweep.json:
  paper  eta = wd / lr, beta 0.13, t 100: a line of fixed eta is one theory point. eta 0, 0.025 and 0.1 survive
         (s_j 0.77 at 0.1) and eta 0.4 collapses (s_j ~1e-34) at every lr.
  sgd    eta = wd, beta = (1 - tau)(1 - m) / lr = 0.013, t 1000: wd up to 0.04 survives (s_j 0.91-0.99), wd 0.08
         and 0.16 collapse (the slow beta widens the basin below eta_c, Obs#10). One verdict per wd at every lr.
So the two maps part at eta0p4_lr0p05 (wd 0.02) and eta0p4_lr0p1 (wd 0.04): collapsed under the paper's map,
spread under the optimizer's. A collapse on the eta 0 line is the step size's own (the discrete update), which
neither map holds. Nor does either hold the angular step sqrt(2·lr·wd / (1 + m)) (lr_sweep.py), which grows with
lr along every line: it is the same at eta0p025_lr0p2, eta0p1_lr0p1 and eta0p4_lr0p05 (lr * wd = 1e-3), and at
eta0p025_lr0p4, eta0p1_lr0p2 and eta0p4_lr0p1 (4e-3), where eta0p025_lr0p4 survives under both maps.
The phase diagram at lr 0.1 (docs/study.md "The short-run transient") collapsed completely at wd 4e-2 (paper's
eta 0.4) and agreed with the paper's map in 12 of 16 cells, the optimizer's in 8; one lr cannot separate the maps,
this sweep can. The study writes lr_sweep.png and lr_sweep.json beside its results.
"""
from byol_jax.config import load_config_module

STEPS = 1000        # at the base's lr; past the norm transient for both etas (weight decay exposure >= 5 at lr 0.05)
LR_FACTORS = (0.5, 1.0, 2.0, 4.0)
# No weight decay (the control); 0.025, whose lr 0.2 row steps as far per update as lr 0.1 at 0.1 (the same lr * wd,
# byol_jax/study/lr_sweep.py's angular step); then either side of eta_c = 1/4 under the paper's map.
ETAS = (0.0, 0.025, 0.1, 0.4)


def _name(x: float) -> str:
  return f'{x:g}'.replace('.', 'p')


def rows(base_lr: float, base_tau: float) -> dict:
  """Row name -> switches: the sweep's table (module docstring) around a base's lr and EMA rate."""
  beta = (1.0 - base_tau) / base_lr
  out = {}
  for eta in ETAS:
    for factor in LR_FACTORS:
      lr = base_lr * factor
      out[f'eta{_name(eta)}_lr{_name(lr)}'] = (f'linear_sym,lr{lr:.6g},wd{eta * lr:.6g},tau{1.0 - beta * lr:.6g},'
                                               f'epochs{round(100 / factor)}')
  return out


def get_config(arg=None):
  b = load_config_module(__file__, '_base.py')
  base = b.base(arg, STEPS)
  return b.study('lr_sweep', arg, STEPS, rows(base.optim.lr, base.ema.tau_base), {}, seeds=1,
                 figures=('lr_sweep',))
