"""Study: which predictor keeps BYOL from collapsing (paper Tbl 3, 6, 8; Thm 2 for no stop-gradient).

Command:  python -m byol_jax.study --config=configs/study/predictors.py --workdir=runs/study/predictors
          (2 CPU cores; time: docs/study.md; --config.seeds=1 or --rows=mlp,none for a part)
GPU:      --config=configs/study/predictors.py:stl10 (or :cifar10): the same rows on the paper's recipe,
          i.e. `python -m byol_jax.main --config=configs/stl10.py:<args>` for each row below.

Rows (configs/stl10.py switches) and the paper's STL-10 numbers they stand beside (top-1 %, 100 epochs,
ResNet-18, mean of 5 seeds; shared/design/paper.md section 3):
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

STEPS = 400  # sized in docs/study.md

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
  return load_config_module(__file__, '_base.py').study('predictors', arg, STEPS, ROWS, PAPER)
