"""DirectPred paper, ImageNet setting A: asymmetric loss, SGD, batch 256, 60 epochs.

Command:  python -m byol_jax.main --config=configs/imagenet_60ep.py[:PREDICTOR] --workdir=runs/imagenet60
          (data as configs/imagenet.py: a prepared tfds imagenet2012 in TFDS_DATA_DIR or
          --config.data.tfds_data_dir)
Hardware: one host with 8 GPUs (batch 256 = 32 per GPU).
Time:     not measured. Estimate at ~1,100 img/s per H100 (ResNet-50, bf16, one view pair, target pass):
          60 epochs = 76.9M images, ~2.5 h on 8 H100s if the host keeps up (2 crops per image; see the
          tfds_source throughput measurement for host cores per GPU).
Setup:    as configs/imagenet.py (BYOL's network: ResNet-50 with the last BatchNorm scale of each block
          initialised to 0, projector 2048-4096-256 and predictor 256-4096-256 without output biases; 224 px,
          BYOL augmentation, bf16) but with loss.symmetric False (view 1 predicts view 2 only), SGD with
          momentum 0.9, batch 256, 60 * 1281167 // 256 = 300,273 steps. The paper does not give lr, wd or
          the EMA rate for this setting; these are SimSiam's SGD recipe (lr 0.05 x batch/256, wd 1e-4, cosine
          decay, no warmup, weight decay on all parameters) and BYOL's tau_base 0.99 with its cosine schedule:
          assumptions.
PREDICTOR (paper Tbl 9, top-1 / top-5 at 60 epochs):
  mlp (default) 64.7 / 85.8    linear 59.4 / 82.3    directpred 64.4 / 85.8
"""
from byol_jax.config import base_config, load_config_module

NUM_TRAIN = 1_281_167
EPOCHS = 60
BATCH = 256


def get_config(arg=None):
  imagenet = load_config_module(__file__, 'imagenet.py')
  c = imagenet.imagenet_model(base_config())
  c.method = 'byol'
  c.train.batch_size = BATCH
  c.train.steps = EPOCHS * NUM_TRAIN // BATCH
  c.train.checkpoint_every = 2000
  c.loss.symmetric = False
  c.optim.name = 'sgd'
  c.optim.lr = 0.05
  c.optim.scale_by_batch = True
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.decay_bias_and_norm = True
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_steps = 0
  c.ema.tau_base = 0.99
  c.ema.schedule = 'cosine'
  c.ema.target_init = 'copy'
  return imagenet.set_predictor(c, arg)
