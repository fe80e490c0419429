"""Study: which predictor keeps BYOL from collapsing (paper Tbl 3, 6, 8; Thm 2 for no stop-gradient).

Command:  python -m byol_jax.study --config=configs/study/predictors.py --workdir=runs/study/predictors
          --parallel=2 --rows=mlp,linear,linear_sym,directpred,directcopy
          (the paper's regime, 3000 steps, 10 seeds; 2 CPU cores: ~30 min per run, two at a time; a committed
          record: --record=docs/records/study/predictors_paper_regime; --runs=mlp:3,linear:2 trains
          those seeds first; `:short` is the 400-step short-run base)
GPU:      --config=configs/study/predictors.py:stl10 (or :cifar10): the same rows on the paper's recipe,
          i.e. `python -m byol_jax.main --config=configs/stl10.py:<args>` for each row below.

Rows (configs/stl10.py switches) and the paper's STL-10 numbers they stand beside (top-1 %, 100 epochs,
ResNet-18, mean of 5 seeds; the paper's tables):
  mlp          mlp                         78.53  Tbl 3, 2-layer BN+ReLU, EMA, bias regular (ours has biases)
  linear       linear                      74.51  Tbl 3, 1-layer linear, EMA, no bias regular (SGD)
  linear_sym   linear_sym                  75.09  Tbl 3, 1-layer linear, EMA, no bias sym
  directpred   directpred                  77.86  Tbl 6 / Tbl 8, rho 0.3 eps 0.1
  freq5        directpred,freq5            77.54  Tbl 8, DirectPred freq 5
  directcopy   directcopy                  -      (DirectCopy, Wang et al. 2021: not in this paper)
  none         none                        -      no predictor: collapses (Sec. 3, Thm 2 with W_p = I)
  simsiam_no_stop_grad  mlp,simsiam,no_stop_grad  -  SimSiam without stop-gradient: collapses (Thm 2)
"""
from byol_jax.config import load_config_module

STEPS = 3000  # the paper's regime: weight-decay exposure 4.0, ~8x the norm transient (configs/study/_base.py)
SEEDS = 10  # paired seeds: 8-10 give directpred - linear_sym a +-1 point interval at its ~1.2 points of per-seed sd

ROWS = {
    'mlp': 'mlp',
    'linear': 'linear',
    'linear_sym': 'linear_sym',
    'directpred': 'directpred',
    'freq5': 'directpred,freq5',
    'directcopy': 'directcopy',
    'none': 'none',
    'simsiam_no_stop_grad': 'mlp,simsiam,no_stop_grad',
}
PAPER = {
    'mlp': (78.53, 'Tbl 3 2-layer, EMA, bias regular'),
    'linear': (74.51, 'Tbl 3 linear, EMA, no bias regular'),
    'linear_sym': (75.09, 'Tbl 3 linear, EMA, no bias sym'),
    'directpred': (77.86, 'Tbl 6 rho 0.3, eps 0.1'),
    'freq5': (77.54, 'Tbl 8 DirectPred freq 5, 100 ep'),
}


def get_config(arg=None):
  return load_config_module(__file__, '_base.py').study('predictors', arg, STEPS, ROWS, PAPER, seeds=SEEDS,
                                                       reference='linear_sym',
                                                       pairs=('directpred-linear', 'directpred-mlp'),
                                                       figures=('recruitment',))
