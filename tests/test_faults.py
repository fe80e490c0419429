"""Damage a run or its data and check the user gets one line and loses nothing: verified checkpoints (flipped,
truncated or missing files, foreign step folders, a full disk), damaged Fashion-MNIST files, Fashion-MNIST through
tfds where Debian's files are absent, a batch larger than the dataset, the automatic CPU device split.

The two tests that train (a run resumed from a damaged checkpoint, a full disk) are `slow`, on 2 of the 8 test
devices, with XLA's optimizations off (they compare runs with a run made the same way); the quick tier damages toy
checkpoints and data files, which compiles nothing."""
import gzip
import json
import os
import shutil
import subprocess
import sys

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import checkpoint, config as config_lib, train
from byol_jax.data import sources
from byol_jax.logging_utils import read_metrics
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 2  # of the 8 (tests/conftest.py), for every run of this file: fewer partitions to compile


def tiny_config(**overrides):
  return config_lib.override(tiny.get_config(), {'train.num_devices': DEVICES, **overrides})


def losses_by_step(workdir):
  return {r['step']: r['loss'] for r in read_metrics(os.path.join(workdir, 'metrics.jsonl')) if 'loss' in r}


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, xla_unoptimized_module):
  """An uninterrupted run of configs/tiny.py (6 steps, checkpoints at 3 and 6)."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  summary = train.run(tiny_config(), workdir)
  return workdir, summary


def data_file(step_dir):
  """The largest file of a checkpoint: the one holding the arrays' compressed chunks."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if f != checkpoint.DIGESTS]
  return max(files, key=os.path.getsize)


def flip_bytes(path, count=64):
  """Inverts `count` bytes in the middle of the file; its size stays the same."""
  data = bytearray(open(path, 'rb').read())
  start = len(data) // 2 - count // 2
  data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
  with open(path, 'r+b') as f:
    f.write(bytes(data))


# ----------------------------------------------------------------------------------------------------
# Verified checkpoints
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow  # resumes reference_run (a training run) from a damaged checkpoint
def test_flipped_bytes_in_the_latest_checkpoint_are_caught_and_the_run_resumes_exactly(reference_run, tmp_path,
                                                                                       capsys):
  ref_dir, ref_summary = reference_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(ref_dir, workdir)
  target = data_file(os.path.join(workdir, 'checkpoints', '6'))
  size = os.path.getsize(target)
  flip_bytes(target)
  assert os.path.getsize(target) == size
  capsys.readouterr()
  summary = train.run(tiny_config(), workdir)
  out = capsys.readouterr().out
  damaged = [line for line in out.splitlines() if 'damaged' in line]
  assert len(damaged) == 1 and os.path.join(workdir, 'checkpoints', '6.corrupt') in damaged[0], out
  assert 'Resuming from step 3' in out
  # Steps 4-6 trained again from checkpoint 3: the same losses, the same final loss, bit for bit.
  assert summary['final_loss'] == ref_summary['final_loss']
  assert losses_by_step(workdir) == losses_by_step(ref_dir)
  assert checkpoint.verify(os.path.join(workdir, 'checkpoints', '6')) is None  # saved again, with digests


@flax.struct.dataclass
class ToyState:
  step: jax.Array
  w: jax.Array


def toy_state(step):
  return ToyState(jnp.int32(step), jnp.asarray(np.random.default_rng(step).standard_normal(4096), jnp.float32))


def toy_checkpoints(directory, steps=(1, 2, 3)):
  ckpt = checkpoint.Checkpointer(directory, keep=len(steps))
  for s in steps:
    ckpt.save(toy_state(s))
  ckpt.close()


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize('damage', [flip_bytes, truncate, os.remove])
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_previous_restored(tmp_path, capsys, damage):
  directory = str(tmp_path / 'checkpoints')
  toy_checkpoints(directory)
  damage(data_file(os.path.join(directory, '3')))
  ckpt = checkpoint.Checkpointer(directory)
  assert ckpt.latest_step() == 2
  out = capsys.readouterr().out.strip()
  assert '\n' not in out and 'is damaged' in out and f'{directory}/3.corrupt' in out, out
  restored = ckpt.restore(toy_state(0))
  assert int(restored.step) == 2 and np.array_equal(restored.w, toy_state(2).w)
  ckpt.save(toy_state(3))  # step 3 is saved again (its damaged copy is kept aside for a look)
  assert sorted(os.listdir(directory)) == ['2', '3', '3.corrupt']  # keep=2: step 1 goes
  assert checkpoint.verify(os.path.join(directory, '3')) is None


def test_no_readable_checkpoint_says_so_in_one_line(tmp_path, capsys):
  directory = str(tmp_path / 'checkpoints')
  toy_checkpoints(directory, steps=(1, 2))
  for step in ('1', '2'):
    flip_bytes(data_file(os.path.join(directory, step)))
  capsys.readouterr()
  assert checkpoint.Checkpointer(directory).latest_step() is None
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3 and lines[-1].startswith(f'no readable checkpoint in {directory}'), lines


