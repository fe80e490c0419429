"""Study: the predictor's relative learning rate alpha_p for SimSiam with a symmetric linear predictor
(paper Fig. 6; theory Obs#1/#2).

Command:  python -m byol_jax.study --config=configs/study/alpha_p.py --workdir=runs/study/alpha_p
GPU:      --config=configs/study/alpha_p.py:stl10 (or :cifar10), i.e. configs/stl10.py:<args> per row.

SimSiam (no EMA: the target is the online projection under stop-gradient), symmetric linear predictor
without bias, predictor lr = alpha_p x trunk lr. The paper shows (Fig. 6, no numbers in the text) that with
no EMA a symmetric W_p collapses at alpha_p = 1 and works for alpha_p > 1 on STL-10 and CIFAR-10. The
closest number in its tables: BYOL without EMA and a symmetric linear predictor, alpha_p = 1: 36.62
(Tbl 3), beside the alphap1 row. The theory (theory/, notebooks/05_alpha_p_sweep.ipynb): a larger alpha_p
lets more modes escape collapse (Obs#1) but lets s_j grow less (Obs#2).

4x the base's lr and 1/4 its weight decay (0.4 and 3.3e-4 on the default base, 0.4 and 1e-4 on :short):
SimSiam's loss (the mean of two negative cosines) has 1/4 the gradient of BYOL's (the sum of two 2 - 2 cos),
so at the same lr a SimSiam run moves 4x slower. So scaled, the SimSiam step (gradient x lr, and lr x weight
decay) has the scale of the BYOL base's step with the target = online network (table3's `linear_sym,no_ema`,
which collapses); at the base's lr 0.1 no alpha_p collapsed (:short, one seed), so Fig. 6's rescue could not
show.
Time:     :short (400 steps, 12 runs): ~13 min on 2 CPU cores with --parallel=2; the default (2000 steps) 15-21
          min per run and core.
Result:   default, 3 seeds: no alpha_p collapses, alpha_p 1 included (0.818 +- 0.016; alpha_p 2-10 0.838-0.841,
          each +2 points over alpha_p 1, not resolved at 3 seeds); alpha_p scales W_p's eigenvalues, not the
          number of surviving modes. :short: every alpha_p ends at or below the collapse line, the spread
          falling with alpha_p (Obs#2's effect, not Fig. 6's rescue); docs/study.md "Fig. 6".

Rows:
  alphap1    linear_sym,simsiam,alphap1     (36.62, Tbl 3 linear sym, no EMA, BYOL: the closest row)
  alphap2    linear_sym,simsiam,alphap2
  alphap5    linear_sym,simsiam,alphap5
  alphap10   linear_sym,simsiam,alphap10
"""
from byol_jax.config import load_config_module

STEPS = 2000  # the paper's regime (configs/study/_base.py)

ROWS = {f'alphap{a}': f'linear_sym,simsiam,alphap{a}' for a in (1, 2, 5, 10)}
PAPER = {'alphap1': (36.62, 'Tbl 3 linear sym, no EMA (BYOL; closest to SimSiam alpha_p 1)')}


def get_config(arg=None):
  c = load_config_module(__file__, '_base.py').study('alpha_p', arg, STEPS, ROWS, PAPER, reference='alphap1',
                                                    figures=('recruitment',))
  if not arg or arg in ('paper_regime', 'short'):
    # SimSiam's loss has 1/4 of BYOL's gradient (see the docstring): 4x the lr, and the weight decay that keeps
    # lr x weight decay (the decay per step) at the BYOL base's.
    base_lr, base_wd = c.base.optim.lr, c.base.optim.weight_decay
    c.base.optim.lr = 4 * base_lr
    c.base.optim.weight_decay = base_wd / 4
  return c
