"""data.name='image_folder': a folder of one's own PNG / JPEG images (byol_jax/data/sources.py load_image_folder),
on small folders the tests write with PIL; the error cases; a 3-step training run on one."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from byol_jax import config as config_lib, train
from byol_jax.config import load_config_module
from byol_jax.data import sources
from byol_jax.study import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pattern(kind: str, size: tuple[int, int], seed: int) -> np.ndarray:
  """A bright disc or square on a dark noisy background, RGB uint8 [H, W, 3]."""
  rng = np.random.default_rng(seed)
  w, h = size
  y, x = np.mgrid[:h, :w] / max(h, w)
  cy, cx = rng.uniform(0.35, 0.65, 2)
  shape = (np.hypot(y - cy, x - cx) < 0.25) if kind == 'circle' else (np.maximum(abs(y - cy), abs(x - cx)) < 0.2)
  img = 40 + 180 * shape[..., None] * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 10, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(root, classes=('circle', 'square'), per_class=20, gray_every=5, sizes=((24, 24), (40, 30))):
  """Class subfolders of PNG and JPEG images of two sizes; every gray_every-th image grayscale."""
  os.makedirs(root, exist_ok=True)
  for c in classes:
    folder = os.path.join(root, c) if c else root
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
      img = Image.fromarray(_pattern(c or 'circle', sizes[i % len(sizes)], sum(map(ord, c)) * 1000 + i))
      if gray_every and i % gray_every == 0:
        img = img.convert('L')
      img.save(os.path.join(folder, f'{i:03d}.{"png" if i % 2 else "jpg"}'))
  return str(root)


# ------------------------------------------------------------------------------------------------ loading
def test_class_folders_give_labels_and_a_seeded_stratified_split(tmp_path):
  path = write_folder(tmp_path / 'shapes')
  open(os.path.join(path, 'circle', 'notes.txt'), 'w').write('not an image: ignored')
  data, info = sources.load_image_folder(path, 16)
  assert info['class_names'] == ['circle', 'square'] and info['num_classes'] == 2 and info['labelled']
  assert (info['num_train'], info['num_test']) == (36, 4)  # 10% of each class of 20
  assert data['train']['images'].shape == (36, 16, 16, 3) and data['train']['images'].dtype == np.uint8
  assert sorted(np.bincount(data['test']['labels']).tolist()) == [2, 2]
  assert info['image_shape'] == (16, 16, 3)
  # Mean and std are the train split's pixels'.
  pixels = data['train']['images'].reshape(-1, 3) / 255.0
  np.testing.assert_allclose(info['mean'], pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(info['std'], pixels.std(0), rtol=1e-6)
  # What was reconciled is said: two sizes resized, the grayscale images made RGB (4 of 20 per class).
  assert 'sizes 24-40 x 24-30 px resized to 16x16' in info['report'] and '8 grayscale images made RGB' in info['report']
  # The same split every time (not the run's seed): runs of a study share one test set.
  again, _ = sources.load_image_folder(path, 16)
  np.testing.assert_array_equal(again['test']['images'], data['test']['images'])
  # A grayscale image made RGB is its gray value in every channel.
  gray = np.asarray(Image.open(os.path.join(path, 'circle', '000.jpg')))
  assert gray.ndim == 2


def test_train_and_test_subfolders_give_the_split(tmp_path):
  write_folder(tmp_path / 'f' / 'train', per_class=6, gray_every=0)
  write_folder(tmp_path / 'f' / 'test', classes=('square',), per_class=3, gray_every=0)
  data, info = sources.load_image_folder(str(tmp_path / 'f'), 8)
  assert (info['num_train'], info['num_test']) == (12, 3)
  assert data['test']['labels'].tolist() == [1, 1, 1]  # 'square' is class 1 of train's classes
  assert 'train/ and test/ subfolders' in info['report']


def test_grayscale_only_folder_stays_one_channel_and_16bit_is_scaled(tmp_path):
  folder = tmp_path / 'gray'
  write_folder(folder, per_class=4, gray_every=1, sizes=((16, 16),))
  deep = np.full((16, 16), 65535 // 2, np.uint16)  # mid-gray at 16 bits
  Image.fromarray(deep).save(folder / 'circle' / 'deep.png')
  data, info = sources.load_image_folder(str(folder), 16)
  assert info['image_shape'] == (16, 16, 1) and 'resized' not in info['report']
  img, _ = sources.read_image(str(folder / 'circle' / 'deep.png'), 16)
  assert img.shape == (16, 16, 1) and abs(int(img[0, 0, 0]) - 127) <= 1


def test_images_without_class_folders_are_unlabelled(tmp_path):
  path = write_folder(tmp_path / 'flat', classes=('',), per_class=12)
  data, info = sources.load_image_folder(path, 8)
  assert not info['labelled'] and info['num_classes'] == 1
  assert (data['train']['labels'] == -1).all() and (data['test']['labels'] == -1).all()
  assert len(data['test']['labels']) == 1 and 'the linear probe and kNN are skipped' in info['report']


# ------------------------------------------------------------------------------------------------ bad input
def _bad_folders(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  empty_class = tmp_path / 'empty_class'
  write_folder(empty_class, per_class=3)
  (empty_class / 'dog').mkdir()
  broken = tmp_path / 'broken'
  write_folder(broken, per_class=3)
  (broken / 'square' / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  mixed = tmp_path / 'mixed'
  write_folder(mixed, per_class=3)
  Image.fromarray(_pattern('circle', (8, 8), 0)).save(mixed / 'loose.png')
  half = tmp_path / 'half'
  write_folder(half / 'train', per_class=3)
  unknown = tmp_path / 'unknown'
  write_folder(unknown / 'train', per_class=3)
  write_folder(unknown / 'test', classes=('triangle',), per_class=2)
  single = tmp_path / 'single'
  write_folder(single, per_class=1)
  return [
      (tmp_path / 'nowhere', 'nowhere does not exist'),
      (empty, 'empty holds no image (.png/.jpg/.jpeg)'),
      (empty_class, f'class folder {empty_class / "dog"} holds no image'),
      (broken, f'{broken / "square" / "bad.png"}: cannot read it as an image'),
      (mixed, 'holds both images (loose.png, ...) and subfolders (circle, square)'),
      (half, 'has train/ but no test/'),
      (unknown, f'{unknown / "test" / "triangle"}: class \'triangle\' is not in'),
      (single, 'single: no class has 2 images or more, too few for a test split'),
  ]


def test_bad_folders_fail_with_one_line_naming_the_file_or_folder(tmp_path):
  for path, message in _bad_folders(tmp_path):
    with pytest.raises(sources.ImageFolderError) as e:
      sources.load_image_folder(str(path), 8)
    assert message in str(e.value) and '\n' not in str(e.value), (path, str(e.value))


def test_a_folder_too_large_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
  path = write_folder(tmp_path / 'f', per_class=3)
  monkeypatch.setattr(sources, '_memory_available', lambda: 10_000)
  with pytest.raises(sources.ImageFolderError, match=r'6 images at 32x32x3 need .* GiB in memory.*ImageFolder'):
    sources.load_image_folder(path, 32)


def test_config_needs_a_path_and_the_path_is_part_of_run_identity():
  c = load_config_module(os.path.join(ROOT, 'configs', 'x.py'), 'tiny.py').get_config()
  c.data.name = 'image_folder'
  with pytest.raises(config_lib.ConfigError, match='data.name=image_folder needs --config.data.path'):
    config_lib.validate(config_lib.finalize(c))
  c.data.path = '/data/a'
  held = records.config_json(c)
  other = json.loads(json.dumps(held))
  other['data']['path'] = '/data/b'
  assert records.run_identity(held) != records.run_identity(other)  # another folder is another dataset
  held['data']['name'] = other['data']['name'] = 'fashion_mnist'
  assert records.run_identity(held) == records.run_identity(other)  # Fashion-MNIST's path: where it lies


def test_cli_error_is_one_line(tmp_path):
  (tmp_path / 'empty').mkdir()
  out = subprocess.run([sys.executable, '-m', 'byol_jax.main', '--config=configs/tiny.py',
                        '--config.data.name=image_folder', f'--config.data.path={tmp_path / "empty"}',
                        f'--workdir={tmp_path / "run"}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stdout + out.stderr
  lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and f'{tmp_path / "empty"} holds no image' in lines[0], out.stderr


# ------------------------------------------------------------------------------------------------ training
def _tiny(path, **changes):
  c = load_config_module(os.path.join(ROOT, 'configs', 'x.py'), 'tiny.py').get_config()
  c.data.name, c.data.path, c.data.image_size = 'image_folder', path, 16
  c.train.steps, c.train.checkpoint_every, c.train.eval_at_start = 3, 3, False  # one evaluation: the end's
  c.train.num_devices = 2  # of the 8 the tests make: the data path is under test here, not the device count
  for k, v in changes.items():
    config_lib.override(c, {k: v})
  return c


@pytest.mark.slow  # a training run with evaluations
@pytest.mark.usefixtures('xla_unoptimized')
def test_three_steps_on_a_labelled_folder(tmp_path, capsys):
  path = write_folder(tmp_path / 'shapes')
  summary = train.run(_tiny(path), str(tmp_path / 'run'))
  out = capsys.readouterr().out
  assert f'data: {path}: 36 train / 4 test images, 3 channels, 2 classes (circle, square)' in out
  assert summary['steps'] == 3 and np.isfinite(summary['final_loss'])
  assert 0.0 <= summary['final_linear_probe_top1'] <= 1.0 and 0.0 <= summary['final_knn_top1'] <= 1.0
  held = json.load(open(tmp_path / 'run' / 'config.json'))
  assert held['data']['name'] == 'image_folder' and held['data']['path'] == path


@pytest.mark.slow  # a training run in a subprocess
@pytest.mark.usefixtures('xla_unoptimized')
def test_unlabelled_folder_trains_and_skips_the_probes(tmp_path):
  path = write_folder(tmp_path / 'flat', classes=('',), per_class=20)
  out = subprocess.run([sys.executable, '-m', 'byol_jax.main', '--config=configs/tiny.py',
                        '--config.data.name=image_folder', f'--config.data.path={path}', '--config.data.image_size=16',
                        '--config.train.steps=2', '--config.train.eval_at_start=False', '--config.train.num_devices=2',
                        f'--workdir={tmp_path / "run"}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'unlabelled (no class subfolders): the linear probe and kNN are skipped' in out.stdout
  assert 'linear probe top-1 skipped (unlabelled data)' in out.stdout, out.stdout
  summary = json.load(open(tmp_path / 'run' / 'summary.json'))
  assert summary['final_linear_probe_top1'] is None and summary['final_z_effective_rank'] > 0
