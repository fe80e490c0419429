"""The benchmark runs on CPU and prints, last, one JSON object with images/s, ms/step and MFU."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_variant_tokens():
  # In a subprocess: importing byol_jax.bench defines absl's global --config flag, which theory.main
  # (imported by other tests in this process) defines too.
  code = """
from byol_jax import bench
assert bench.parse_variant('no_augment+linear') == {'data.augment_preset': 'none', 'predictor.kind': 'linear'}
assert bench.parse_variant('full+directpred+newton_schulz') == {
    'predictor.kind': 'directpred', 'predictor.solver': 'newton_schulz'}
try:
  bench.parse_variant('no_augment+linaer')
except ValueError as e:
  assert 'unknown benchmark variant token' in str(e)
else:
  raise AssertionError('no error for a misspelt token')
"""
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _bench(*args):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  return subprocess.run([sys.executable, '-m', 'byol_jax.bench', '--config=configs/tiny.py', '--steps=2',
                         '--repeats=1', '--warmup=1', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.slow  # compiles two training steps in a subprocess
@pytest.mark.usefixtures('xla_unoptimized')  # what is printed is under test, not the speed
def test_bench_prints_throughput_and_mfu_last():
  proc = _bench('--variants=full,no_augment+directpred+newton_schulz', '--peak_tflops=1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in proc.stdout.strip().splitlines()]
  first, second, relative, last = lines
  assert last == first and first['variant'] == 'full' and first['augment'] is True
  assert second['predictor'] == 'directpred' and second['solver'] == 'newton_schulz' and second['augment'] is False
  assert first['num_devices'] == 2  # the mesh spans every device
  for r in (first, second):
    assert r['images_per_sec'] > 0 and r['ms_per_step'] > 0 and r['gflop_per_image'] > 0
    assert 0 < r['mfu'] < 1  # against the given 1 TFLOP/s peak
  assert relative['relative_ms_per_step']['full'] == 1.0


def test_bench_rejects_an_unknown_variant_before_compiling():
  proc = _bench('--variants=full,fast')
  assert proc.returncode != 0
  assert "unknown benchmark variant token 'fast'" in proc.stderr


@pytest.mark.slow  # compiles the augmentation five times in a subprocess
@pytest.mark.usefixtures('xla_unoptimized')
def test_augment_ops_breakdown():
  proc = _bench('--variants=', '--augment_ops')  # the augmentation only
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r['augment']: r for r in map(json.loads, proc.stdout.strip().splitlines())}
  # configs/tiny.py uses the 'cifar10' preset: crop, flip, jitter and grayscale are on; blur, solarize off.
  assert set(rows) == {'all', '-crop', '-flip', '-jitter', '-grayscale'}
  assert all(r['ms_per_batch'] > 0 and r['num_devices'] == 2 for r in rows.values())
  for name, r in rows.items():
    if name != 'all':
      assert r['op_ms'] == round(rows['all']['ms_per_batch'] - r['ms_per_batch'], 3)


def test_bench_needs_something_to_time():
  proc = _bench('--variants=')
  assert proc.returncode != 0 and 'nothing to time' in proc.stderr
