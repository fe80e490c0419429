r"""Weight decay above the critical value: eta = 0.3 > eta_c = tau^2/(4(1+sigma2)) = 0.25 collapses every mode.

  python -m theory.main --config=configs/theory/weight_decay.py --workdir=/tmp/theory_wd
  python -m theory.main --config=configs/theory/weight_decay.py --workdir=/tmp/theory_wd2 --config.eta=0.1

Shows (Obs#5) that above eta_c no mode survives, whatever p0; with --config.eta=0.1 (below eta_c) modes
that start on the parabola above p*_- survive and settle at p*_+ (summary.json lists both fixed points).
SimSiam (tau = 1), so the closed-form fixed points apply exactly.
"""
from theory.config import base_config


def get_config():
  c = base_config()
  c.alpha_p = 1.0
  c.eta = 0.3
  c.beta = 0.0
  c.simsiam = True
  c.sigma2 = 0.0
  c.t_max = 60.0
  c.num_points = 301
  c.num_modes = 4
  c.p0 = (0.1, 0.3, 0.6, 0.9)
  c.s0 = (0.01, 0.09, 0.36, 0.81)   # on the parabola s = p^2 / alpha_p
  c.tau0 = (1.0,)
  c.sim.lr = 0.01
  c.sim.record_every = 50
  return c
