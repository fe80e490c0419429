"""A seconds-long smoke run on synthetic data (used by the tests; runs on any machine).

Command: python -m byol_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
Time: about 30 s on 2 CPU cores, most of it compilation. Result: meaningless (a plumbing check).
"""
from byol_jax.config import base_config


def get_config():
  c = base_config()
  c.train.steps = 6
  c.train.batch_size = 16
  c.train.checkpoint_every = 3
  c.train.log_every = 1
  c.train.spectra_every = 2
  c.train.progress_bar = False
  c.data.name = 'synthetic'
  c.data.image_size = 16
  c.data.num_train = 256
  c.data.num_test = 128
  c.data.augment_preset = 'cifar10'
  c.model.backbone = 'resnet_tiny'
  c.model.width = 4
  c.model.projector_hidden = 32
  c.model.projector_dim = 16
  c.predictor.hidden = 32
  c.eval.knn_k = 10
  c.eval.batch_size = 128
  return c
