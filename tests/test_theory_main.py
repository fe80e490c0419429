"""The command line: outputs, shapes, summary contents, overrides and parameter errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', 'theory', f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.mark.parametrize('name', ['default', 'isotropic', 'weight_decay', 'non_isotropic'])
def test_configs_validate(name):
  from theory import config as config_lib
  out = config_lib.validate(_load(name))
  assert len(out['p0']) == _load(name).num_modes


def test_run_writes_outputs(tmp_path):
  from theory import main
  c = _load('weight_decay')
  c.t_max, c.sim.lr, c.sim.record_every = 10.0, 0.02, 25
  summary = main.run(c, str(tmp_path))
  d = np.load(tmp_path / 'eigenmodes.npz')
  t, m = d['t'], c.num_modes
  assert d['p'].shape == d['s'].shape == d['tau'].shape == (len(t), m)
  assert d['p_sim'].shape[1] == m and d['s_sim'].shape == d['tau_sim'].shape == d['p_sim'].shape
  assert set(p.name for p in tmp_path.glob('*.png')) >= {'eigenmodes.png', 'phase_portrait.png',
                                                         'eigenmodes_vs_sim.png', 'rel_error.png'}
  s = json.loads((tmp_path / 'summary.json').read_text())
  assert s == json.loads(json.dumps(summary))
  assert s['critical_eta'] == pytest.approx(0.25) and s['eta_above_critical']
  assert s['fixed_points_tau1']['p_minus'] is None  # eta = 0.3 > eta_c: no non-collapsed fixed point
  assert s['predicted_collapse_from_p0_on_parabola'] == [True] * m
  assert s['simulation']['agreement']['max_rel_err'] < 0.05
  assert s['invariant_max_abs_err'] < 1e-4


def test_cli_overrides_and_errors(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'theory.main', '--config=configs/theory/default.py', f'--workdir={tmp_path}',
         '--config.p0=(0.05, 0.3, 0.6)', '--config.s0=0.2', '--config.eta=0.01', '--config.t_max=3',
         '--config.sim.enabled=False']
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  s = json.loads((tmp_path / 'summary.json').read_text())
  assert s['p0'] == [0.05, 0.3, 0.6] and s['s0'] == [0.2] * 3 and s['params']['eta'] == 0.01
  assert 'simulation' not in s
  assert 'p_sim' not in np.load(tmp_path / 'eigenmodes.npz')
  bad = cmd[:-1] + ['--config.sigma2=-1']
  r = subprocess.run(bad, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and 'sigma2 (augmentation variance) must be >= 0' in r.stderr


def test_no_tensorflow_in_theory():
  import glob
  import re
  for path in glob.glob(os.path.join(ROOT, 'theory', '*.py')):
    src = open(path).read()
    assert not re.search(r'^\s*(import|from)\s+tensorflow', src, re.M), path
