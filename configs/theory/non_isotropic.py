r"""Where the eigenmode ODE stops holding: non-isotropic data (X != I, A2 broken) and an unaligned start.

  python -m theory.main --config=configs/theory/non_isotropic.py --workdir=/tmp/theory_noniso
  python -m theory.main --config=configs/theory/non_isotropic.py --workdir=/tmp/theory_random \
      --config.sim.x_eigenvalues='(1.0,)' --config.sim.init=random

Shows the simulated network drifting away from Eqns 11-13 (summary.json's agreement figures reach tens of
percent, up to ~1.5 on s_j) because W_p W now sees X + X' with unequal eigenvalues (paper Appendix D: fixed points
W_p W = W Sigma_d Sigma_s^-1). With the random init override, the data are isotropic again but the eigenspaces
of F and W_p are not aligned at t = 0: the ODE is off until ||[F, W_p]|| has decayed (Thm 3).
"""
from theory.config import base_config


def get_config():
  c = base_config()
  c.alpha_p = 1.0
  c.eta = 0.01
  c.beta = 1.0
  c.sigma2 = 0.2
  c.t_max = 15.0
  c.num_modes = 3
  c.p0 = (0.2, 0.4, 0.6)
  c.s0 = (0.3, 0.6, 1.0)
  c.tau0 = (1.0,)
  c.sim.input_dim = 6
  c.sim.x_eigenvalues = (3.0, 1.5, 1.0, 0.7, 0.4, 0.2)
  c.sim.lr = 0.01
  c.sim.record_every = 20
  return c
