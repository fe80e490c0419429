"""DirectPred paper, CIFAR-10 (Tian, Chen & Ganguli 2021: the paper's CIFAR-10 setup).

Command:  python -m byol_jax.main --config=configs/cifar10.py[:ARGS] --workdir=runs/cifar10
          (data: tfds 'cifar10' in $TFDS_DATA_DIR or --config.data.tfds_data_dir; `tfds build cifar10`)
Hardware: one GPU (the paper: one GPU per run, 5 seeds per setting).
Time:     not measured end to end. Estimate from the ResNet-18 step measured on one H100 (docs/benchmarks.md):
          39,062 steps of 128 at 32 px with the CIFAR stem (~1.7x the FLOPs of STL-10's 96 px step), ~10 ms
          each: ~7 min plus evaluations.
Setup:    as configs/stl10.py (ResNet-18, projector 512-512-128 BN affine=False, SGD lr 0.03 momentum 0.9
          wd 4e-4 on all parameters, constant lr, batch 128, EMA 0.996 constant, independent target init,
          DirectPred rho 0.3 eps 0.1 freq 1; output biases on the projector and the 2-layer predictor and every
          BatchNorm scale starting at 1, as the reference code) but with the CIFAR stem (3x3 conv, no
          max-pool) at 32 px, 100 epochs of the 50,000 training images: steps = 100 * 50000 // 128 = 39,062;
          augmentation preset 'cifar10'; inputs normalised with mean (0.4914, 0.4822, 0.4465), std
          (0.2023, 0.1994, 0.2010).
Result:   linear probe top-1 on the 10k test split (frozen backbone, 50k train split, Adam 50 epochs).

ARGS: the same comma-separated switches as configs/stl10.py (byol_jax/switches.py lists them), e.g.
`configs/cifar10.py:freq5,epochs300`.

Paper rows (CIFAR-10, Tbl 8; top-1 %, 100 / 300 / 500 epochs) -> ARGS:
  DirectPred (rho 0.3, eps 0.1):  85.21 / 88.88 / 89.52  -> (none) / epochs300 / epochs500
  DirectPred freq 5:              84.93 / 88.83 / 89.56  -> freq5 / freq5,epochs300 / freq5,epochs500
  SGD baseline (linear predictor): 84.49 / 88.57 / 89.33 -> linear / linear,epochs300 / linear,epochs500
Fig. 6 (no numbers in the text): no EMA with a symmetric predictor and alpha_p > 1, e.g.
  linear_sym,no_ema,alphap2. The STL-10 ablation switches (Tbl 3, 5, 6, 7) apply here unchanged; the
  paper reports those tables on STL-10 only.
"""
from byol_jax.config import base_config, load_config_module
from byol_jax.switches import apply_ablations

NUM_TRAIN = 50_000


def get_config(arg=None):
  stl10 = load_config_module(__file__, 'stl10.py')
  c = stl10.paper_recipe(base_config())
  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.data.augment_preset = 'cifar10'
  c.model.stem = 'cifar'
  c.train.eval_every = 10 * (NUM_TRAIN // c.train.batch_size)  # every 10 epochs
  return apply_ablations(c, arg, NUM_TRAIN)
