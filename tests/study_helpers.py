"""What the study tests share: the tiny study config (configs/study/tiny.py) with overrides."""
import os

from byol_jax import config as config_lib
from byol_jax.config import load_config_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_study(**overrides):
  c = load_config_module(os.path.join(ROOT, 'configs', 'study', 'x.py'), 'tiny.py').get_config()
  with c.unlocked():
    for key, value in overrides.items():
      config_lib.override(c, {key: value})
  return c