def test_empty_or_foreign_step_folders_are_set_aside(tmp_path, capsys):
  directory = str(tmp_path / 'checkpoints')
  toy_checkpoints(directory, steps=(1, 2))
  os.makedirs(os.path.join(directory, '4'))  # empty
  os.makedirs(os.path.join(directory, '3'))
  with open(os.path.join(directory, '3', 'notes.txt'), 'w') as f:
    f.write('not a checkpoint')
  capsys.readouterr()
  ckpt = checkpoint.Checkpointer(directory)
  assert ckpt.latest_step() == 2
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2 and all('holds no complete checkpoint' in line for line in lines), lines
  assert int(ckpt.restore(toy_state(0)).step) == 2
  ckpt.save(toy_state(3))  # the folder's step is free to be saved
  assert checkpoint.verify(os.path.join(directory, '3')) is None
  assert open(os.path.join(directory, '3.incomplete', 'notes.txt')).read() == 'not a checkpoint'


def test_a_checkpoint_without_digests_restores_unverified_with_one_line(tmp_path, capsys):
  directory = str(tmp_path / 'checkpoints')
  toy_checkpoints(directory, steps=(1,))
  os.remove(os.path.join(directory, '1', checkpoint.DIGESTS))  # as saved before checkpoints had digests
  capsys.readouterr()
  ckpt = checkpoint.Checkpointer(directory)
  assert ckpt.latest_step() == 1 and int(ckpt.restore(toy_state(0)).step) == 1
  out = capsys.readouterr().out.strip()
  assert '\n' not in out and 'unverified' in out


def test_digests_are_in_sha256sum_format(tmp_path):
  if not shutil.which('sha256sum'):
    pytest.skip('no sha256sum on this machine')
  directory = str(tmp_path / 'checkpoints')
  toy_checkpoints(directory, steps=(1,))
  subprocess.run(['sha256sum', '--check', '--quiet', checkpoint.DIGESTS], cwd=os.path.join(directory, '1'),
                 check=True)


_FULL_DISK_RUN = r'''
import json, os, sys
from absl import app
from byol_jax import checkpoint, cli, main, train
from configs import tiny
workdir, filler, devices = sys.argv[1], sys.argv[2], sys.argv[3]
real_save = checkpoint.Checkpointer.save

def fill_the_disk():
  with open(filler, 'wb', buffering=0) as f:
    for chunk in (1 << 20, 1 << 12, 1):
      try:
        while True:
          f.write(bytes(chunk))
      except OSError:
        pass

def save_on_a_full_disk(self, state):
  if int(state.step) == 6:
    fill_the_disk()
  return real_save(self, state)

checkpoint.Checkpointer.save = save_on_a_full_disk
sys.argv = ['byol_jax.main', '--config=configs/tiny.py', f'--workdir={workdir}',
            f'--config.train.num_devices={devices}']
try:  # the command line, as a user types it
  app.run(main.main, flags_parser=cli.parse_flags)
  code = 0
except SystemExit as e:
  code = e.code
left = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
os.remove(filler)
checkpoint.Checkpointer.save = real_save
config = tiny.get_config()
config.train.num_devices = int(devices)
summary = train.run(config, workdir)
print('RESULT ' + json.dumps({'code': code, 'left': left, 'final_loss': summary['final_loss']}))
'''


