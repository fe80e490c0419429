"""Bad command lines end in one line naming the problem and the fix, exit status 2 (byol_jax/cli.py)."""
import os
import subprocess
import sys

import pytest

from byol_jax import cli, config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = '--config=configs/tiny.py'
THEORY = '--config=configs/theory/default.py'


def _run(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args, '--workdir=/nonexistent/never_written'], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('module, args, expected', [
    # No --config: ml_collections parses the default config (and its overrides) while main.py is imported.
    ('byol_jax.main', ['--config.no_such_key=1'], ["unknown config key 'no_such_key'", 'top-level keys: data,']),
    ('byol_jax.main', [TINY, '--config.train.stepz=1'], ["unknown config key 'train.stepz'",
                                                         "did you mean 'train.steps'?"]),
    ('byol_jax.main', [TINY, '--config.train.steps=abc'], ['train.steps takes an int', "'abc'"]),
    ('byol_jax.main', ['--config=configs/missing.py'], ["config file 'configs/missing.py' not found"]),
    ('byol_jax.main', [TINY, '--config.eval.probe_solver=sgd'], ["eval.probe_solver='sgd'", "'lbfgs'"]),  # validate()
    ('byol_jax.bench', ['--config.train.stepz=1'], ["unknown config key 'train.stepz'", "'train.steps'"]),
    ('byol_jax.bench', [TINY, '--config.optim.lr=fast'], ['optim.lr takes a float', "'fast'"]),
    ('byol_jax.embed', ['--config.train.steps=1'], ["Unknown command line flag 'config.train.steps'"]),
    ('theory.main', [THEORY, '--config.sim.lrr=1'], ["unknown config key 'sim.lrr'", "did you mean 'sim.lr'?"]),
    ('theory.main', [THEORY, '--config.eta=abc'], ['eta takes a float']),
    ('theory.main', [THEORY, '--config.eta=-1'], ['eta (weight decay) must be >= 0']),
])
def test_bad_command_line_is_one_line(module, args, expected):
  proc = _run(module, *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  for text in expected:
    assert text in lines[0]


def test_good_overrides_still_parse():
  proc = subprocess.run([sys.executable, '-m', 'byol_jax.main', TINY, '--config.train.steps=3',
                         '--noconfig.train.progress_bar', '--config.predictor.weight_decay=0.1',
                         "--config.data.augment={'blur_prob': 0.5}", '--only_check_args'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_unknown_key_messages():
  c = config_lib.base_config()
  assert cli.unknown_key_message(c, 'train.steps') is None
  assert cli.unknown_key_message(c, 'predictor.weight_decay') is None  # a placeholder (None) is a key
  assert "did you mean 'train.steps'?" in cli.unknown_key_message(c, 'steps')  # the same leaf elsewhere
  assert "'optim.weight_decay' or 'predictor.weight_decay'" in cli.unknown_key_message(c, 'weight_decay')
  assert "did you mean 'train.steps'?" in cli.unknown_key_message(c, 'trian.steps')
  assert 'not a group of keys' in cli.unknown_key_message(c, 'train.steps.x')
  assert "set it whole" in cli.unknown_key_message(c, 'data.augment.blur_prob')  # filled by finalize()


def test_argv_reading():
  argv = ['prog', '--config', 'a.py', '--config.train.steps=3', '--noconfig.train.progress_bar', '--config=b.py:x',
          '--', '--config.after.dashes=1']
  assert cli.config_file_arg(argv) == 'b.py:x'
  assert cli.override_paths(argv) == ['train.steps', 'train.progress_bar']
