"""Study: symmetric vs regular predictor, with and without EMA (paper Tbl 3).

Command:  python -m byol_jax.study --config=configs/study/table3.py --workdir=runs/study/table3
GPU:      --config=configs/study/table3.py:stl10 (or :cifar10), i.e. configs/stl10.py:<args> per row.

{linear, 2-layer} x {symmetric, regular} x {EMA, no EMA}, as far as the keys exist. The 2-layer predictor
symmetrised (the reference ties W1 = W2^T) has no key here, so Tbl 3's 2-layer "sym" cells are left out;
the 2-layer predictor also always has biases, so its rows stand beside the "bias, regular" column. The
linear rows are the "no bias" columns; add `bias` to a row for the "bias" columns (74.52 / 74.16 with EMA,
36.04 / 72.13 without).

Rows and the paper's STL-10 numbers (top-1 %, 100 epochs, weight decay 4e-4, alpha_p 1):
  linear_sym          linear_sym            75.09  Tbl 3 linear, EMA, no bias sym
  linear              linear                74.51  Tbl 3 linear, EMA, no bias regular
  linear_sym_no_ema   linear_sym,no_ema     36.62  Tbl 3 linear, no EMA, no bias sym   (collapses)
  linear_no_ema       linear,no_ema         72.85  Tbl 3 linear, no EMA, no bias regular
  mlp                 mlp                   78.53  Tbl 3 2-layer, EMA, bias regular
  mlp_no_ema          mlp,no_ema            65.59  Tbl 3 2-layer, no EMA, bias regular
"""
from byol_jax.config import load_config_module

STEPS = 2000  # the paper's regime, past the early dip (weight-decay exposure 2.7; configs/study/_base.py)

ROWS = {
    'linear_sym': 'linear_sym',
    'linear': 'linear',
    'linear_sym_no_ema': 'linear_sym,no_ema',
    'linear_no_ema': 'linear,no_ema',
    'mlp': 'mlp',
    'mlp_no_ema': 'mlp,no_ema',
}
PAPER = {
    'linear_sym': (75.09, 'Tbl 3 linear, EMA, no bias sym'),
    'linear': (74.51, 'Tbl 3 linear, EMA, no bias regular'),
    'linear_sym_no_ema': (36.62, 'Tbl 3 linear, no EMA, no bias sym'),
    'linear_no_ema': (72.85, 'Tbl 3 linear, no EMA, no bias regular'),
    'mlp': (78.53, 'Tbl 3 2-layer, EMA, bias regular'),
    'mlp_no_ema': (65.59, 'Tbl 3 2-layer, no EMA, bias regular'),
}


# Tbl 3's contrasts: the regular predictor against the symmetric one, without and with EMA.
PAIRS = ('linear_no_ema-linear_sym_no_ema', 'linear-linear_sym')


def get_config(arg=None):
  return load_config_module(__file__, '_base.py').study('table3', arg, STEPS, ROWS, PAPER, pairs=PAIRS,
                                                       figures=('recruitment',))
