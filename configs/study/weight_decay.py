"""Study: weight decay on the predictor only, or nowhere, with and without EMA (paper Tbl 5, Tbl 2).

Command:  python -m byol_jax.study --config=configs/study/weight_decay.py --workdir=runs/study/weight_decay
GPU:      --config=configs/study/weight_decay.py:stl10 (or :cifar10), i.e. configs/stl10.py:<args> per row.

Linear predictor without bias, symmetric and regular ("no bias" columns of Tbl 5; add `bias` for the
others). The baseline with weight decay everywhere is in configs/study/table3.py (75.09 / 74.51 with EMA,
36.62 / 72.85 without). `wd_predictor_only` moves the trunk's 4e-4 to the predictor (eta_p = 4e-4,
eta_s = 0); `no_wd` sets both to 0.

Rows and the paper's STL-10 numbers (top-1 %, 100 epochs):
  sym_wd_pred_ema      linear_sym,wd_predictor_only          71.91  Tbl 5 wd predictor only, EMA, sym
  reg_wd_pred_ema      linear,wd_predictor_only              70.54  Tbl 5 wd predictor only, EMA, regular
  sym_wd_pred_no_ema   linear_sym,wd_predictor_only,no_ema   71.12  Tbl 5 wd predictor only, no EMA, sym
  reg_wd_pred_no_ema   linear,wd_predictor_only,no_ema       71.34  Tbl 5 wd predictor only, no EMA, regular
  sym_no_wd_ema        linear_sym,no_wd                      71.76  Tbl 5 no wd, EMA, sym
  reg_no_wd_ema        linear,no_wd                          70.62  Tbl 5 / Tbl 2 no wd, EMA, regular
  sym_no_wd_no_ema     linear_sym,no_wd,no_ema               43.04  Tbl 5 no wd, no EMA, sym  (collapses)
  reg_no_wd_no_ema     linear,no_wd,no_ema                   71.36  Tbl 5 / Tbl 2 no wd, no EMA, regular
"""
from byol_jax.config import load_config_module

STEPS = 2000  # the paper's regime: eta 0.0133 as the paper (configs/study/_base.py)

ROWS = {
    'sym_wd_pred_ema': 'linear_sym,wd_predictor_only',
    'reg_wd_pred_ema': 'linear,wd_predictor_only',
    'sym_wd_pred_no_ema': 'linear_sym,wd_predictor_only,no_ema',
    'reg_wd_pred_no_ema': 'linear,wd_predictor_only,no_ema',
    'sym_no_wd_ema': 'linear_sym,no_wd',
    'reg_no_wd_ema': 'linear,no_wd',
    'sym_no_wd_no_ema': 'linear_sym,no_wd,no_ema',
    'reg_no_wd_no_ema': 'linear,no_wd,no_ema',
}
PAPER = {
    'sym_wd_pred_ema': (71.91, 'Tbl 5 wd predictor only, EMA, no bias sym'),
    'reg_wd_pred_ema': (70.54, 'Tbl 5 wd predictor only, EMA, no bias regular'),
    'sym_wd_pred_no_ema': (71.12, 'Tbl 5 wd predictor only, no EMA, no bias sym'),
    'reg_wd_pred_no_ema': (71.34, 'Tbl 5 wd predictor only, no EMA, no bias regular'),
    'sym_no_wd_ema': (71.76, 'Tbl 5 no wd, EMA, no bias sym'),
    'reg_no_wd_ema': (70.62, 'Tbl 5 no wd, EMA, no bias regular'),
    'sym_no_wd_no_ema': (43.04, 'Tbl 5 no wd, no EMA, no bias sym'),
    'reg_no_wd_no_ema': (71.36, 'Tbl 5 no wd, no EMA, no bias regular'),
}


def get_config(arg=None):
  return load_config_module(__file__, '_base.py').study('weight_decay', arg, STEPS, ROWS, PAPER)
