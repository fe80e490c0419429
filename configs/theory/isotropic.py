r"""Where the paper's assumptions A1-A3 hold: X = I, X' = sigma2 I, symmetric W_p, aligned start, small lr.

  python -m theory.main --config=configs/theory/isotropic.py --workdir=/tmp/theory_iso

Shows the ODE (Eqns 11-13) and the discrete linear network (Eqns 2-4, population gradient, lr 1e-3,
t = step * lr) agree to ~1e-4 relative error on p_j, s_j and tau_j for five modes, some growing and some
collapsing under weight decay eta = 0.05 < eta_c.
"""
from theory.config import base_config


def get_config():
  c = base_config()
  c.alpha_p = 1.0
  c.eta = 0.05
  c.beta = 0.5
  c.sigma2 = 0.2
  c.t_max = 20.0
  c.num_modes = 5
  c.p0 = (0.02, 0.1, 0.3, 0.5, 0.8)
  c.s0 = (0.0004, 0.1, 0.3, 0.5, 1.0)
  c.tau0 = (0.8,)
  c.sim.lr = 1e-3
  c.sim.record_every = 100
  return c
