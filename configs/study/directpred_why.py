"""Study: why DirectPred trails the SGD linear predictor in the paper's regime, and its successors.

Command:  python -m byol_jax.study --config=configs/study/directpred_why.py --workdir=runs/study/directpred_why
          --parallel=2 --reuse=docs/records/study/predictors_paper_regime
          --record=docs/records/study/directpred_why_paper_regime [--runs=directpred_general:0,...]
          (the paper's regime, 3000 steps; 2 CPU cores: ~26 min per run, two at a time; the 6000-step rows
          ~52 min. `directpred` and `linear_sym` are the predictors study's runs, linked, not trained again.)

In the predictors study DirectPred is 1.2 points behind the symmetric SGD linear predictor (8 paired seeds).
Each row below tests one explanation; each is paired by seed with `directpred` (is it the cause?) and with
`linear_sym` (does it close the gap?):
  directpred           rho 0.3, eps 0.1, square root (the predictors study's row)
  linear_sym           the symmetric SGD linear predictor (the predictors study's row)
  B  directpred_general  the reference code's float32 general eigensolver (torch.eig, LAPACK sgeev, real parts
                         and LAPACK's real layout) instead of eigh: does the port's one numerical difference
                         matter? Under 0.5 points either way clears the port.
  A  directpred_c4       c = 4, p = s^(1/4) + eps: a flatter spectrum on the live modes
     directpred_eps05    eps 0.5: a higher floor for the modes not yet recruited
     directpred_proj     p = 1 on modes above 1e-2 s_max, eps (0.1) below: the flat, projection-like spectrum
                         the SGD predictor settles near here
  C  directpred_6000, linear_sym_6000  both at 6000 steps (weight-decay exposure 8.0, near the paper's 9.8)
  D  directcopy_eps025   DirectCopy at the floor of its public implementation, F / lambda_max + 0.25 I
     directpred_isoloss, linear_sym_isoloss  IsoLoss (Halvagal et al. 2023): the predictor's input gets the
                         loss's gradient without W_p's per-mode factor (byol_jax/losses.py isotropic_term)
     directpred_c4_isoloss  both fixes together (c = 4 and IsoLoss): do they add up, or are they one mechanism?
"""
from byol_jax.config import load_config_module

STEPS = 3000  # the paper's regime (configs/study/_base.py)
SEEDS = 4  # paired with the predictors study's seeds 0-3 of directpred and linear_sym

ROWS = {
    'directpred': 'directpred',
    'linear_sym': 'linear_sym',
    'directpred_general': 'directpred,general',
    'directpred_c4': 'directpred,power4',
    'directpred_eps05': 'directpred,eps0.5',
    'directpred_proj': 'directpred,proj0.01',
    'directcopy_eps025': 'directcopy,eps0.25',
    'directpred_6000': 'directpred,epochs200',
    'linear_sym_6000': 'linear_sym,epochs200',
    'directpred_isoloss': 'directpred,isoloss',
    'linear_sym_isoloss': 'linear_sym,isoloss',
    'directpred_c4_isoloss': 'directpred,power4,isoloss',
}
PAPER = {
    'directpred': (77.86, 'Tbl 6 rho 0.3, eps 0.1'),
    'linear_sym': (75.09, 'Tbl 3 linear, EMA, no bias sym'),
}
PAIRS = ('directpred_general-directpred', 'directpred_c4-directpred', 'directpred_eps05-directpred',
         'directpred_proj-directpred', 'directcopy_eps025-directpred', 'directpred_6000-linear_sym_6000',
         'directpred_isoloss-directpred', 'directpred_isoloss-linear_sym_isoloss', 'directpred_isoloss-directpred_c4',
         'directpred_c4_isoloss-directpred_c4', 'directpred_c4_isoloss-directpred_isoloss')


def get_config(arg=None):
  return load_config_module(__file__, '_base.py').study('directpred_why', arg, STEPS, ROWS, PAPER, seeds=SEEDS,
                                                       reference='linear_sym', pairs=PAIRS, figures=('recruitment',))
