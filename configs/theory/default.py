r"""Default: three modes with EMA, no weight decay; ODE beside the aligned linear-network simulation.

  python -m theory.main --config=configs/theory/default.py --workdir=/tmp/theory_default

Shows the eta = 0 story (paper Sec. 4): modes with s_j(0) > p_j(0)^2/alpha_p grow to p = tau/(1+sigma2)
while tau rises from tau0 to 1 (EMA as a curriculum), and the simulated network (population gradient,
lr 0.01, aligned start, X = I) tracks the ODE to ~1e-3 relative error.
"""
from theory.config import base_config


def get_config():
  c = base_config()
  c.alpha_p = 1.0
  c.eta = 0.0
  c.beta = 1.0
  c.sigma2 = 0.1
  c.t_max = 10.0
  c.num_modes = 3
  c.p0 = (0.05, 0.3, 0.6)
  c.s0 = (0.3, 0.5, 1.0)
  c.tau0 = (0.5,)
  return c
