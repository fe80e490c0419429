"""train.cpu_devices: the CPU split into JAX devices before JAX starts (config.set_cpu_devices)."""
import os
import subprocess
import sys

import pytest

from byol_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = """
import jax
from byol_jax import config as config_lib
c = config_lib.base_config()
c.train.cpu_devices = {requested}
c.train.batch_size = {batch}
print(config_lib.set_cpu_devices(c), len(jax.devices('cpu')))
"""


def _devices(requested, xla_flags=None, batch=128):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags:
    env['XLA_FLAGS'] = xla_flags
  out = subprocess.run([sys.executable, '-c', PROGRAM.format(requested=requested, batch=batch)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=True).stdout.split()
  return out[0], int(out[1])


def test_cpu_devices_auto_splits_the_cores_for_large_batches_and_an_explicit_count_or_xla_flags_win():
  cores = len(os.sched_getaffinity(0))
  assert _devices(0) == (str(min(2, cores)), min(2, cores))  # batch 128: >= 64 images per device
  assert _devices(0, batch=32) == ('1', 1)  # a small batch: one device on every core (measured faster)
  assert _devices(3) == ('3', 3)
  assert _devices(0, '--xla_force_host_platform_device_count=5') == ('None', 5)  # the user's flag is kept


def test_negative_cpu_devices_is_a_config_error():
  c = config_lib.base_config()
  c.train.cpu_devices = -1
  with pytest.raises(config_lib.ConfigError, match='train.cpu_devices'):
    config_lib.validate(c)
