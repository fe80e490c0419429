"""Study: the real network's collapse map over weight decay x EMA rate (the theory's Fig. 5 / eta_c, on the
network), symmetric linear predictor, 1 seed.

Command:  python -m byol_jax.study --config=configs/study/phase_diagram.py --workdir=runs/study/phase_diagram
GPU:      --config=configs/study/phase_diagram.py:stl10 (or :cifar10).

Weight decay wd (trunk and predictor) in {0, 4e-4, 4e-3, 4e-2} x constant EMA rate tau in {0 (no EMA), 0.9,
0.99, 0.996}: 16 rows `linear_sym,wd<wd>,tau<tau>`. Mapped to the theory (paper Sec. 4; theory/ode.py) at
the study base's lr 0.1: eta = wd / lr in {0, 0.004, 0.04, 0.4} and beta = (1 - tau) / lr in {10, 1, 0.1,
0.04} (tau 0: beta = 1 / lr, the target equals the online network after every step). The theory says every
mode collapses above eta_c = 1 / (4 (1 + sigma^2)) = 0.25 (sigma^2 = 0), i.e. only the wd 4e-2 column
(Obs#5), and a slower EMA (smaller beta, the target initialised independently) widens the collapse basin
below eta_c (Obs#10, notebooks/03). The study writes the real map beside the theory's: DIR/phase_diagram.png
and .json (byol_jax/study/phase_map.py; the map and its caveats are there).

Paper numbers on the grid's edges: linear sym, no EMA, wd 4e-4 (row wd4e-4_tau0): 36.62 (Tbl 3,
collapsed); wd 4e-4, tau 0.996: 75.09 (Tbl 3); no wd, no EMA (wd0_tau0): 43.04 (Tbl 5); no wd, tau 0.996
(wd0_tau0p996): 71.76 (Tbl 5). No paper row exists for the other cells.

Time:     ~14-18 min per run and core on 2 CPU cores with --parallel=2 (1500 steps): ~2.2 h for the 16 cells.
Result:   seed 0: wd 4e-2 collapses completely at every EMA rate (probe 0.100), no cell below it collapses; a
          slower EMA keeps more of z's modes (rank 2.8-3.6 -> 9.3-10.4 at wd 0-4e-4);
          docs/study.md "The phase diagram in the paper's regime".
"""
from byol_jax.config import load_config_module

STEPS = 1500  # the paper's regime (configs/study/_base.py): exposure 2.0 at wd 1.33e-3

WEIGHT_DECAYS = ('0', '4e-4', '4e-3', '4e-2')
TAUS = ('0', '0.9', '0.99', '0.996')
ROWS = {f'wd{wd}_tau{tau.replace(".", "p")}': f'linear_sym,wd{wd},tau{tau}' for wd in WEIGHT_DECAYS for tau in TAUS}
PAPER = {
    'wd4e-4_tau0': (36.62, 'Tbl 3 linear sym, no EMA'),
    'wd4e-4_tau0p996': (75.09, 'Tbl 3 linear sym, EMA'),
    'wd0_tau0': (43.04, 'Tbl 5 no wd, no EMA, sym'),
    'wd0_tau0p996': (71.76, 'Tbl 5 no wd, EMA, sym'),
}


def get_config(arg=None):
  return load_config_module(__file__, '_base.py').study('phase_diagram', arg, STEPS, ROWS, PAPER, seeds=1,
                                                       figures=('phase_diagram',))