@pytest.mark.slow  # a training run in a process, then its restart
@pytest.mark.usefixtures('xla_unoptimized_module')  # as reference_run: its process too
def test_a_full_disk_during_a_save_gives_one_line_and_a_later_restart_is_exact(reference_run, tmp_path):
  """A real ENOSPC: the run directory on a 64 MiB tmpfs (mounted in a private mount namespace, so no root is
  needed where unprivileged user namespaces are allowed), filled just before the save of step 6."""
  mount = tmp_path / 'small_disk'
  mount.mkdir()
  probe = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
                          f'mount -t tmpfs -o size=64m tmpfs {mount}'], capture_output=True, text=True)
  if probe.returncode:
    pytest.skip(f'cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}')
  workdir, filler = mount / 'run', mount / 'filler'
  proc = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
                         'mount -t tmpfs -o size=64m tmpfs "$0" && exec "$1" -c "$2" "$3" "$4" "$5"',
                         str(mount), sys.executable, _FULL_DISK_RUN, str(workdir), str(filler), str(DEVICES)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  result = json.loads(proc.stdout.split('RESULT ')[-1])
  assert result['code'] == 2 and 'Traceback' not in proc.stderr, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, proc.stderr
  assert errors[0].startswith('error: no space left on the device while saving checkpoint 6')
  assert f'the last intact checkpoint is step 3 ({workdir}/checkpoints/3)' in errors[0]
  assert 'removed the unfinished' in errors[0]
  assert result['left'] == ['3']  # no temporary folder, nothing half-written
  assert result['final_loss'] == reference_run[1]['final_loss']


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST: damaged files, and tfds where Debian's files are absent
# ----------------------------------------------------------------------------------------------------
def write_fashion_mnist(folder, n_train=20, n_test=10):
  """Four small IDX .gz files laid out like Fashion-MNIST's."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    with gzip.open(os.path.join(folder, f'{prefix}-images-idx3-ubyte.gz'), 'wb') as f:
      f.write((2051).to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in images.shape) + images.tobytes())
    with gzip.open(os.path.join(folder, f'{prefix}-labels-idx1-ubyte.gz'), 'wb') as f:
      f.write((2049).to_bytes(4, 'big') + n.to_bytes(4, 'big') + bytes(rng.integers(0, 10, n, dtype=np.uint8)))


def garbage(path):
  with open(path, 'wb') as f:
    f.write(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())


@pytest.mark.parametrize('damage,says', [(truncate, 'truncated'), (garbage, 'damaged'),
                                         (flip_bytes, 'damaged')])
def test_a_damaged_fashion_mnist_file_is_named_with_how_to_get_it_again(tmp_path, damage, says):
  folder = str(tmp_path / 'fmnist')
  write_fashion_mnist(folder)
  assert sources.load_fashion_mnist(folder)['train']['images'].shape == (20, 28, 28, 1)
  bad = os.path.join(folder, 'train-images-idx3-ubyte.gz')
  damage(bad)
  with pytest.raises(FileNotFoundError) as e:  # the entry points print these as one line
    sources.load_fashion_mnist(folder)
  message = str(e.value)
  assert '\n' not in message and message.startswith(bad) and says in message, message
  assert 'download train-images-idx3-ubyte.gz again from https://github.com/zalandoresearch/fashion-mnist' in message


def test_a_damaged_debian_file_says_reinstall(tmp_path, monkeypatch):
  folder = str(tmp_path / 'debian')
  write_fashion_mnist(folder)
  truncate(os.path.join(folder, 't10k-labels-idx1-ubyte.gz'))
  monkeypatch.setattr(sources, 'FASHION_MNIST_PATH', folder)
  with pytest.raises(sources.DatasetFileError, match='apt-get install --reinstall dataset-fashion-mnist'):
    sources.load_dataset('fashion_mnist')


def test_without_debian_files_fashion_mnist_comes_through_tfds(tmp_path, monkeypatch, capsys):
  tfds = pytest.importorskip('tensorflow_datasets')
  from byol_jax.data import tfds_source
  nowhere = str(tmp_path / 'no_debian_package')
  monkeypatch.setattr(sources, 'FASHION_MNIST_PATH', nowhere)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setattr(tfds_source, '_reachable', lambda url: None)  # part of the download, which mock_data replaces
  with tfds.testing.mock_data(num_examples=12):
    data = sources.load_dataset('fashion_mnist')
  for split in ('train', 'test'):
    assert data[split]['images'].shape == (12, 28, 28, 1) and data[split]['images'].dtype == np.uint8
    assert data[split]['labels'].dtype == np.int32 and 0 <= data[split]['labels'].min() <= 9
  said = [line for line in capsys.readouterr().out.splitlines() if line.startswith('Fashion-MNIST')]
  assert len(said) == 1 and nowhere in said[0] and 'tfds' in said[0], said


def test_without_debian_files_or_network_one_line_names_both_places(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  nowhere = str(tmp_path / 'no_debian_package')
  monkeypatch.setattr(sources, 'FASHION_MNIST_PATH', nowhere)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setattr(tfds.builder_cls('fashion_mnist'), 'URL', 'http://127.0.0.1:9/')  # nothing listens there
  with pytest.raises(FileNotFoundError) as e:
    sources.load_dataset('fashion_mnist')
  message = str(e.value)
  assert '\n' not in message and nowhere in message and 'tensorflow-datasets could not fetch it' in message
  assert 'apt-get install dataset-fashion-mnist' in message


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('overrides', [{'train.batch_size': 512},  # tiny's synthetic set holds 256 images
                                       {'data.name': 'fashion_mnist', 'train.batch_size': 60_008}])
def test_a_batch_larger_than_the_dataset_fails_at_validation(tmp_path, overrides):
  with pytest.raises(config_lib.ConfigError, match=r'^train\.batch_size=\d+ is larger than the') as e:
    train.run(tiny_config(**overrides), str(tmp_path))
  assert '\n' not in str(e.value) and '--config.train.batch_size' in str(e.value)
  assert not os.listdir(tmp_path)


def test_the_automatic_cpu_split_divides_the_batch():
  """In a fresh process (the split is set before JAX starts): an odd batch of 129 gets one device, not two."""
  code = ('import json; from byol_jax import config; from byol_jax.models import native; from configs import tiny\n'
          'out = {}\n'
          'for batch in (129, 128):\n'
          '  c = tiny.get_config(); c.train.batch_size = batch\n'
          '  out[batch] = config.set_cpu_devices(c)\n'
          '  config.validate(c, out[batch])\n'
          'print(json.dumps({"cores": native.cpu_cores(), "counts": out}))\n')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['counts']['129'] == 1
