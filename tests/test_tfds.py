"""The tensorflow-datasets input path (byol_jax/data/tfds_source.py), offline.

CIFAR-10 / STL-10 are mocked with `tfds.testing.mock_data`. ImageNet is a real tfds build of a tiny fake
ILSVRC2012 (three class tars of random JPEGs and a validation tar, prepared by the real imagenet2012
builder from `<data_dir>/downloads/manual/`, in 3 shards), so the pipeline's file reading, per-process
slicing, tfds ids and resume are exercised on real TFRecords.
Skipped when tensorflow-datasets is not installed (CI installs it).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from byol_jax.data import augment, sources, tfds_source  # noqa: E402
import fake_imagenet  # noqa: E402  (tests/fake_imagenet.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  """A prepared tfds imagenet2012 with 30 train images (3 classes) and 10 validation images."""
  return fake_imagenet.prepare(tmp_path_factory.mktemp('tfds'))


def _pipeline(data_dir, **kw):
  args = dict(split='train', global_batch_size=8, image_size=24, seed=3, data_dir=data_dir, shuffle_buffer=16,
              prefetch=2)
  args.update(kw)
  return tfds_source.ImageNetPipeline(**args)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------
# In memory: CIFAR-10, STL-10 (mocked)
# ----------------------------------------------------------------------------------------------------
def test_cifar10_in_memory(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    data, info = tfds_source.load_in_memory('cifar10', str(tmp_path), 32)
  for split in ('train', 'train_eval', 'test'):
    images, labels = data[split]
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10
  assert info['num_classes'] == 10 and info['num_train'] == 12 and info['image_shape'] == (32, 32, 3)
  assert info['mean'] == (0.4914, 0.4822, 0.4465) and info['std'] == (0.2023, 0.1994, 0.2010)


def test_stl10_train_is_train_plus_unlabelled(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    data, info = tfds_source.load_in_memory('stl10', str(tmp_path), 96)
  images, labels = data['train']
  assert images.shape == (12, 96, 96, 3) and images.dtype == np.uint8
  assert np.all(labels[:6] >= 0) and np.all(labels[6:] == -1)  # 'train' then 'unlabelled'
  assert data['train_eval'][0].shape == (6, 96, 96, 3) and np.all(data['train_eval'][1] >= 0)
  assert data['test'][0].shape == (6, 96, 96, 3)
  assert info['num_train'] == 12 and info['mean'] == (0.0, 0.0, 0.0) and info['std'] == (1.0, 1.0, 1.0)
  batch = sources.InMemorySource(images, labels, global_batch_size=4, seed=0).batch(2)  # the in-memory path
  assert batch['image'].shape == (4, 96, 96, 3)


def test_missing_dataset_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    tfds_source.load_in_memory('cifar10', str(tmp_path / 'empty'))
  message = str(e.value)
  assert '\n' not in message
  assert 'tfds build cifar10' in message and 'TFDS_DATA_DIR' in message and 'tfds_data_dir' in message
  with pytest.raises(FileNotFoundError) as e:
    tfds_source.ImageNetPipeline(data_dir=str(tmp_path / 'empty'))
  message = str(e.value)
  assert '\n' not in message and 'ILSVRC2012_img_train.tar' in message
  assert os.path.join(str(tmp_path / 'empty'), 'downloads', 'manual') in message


def test_import_does_not_import_tensorflow():
  code = 'import sys, byol_jax.data.tfds_source; assert "tensorflow" not in sys.modules, "tf imported"'
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=120)


# ----------------------------------------------------------------------------------------------------
# ImageNet streaming
# ----------------------------------------------------------------------------------------------------
def test_imagenet_batches(imagenet_dir):
  p = _pipeline(imagenet_dir)
  assert p.num_examples == 30 and p.steps_per_epoch == 3
  b = p.batch(0)
  assert set(b) == {'view1_u8', 'view2_u8', 'label', 'index'}
  assert b['view1_u8'].shape == b['view2_u8'].shape == (8, 24, 24, 3)
  assert b['view1_u8'].dtype == np.uint8 and b['label'].dtype == np.int32 and b['index'].dtype == np.int32
  assert not np.array_equal(b['view1_u8'], b['view2_u8'])  # two independent crops
  epoch = np.concatenate([p.batch(s)['index'] for s in range(3)])
  assert len(set(epoch.tolist())) == 24 and epoch.min() >= 0 and epoch.max() < 30  # no repeats in an epoch
  # Labels agree with the (ordered) eval pipeline's label of the same global index.
  ev = tfds_source.ImageNetEvalPipeline('train', batch_size=30, image_size=24, data_dir=imagenet_dir)
  ref = next(ev.batches())
  label_of = dict(zip(ref['index'].tolist(), ref['label'].tolist()))
  assert sorted(label_of) == list(range(30)) and sorted(set(label_of.values())) == [0, 1, 2]
  assert all(label_of[i] == l for i, l in zip(b['index'].tolist(), b['label'].tolist()))


def test_imagenet_process_sharding(imagenet_dir):
  single = _pipeline(imagenet_dir)
  procs = [_pipeline(imagenet_dir, process_index=i, process_count=2) for i in range(2)]
  assert [(p.start, p.end) for p in procs] == [(0, 15), (15, 30)]
  assert procs[0].steps_per_epoch == procs[1].steps_per_epoch == 3  # hosts stay in step
  seen = []
  for i, p in enumerate(procs):
    batches = _take(p.batch_iterator(0), 3)
    assert all(b['view1_u8'].shape == (4, 24, 24, 3) for b in batches)  # local batch
    idx = np.concatenate([b['index'] for b in batches])
    assert np.all((idx >= p.start) & (idx < p.end))  # each host reads only its slice
    assert len(set(idx.tolist())) == 12
    seen.append((idx, np.concatenate([b['view1_u8'] for b in batches])))
  assert not set(seen[0][0].tolist()) & set(seen[1][0].tolist())  # disjoint
  # A crop depends on (seed, epoch, global index, view) only: the same example gets the same crop with
  # one process or two.
  one = _take(single.batch_iterator(0), 3)
  one_idx = np.concatenate([b['index'] for b in one])
  one_v1 = np.concatenate([b['view1_u8'] for b in one])
  common = 0
  for idx, v1 in seen:
    for k, i in enumerate(idx.tolist()):
      j = np.flatnonzero(one_idx == i)
      if j.size:
        common += 1
        np.testing.assert_array_equal(v1[k], one_v1[j[0]])
  assert common > 0


def test_imagenet_deterministic_and_resumable(imagenet_dir):
  p = _pipeline(imagenet_dir)
  full = _take(p.batch_iterator(0), 7)  # crosses two epoch boundaries (3 steps per epoch)
  again = _take(_pipeline(imagenet_dir).batch_iterator(0), 7)
  resumed = _take(_pipeline(imagenet_dir).batch_iterator(2), 5)
  for a, b in zip(full, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(full[2:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(full[0]['index'], full[3]['index'])  # each epoch has its own order
  other_seed = _pipeline(imagenet_dir, seed=4).batch(0)
  assert not np.array_equal(other_seed['view1_u8'], full[0]['view1_u8'])


def test_imagenet_eval_pipeline(imagenet_dir):
  procs = [tfds_source.ImageNetEvalPipeline('validation', batch_size=4, image_size=16, process_index=i,
                                            process_count=2, data_dir=imagenet_dir) for i in range(2)]
  indices = []
  for p in procs:
    batches = list(p.batches())
    assert len(batches) == p.num_batches == 3  # 5 examples per process, local batch 2
    for b in batches:
      assert b['image'].shape == (2, 16, 16, 3) and b['image'].dtype == np.uint8
      assert np.array_equal(b['mask'], b['index'] >= 0)
    idx = np.concatenate([b['index'] for b in batches])
    indices.append(idx[idx >= 0])
    assert np.all(np.diff(indices[-1]) > 0)  # in order
  assert sorted(np.concatenate(indices).tolist()) == list(range(fake_imagenet.NUM_VAL))
  sub = tfds_source.ImageNetEvalPipeline('train', batch_size=4, image_size=16, data_dir=imagenet_dir, max_examples=6)
  idx = np.concatenate([b['index'] for b in sub.batches()])
  assert idx.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]


def test_crop_window_distribution():
  import tensorflow as tf
  boxes = np.stack([tfds_source.random_resized_crop_window(tf.constant([375, 500]), tf.constant([7, s], tf.int64))
                    .numpy() for s in range(200)])
  y0, x0, h, w = boxes.T
  assert np.all((y0 >= 0) & (x0 >= 0) & (y0 + h <= 375) & (x0 + w <= 500) & (h > 0) & (w > 0))
  area = h * w / (375 * 500)
  assert area.min() >= 0.07 and area.max() <= 1.0 and area.mean() > 0.3
  ratio = w / h
  assert np.all((ratio > 0.74) & (ratio < 1.35))
  window = tfds_source.center_crop_window(tf.constant([256, 300])).numpy()
  assert window.tolist() == [16, 38, 224, 224]


# ----------------------------------------------------------------------------------------------------
# The device half: augment.two_views_from_crops
# ----------------------------------------------------------------------------------------------------
@pytest.mark.usefixtures('xla_unoptimized')
def test_two_views_from_crops_matches_augment_view():
  import functools

  import jax
  cfg = augment.augment_config('byol')
  rng = np.random.default_rng(0)
  v1 = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
  v2 = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
  idx = np.array([5, 9, 1000], np.int32)
  fn = jax.jit(functools.partial(augment.two_views_from_crops, seed=1, cfg=cfg, out_size=16))
  a1, a2 = fn(v1, v2, idx, 7)
  assert a1.shape == a2.shape == (3, 16, 16, 3) and a1.dtype == np.float32
  # With the same image as both crops, it is exactly two_views of that image with the crop disabled.
  nocrop = augment.augment_config('byol')
  nocrop.random_crop = False
  b1, b2 = fn(v1, v1, idx, 7)
  r1, r2 = jax.jit(functools.partial(augment.two_views, seed=1, cfg=nocrop, out_size=16))(v1, idx, 7)
  np.testing.assert_allclose(np.asarray(b1), np.asarray(r1), atol=1e-5)
  np.testing.assert_allclose(np.asarray(b2), np.asarray(r2), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(b1), np.asarray(a1))  # view 1 does not depend on view 2's crop


# ----------------------------------------------------------------------------------------------------
# The user's command on ImageNet: configs/imagenet.py with a tiny network, end to end
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a training run with evaluations
@pytest.mark.usefixtures('xla_unoptimized')
def test_imagenet_config_runs_end_to_end_on_a_fake_imagenet(imagenet_dir, tmp_path):
  import importlib.util
  from byol_jax import train
  from byol_jax.logging_utils import read_metrics
  spec = importlib.util.spec_from_file_location('imagenet_config', os.path.join(ROOT, 'configs', 'imagenet.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config('directpred')
  c.data.tfds_data_dir = imagenet_dir
  c.data.image_size = 24
  c.model.backbone, c.model.width = 'resnet_tiny', 4
  c.model.projector_hidden, c.model.projector_dim, c.predictor.hidden = 32, 16, 32
  c.train.batch_size, c.train.steps, c.train.checkpoint_every, c.train.log_every = 8, 3, 3, 1
  c.optim.warmup_steps = 1
  c.train.progress_bar, c.train.num_devices = False, 2  # 2 of the tests' 8 devices: the data path is under test
  c.eval.num_train, c.eval.batch_size, c.eval.knn_k, c.eval.probe_epochs = 24, 8, 5, 2
  summary = train.run(c, str(tmp_path))
  records = read_metrics(str(tmp_path / 'metrics.jsonl'))
  assert [r['step'] for r in records if 'loss' in r] == [1, 2, 3]
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  assert 0.0 <= summary['final_linear_probe_top1'] <= 1.0
  assert (tmp_path / 'checkpoints' / '3').is_dir()
