"""Study: weight decay on the predictor only, or nowhere, with and without EMA (paper Tbl 5, Tbl 2).

Command:  python -m byol_jax.study --config=configs/study/weight_decay.py --workdir=runs/study/weight_decay
          --reuse=runs/study/table3 (a table3 folder or record: its no-EMA rows are this study's weight-decay-
          everywhere baselines)
GPU:      --config=configs/study/weight_decay.py:stl10 (or :cifar10), i.e. configs/stl10.py:<args> per row.

Linear predictor without bias, symmetric and regular ("no bias" columns of Tbl 5; add `bias` for the
others). The baselines with weight decay everywhere are Tbl 3's rows (configs/study/table3.py: 75.09 / 74.51
with EMA, 36.62 / 72.85 without); the no-EMA ones are rows here too, so that each Tbl 5 setting is compared
with them seed by seed (`--reuse` a table3 folder or record to link them instead of training them again).
`wd_predictor_only` moves the trunk's weight decay to the predictor (the paper: eta_p = 4e-4, eta_s = 0);
`no_wd` sets both to 0.

Rows and the paper's STL-10 numbers (top-1 %, 100 epochs):
  sym_wd_all_no_ema    linear_sym,no_ema                     36.62  Tbl 3 wd everywhere, no EMA, sym  (collapses)
  reg_wd_all_no_ema    linear,no_ema                         72.85  Tbl 3 wd everywhere, no EMA, regular
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
    'sym_wd_all_no_ema': 'linear_sym,no_ema',
    'reg_wd_all_no_ema': 'linear,no_ema',
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
    'sym_wd_all_no_ema': (36.62, 'Tbl 3 wd everywhere, no EMA, no bias sym'),
    'reg_wd_all_no_ema': (72.85, 'Tbl 3 wd everywhere, no EMA, no bias regular'),
    'sym_wd_pred_ema': (71.91, 'Tbl 5 wd predictor only, EMA, no bias sym'),
    'reg_wd_pred_ema': (70.54, 'Tbl 5 wd predictor only, EMA, no bias regular'),
    'sym_wd_pred_no_ema': (71.12, 'Tbl 5 wd predictor only, no EMA, no bias sym'),
    'reg_wd_pred_no_ema': (71.34, 'Tbl 5 wd predictor only, no EMA, no bias regular'),
    'sym_no_wd_ema': (71.76, 'Tbl 5 no wd, EMA, no bias sym'),
    'reg_no_wd_ema': (70.62, 'Tbl 5 no wd, EMA, no bias regular'),
    'sym_no_wd_no_ema': (43.04, 'Tbl 5 no wd, no EMA, no bias sym'),
    'reg_no_wd_no_ema': (71.36, 'Tbl 5 no wd, no EMA, no bias regular'),
}


# Tbl 5's contrasts without EMA: where weight decay acts (everywhere, predictor only, nowhere), and the regular
# predictor against the symmetric one in each.
PAIRS = ('sym_wd_pred_no_ema-sym_wd_all_no_ema', 'sym_no_wd_no_ema-sym_wd_all_no_ema',
         'sym_wd_pred_no_ema-sym_no_wd_no_ema', 'reg_wd_all_no_ema-sym_wd_all_no_ema',
         'reg_wd_pred_no_ema-sym_wd_pred_no_ema', 'reg_no_wd_no_ema-sym_no_wd_no_ema')


def get_config(arg=None):
  return load_config_module(__file__, '_base.py').study('weight_decay', arg, STEPS, ROWS, PAPER, pairs=PAIRS,
                                                       figures=('recruitment',))
