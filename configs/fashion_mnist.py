"""BYOL on Fashion-MNIST with a small ResNet: the CPU default.

Command:  python -m byol_jax.main --config=configs/fashion_mnist.py --workdir=runs/fmnist
Hardware: 2 CPU cores (also runs unchanged on one GPU).
Time:     see README.md "Configs" (measured), evaluation at step 0 and at the end included.
Result:   see README.md: final linear probe top-1 on the test split, and the same probe at step 0.
DirectPred variant: --config.predictor.kind=directpred
"""
from byol_jax.config import base_config


def get_config():
  c = base_config()
  c.method = 'byol'
  c.train.steps = 1500
  c.train.batch_size = 256
  c.train.checkpoint_every = 250
  c.train.log_every = 25
  c.train.spectra_every = 100
  c.data.name = 'fashion_mnist'
  c.data.image_size = 28
  c.data.augment_preset = 'fashion_mnist'
  c.model.backbone = 'resnet_tiny'
  c.model.width = 32
  c.model.stem = 'cifar'
  c.model.projector_hidden = 512
  c.model.projector_dim = 128
  c.predictor.kind = 'mlp'
  c.predictor.hidden = 512
  c.optim.name = 'sgd'
  c.optim.lr = 0.05
  c.optim.weight_decay = 4e-4
  c.ema.tau_base = 0.99
  c.ema.schedule = 'cosine'
  c.eval.probe_epochs = 20
  c.eval.probe_batch_size = 512
  c.eval.probe_lr = 1e-3
  return c
