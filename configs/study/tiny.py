"""A seconds-long study on synthetic data (configs/tiny.py as base): a plumbing check; the tests use it.

Command:  python -m byol_jax.study --config=configs/study/tiny.py --workdir=/tmp/study_tiny
Time: about a minute on 2 CPU cores (4 runs, most of it compilation). Result: meaningless.
"""
import ml_collections

from byol_jax.config import load_config_module


def get_config():
  c = ml_collections.ConfigDict()
  c.name = 'tiny'
  c.base = load_config_module(__file__, '../tiny.py').get_config()
  c.base.train.num_devices = 1
  c.base.train.steps = 4
  c.base.train.checkpoint_every = 2
  c.rows = ml_collections.ConfigDict({'mlp': 'mlp', 'none': 'none'})
  c.seeds = 2
  c.paper = ml_collections.ConfigDict({'mlp': {'value': 78.53, 'table': 'Tbl 3 2-layer, EMA, bias regular'}})
  c.reference = ''  # a row to compare the others with, seed by seed (the tests set it)
  c.pairs = ''
  return c
