"""Study: what DirectPred needs on this network to match the SGD-trained linear predictor.

Command:  python -m byol_jax.study --config=configs/study/directpred_levers.py --workdir=runs/study/directpred_levers
          [--reuse=runs/study/predictors]   (directpred, linear and mlp are the predictors study's rows)
GPU:      --config=configs/study/directpred_levers.py:stl10 (or :cifar10).

Why these levers. On the Fashion-MNIST study base the uncentred correlation F of the projector output is
dominated by the direction of its mean: s_1 / s_2 ~ 150 at step 100 (1860 vs 12; the DirectPred run of
docs/records/study_log_2026-11.md, "predictors over 1200 steps"), so DirectPred's p_j = sqrt(s_j / s_max) + eps
puts ~1 on the mean direction and ~eps on every other mode: the prediction is mostly the mean, and the other
modes grow slowly. Rows:
  directpred             rho 0.3, eps 0.1 (the paper's Tbl 6 best; the predictors study's row)
  directpred_centre      F = the covariance (the reference code's dyn_zero_mean; the paper reports it worse
                         on STL-10): the mean no longer sets s_max
  directpred_eps03       eps 0.3: every mode's p_j lifted (Tbl 6 tried up to 0.5 on STL-10: 75.06)
  directpred_freq5_centre  W_p reset every 5 steps from the covariance, SGD between (Tbl 8's longer-run winner)
  linear, mlp            the SGD linear and the 2-layer predictors beside them
"""
from byol_jax.config import load_config_module

STEPS = 2000  # the paper's regime (configs/study/_base.py)

ROWS = {
    'directpred': 'directpred',
    'directpred_centre': 'directpred,centre',
    'directpred_eps03': 'directpred,eps0.3',
    'directpred_freq5_centre': 'directpred,freq5,centre',
    'linear': 'linear',
    'mlp': 'mlp',
}
PAPER = {
    'directpred': (77.86, 'Tbl 6 rho 0.3, eps 0.1'),
    'linear': (74.51, 'Tbl 3 linear, EMA, no bias regular'),
    'mlp': (78.53, 'Tbl 3 2-layer, EMA, bias regular'),
}


def get_config(arg=None):
  return load_config_module(__file__, '_base.py').study('directpred_levers', arg, STEPS, ROWS, PAPER,
                                                       figures=('recruitment',))
