"""Two processes on localhost (CPU collectives), two devices each, train like one process with four."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from byol_jax.logging_utils import read_metrics

# Three training processes (~90 s of CPU), compiled with XLA's optimizations off (xla_unoptimized: the processes
# inherit it): the test compares the two ways of training, each compiled the same way.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('xla_unoptimized')]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ['--config=configs/tiny.py', '--config.train.steps=4', '--config.train.checkpoint_every=2',
        '--config.train.eval_at_start=False', '--config.predictor.kind=directpred']


def _env(devices):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  single = tmp_path / 'single'
  out = subprocess.run([sys.executable, '-m', 'byol_jax.main', *ARGS, f'--workdir={single}'], cwd=ROOT,
                       env=_env(4), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr

  multi = tmp_path / 'multi'
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, '-m', 'byol_jax.main', *ARGS, f'--workdir={multi}',
                             f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}'],
                            cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o

  ref = {r['step']: r['loss'] for r in read_metrics(str(single / 'metrics.jsonl')) if 'loss' in r}
  got = {r['step']: r['loss'] for r in read_metrics(str(multi / 'metrics.jsonl')) if 'loss' in r}
  assert sorted(got) == sorted(ref) == [1, 2, 3, 4]
  np.testing.assert_allclose([got[k] for k in ref], [ref[k] for k in ref], rtol=1e-5)
  # One set of checkpoints, written once, and one log (process 0's).
  assert sorted(os.listdir(multi / 'checkpoints')) == ['2', '4']
  s1 = json.load(open(single / 'summary.json'))
  s2 = json.load(open(multi / 'summary.json'))
  assert abs(s1['final_knn_top1'] - s2['final_knn_top1']) < 1e-6
