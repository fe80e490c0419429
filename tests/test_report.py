"""byol_jax.report: one HTML page whose PNGs exist, for a run with training records and for an imported one, and
the one-line errors. configs/tiny.py's network on synthetic images; the t-SNE map on 60 points: seconds."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from byol_jax import config as config_lib, report, weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_run(workdir: str) -> None:
  """configs/tiny.py's run directory with random weights and BatchNorm statistics at step 5 (none trained), on 2 of
  the 8 test devices (an execution setting: fewer partitions to compile)."""
  import jax
  config = config_lib.finalize(config_lib.load_config_module(os.path.join(ROOT, 'configs', 'x'), 'tiny.py')
                               .get_config())
  config.train.num_devices = 2
  _, shapes = weights.abstract_state(config)
  rng = np.random.default_rng(0)
  noise = lambda tree, low: jax.tree.map(lambda s: rng.uniform(low, 1.0, s.shape).astype(s.dtype), tree)
  state = weights.completed_state(
      config, shapes, params=noise(shapes.params, -1.0), batch_stats=noise(shapes.batch_stats, 0.1),
      target_params=noise(shapes.target_params, -1.0), target_batch_stats=noise(shapes.target_batch_stats, 0.1),
      step=5)
  weights.write_run(workdir, config, state, {'format': 'torchvision', 'src': 'r.safetensors', 'sha256': 'ab' * 32})


@pytest.mark.usefixtures('xla_unoptimized')  # the page and its pictures are under test, not the programs' speed
def test_report_writes_one_page_with_its_pictures(tmp_path):
  pytest.importorskip('sklearn', reason='scikit-learn (requirements.txt) is not installed')
  workdir = str(tmp_path / 'run')
  _random_run(workdir)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for step in range(1, 6):
      f.write(json.dumps({'step': step, 'loss': 1.0 / step}) + '\n')
    f.write(json.dumps({'step': 5, 'linear_probe_top1': 0.5, 'knn_top1': 0.4, 'z_std_times_sqrt_d': 0.7,
                        'z_effective_rank': 9.0, 'feature_effective_rank': 3.0}) + '\n')
  path = report.write_report(workdir, points=60, queries=3, max_examples=128)
  assert path == os.path.join(workdir, 'report', 'index.html')
  page = open(path).read()
  images = re.findall(r'<img src="([^"]+)"', page)
  assert images == ['spectrum.png', 'map.png', 'neighbours.png', 'curves.png']
  for name in images:
    with open(os.path.join(workdir, 'report', name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', name
  assert 'random network' in page and 'step 5: linear probe 0.5000' in page and 'torchvision from r.safetensors' in page
  numbers = re.findall(r'<tr><td>effective rank of z</td><td>([\d.]+)</td><td>([\d.]+)</td>', page)
  assert numbers and all(0 < float(v) <= 16 for v in numbers[0])  # d = 16 in configs/tiny.py

  # Without training records (an imported run): the page says so, and has no curves.
  os.remove(os.path.join(workdir, 'metrics.jsonl'))
  page = open(report.write_report(workdir, tmp_path / 'again', points=60, queries=2, max_examples=128)).read()
  assert 'curves.png' not in page and 'No training records' in page


def test_report_errors_are_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'byol_jax.report', f'--workdir={tmp_path}/nothing'], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip().count('\n') == 0, proc.stderr
  assert 'no config.json' in proc.stderr and not os.path.exists(tmp_path / 'nothing')
