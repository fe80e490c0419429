"""Tests of byol_jax.data: IDX reader, synthetic data, augmentation, deterministic batch source.

Every distinct (config, shape) of `two_views` costs seconds of XLA compile time on CPU, so the
tests share a few jitted functions and small images.
"""
import functools
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from byol_jax.data import augment, sources

FMNIST = sources.FASHION_MNIST_PATH


@functools.lru_cache(maxsize=None)
def _two_views_fn(cfg_items: tuple, out_size: int):
  cfg = ml_collections.ConfigDict(dict(cfg_items))
  return jax.jit(functools.partial(augment.two_views, cfg=cfg, out_size=out_size))


def two_views(images, indices, step, seed, preset='byol', out_size=16, **overrides):
  items = dict(augment.PRESETS[preset], **overrides)
  fn = _two_views_fn(tuple(sorted(items.items())), out_size)
  return fn(jnp.asarray(images), jnp.asarray(indices, jnp.int32), jnp.int32(step), seed)


def _random_images(n, size, channels, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


# ----------------------------------------------------------------------------- sources


@pytest.fixture(scope='module')
def fmnist():
  if not os.path.isdir(FMNIST):
    pytest.skip(f'{FMNIST} missing (apt-get install dataset-fashion-mnist)')
  return sources.load_fashion_mnist(FMNIST)


def test_fashion_mnist_idx(fmnist):
  for split, n in (('train', 60000), ('test', 10000)):
    images, labels = fmnist[split]['images'], fmnist[split]['labels']
    chex.assert_shape(images, (n, 28, 28, 1))
    chex.assert_shape(labels, (n,))
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert images.max() == 255 and images.min() == 0
    np.testing.assert_array_equal(np.unique(labels), np.arange(10))
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, n // 10))  # balanced
  mean = fmnist['train']['images'].mean() / 255
  std = fmnist['train']['images'].std() / 255
  info = sources.dataset_info('fashion_mnist')
  assert abs(mean - info['mean'][0]) < 1e-3 and abs(std - info['std'][0]) < 1e-3
  assert info['image_shape'] == (28, 28, 1) and info['num_classes'] == 10


def test_idx_bad_magic(tmp_path):
  import gzip
  bad = tmp_path / 'x.gz'
  with gzip.open(bad, 'wb') as f:
    f.write((2049).to_bytes(4, 'big') + (3).to_bytes(4, 'big') + bytes(3))
  with pytest.raises(sources.DatasetFileError, match='magic'):
    sources.read_idx(str(bad), 2051)
  np.testing.assert_array_equal(sources.read_idx(str(bad), 2049), np.zeros(3, np.uint8))


def test_fashion_mnist_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
    sources.load_fashion_mnist(str(tmp_path / 'nowhere'))
  (tmp_path / 'train-images-idx3-ubyte.gz').write_bytes(b'')  # folder exists, files missing
  with pytest.raises(FileNotFoundError, match='apt-get'):
    sources.load_fashion_mnist(str(tmp_path))


def test_synthetic_dataset():
  d = sources.synthetic_dataset(num_train=600, num_test=200, image_size=16, channels=3,
                                num_classes=5, seed=1)
  chex.assert_shape(d['train']['images'], (600, 16, 16, 3))
  chex.assert_shape(d['test']['labels'], (200,))
  assert d['train']['images'].dtype == np.uint8 and d['train']['labels'].dtype == np.int32
  np.testing.assert_array_equal(np.bincount(d['train']['labels']), np.full(5, 120))
  again = sources.synthetic_dataset(num_train=600, num_test=200, image_size=16, channels=3,
                                    num_classes=5, seed=1)
  np.testing.assert_array_equal(d['train']['images'], again['train']['images'])
  # A ridge-regression probe on raw pixels is well above chance (0.2).
  x = d['train']['images'].reshape(600, -1) / 255.0
  xt = d['test']['images'].reshape(200, -1) / 255.0
  x = np.c_[x, np.ones(600)]
  w = np.linalg.solve(x.T @ x + 10 * np.eye(x.shape[1]), x.T @ np.eye(5)[d['train']['labels']])
  acc = np.mean(np.argmax(np.c_[xt, np.ones(200)] @ w, 1) == d['test']['labels'])
  assert acc > 0.5, acc
  gray = sources.synthetic_dataset(num_train=20, num_test=10, image_size=8, channels=1, seed=0)
  chex.assert_shape(gray['train']['images'], (20, 8, 8, 1))


def _source(n=50, batch=8, seed=3, **kw):
  images = _random_images(n, 4, 1)
  return sources.InMemorySource(images, np.arange(n) % 7, batch, seed, **kw)


def test_source_determinism():
  a, b = _source(), _source()
  assert a.steps_per_epoch == 6  # 50 // 8, remainder dropped
  for step in (0, 5, 6, 13, 40, 2):  # out of order, across epochs, back to the first epoch
    ba, bb = a.batch(step), b.batch(step)
    for k in ('image', 'label', 'index'):
      np.testing.assert_array_equal(ba[k], bb[k])
    assert ba['index'].dtype == np.int32 and ba['label'].dtype == np.int32
    chex.assert_shape(ba['image'], (8, 4, 4, 1))
    np.testing.assert_array_equal(ba['image'], a.images[ba['index']])
    np.testing.assert_array_equal(ba['label'], ba['index'] % 7)
  # One epoch uses distinct examples; epochs are permuted differently; seeds differ.
  epoch0 = np.concatenate([a.batch(s)['index'] for s in range(6)])
  epoch1 = np.concatenate([a.batch(s)['index'] for s in range(6, 12)])
  assert len(np.unique(epoch0)) == 48 and len(np.unique(epoch1)) == 48
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(epoch0, np.random.default_rng([3, 0]).permutation(50)[:48])
  assert not np.array_equal(a.batch(0)['index'], _source(seed=4).batch(0)['index'])


def test_source_process_slices():
  full = _source()
  parts = [_source(process_index=i, process_count=2) for i in range(2)]
  for step in (0, 7, 20):
    halves = [p.batch(step) for p in parts]
    assert halves[0]['index'].shape == (4,)
    for k in ('image', 'label', 'index'):
      np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), full.batch(step)[k])
  with pytest.raises(ValueError):
    _source(batch=7, process_count=2)


def test_eval_batches_cover_once():
  src = _source(n=50)
  seen = []
  for b in src.eval_batches(16):
    chex.assert_shape(b['image'], (16, 4, 4, 1))
    assert b['mask'].dtype == bool
    seen.append(b['index'][b['mask']])
    np.testing.assert_array_equal(b['image'][b['mask']], src.images[b['index'][b['mask']]])
    np.testing.assert_array_equal(b['label'][b['mask']], src.labels[b['index'][b['mask']]])
  assert len(seen) == 4 and sum(len(s) for s in seen) == 50
  np.testing.assert_array_equal(np.concatenate(seen), np.arange(50))


# ----------------------------------------------------------------------------- augmentation


def test_presets():
  assert set(augment.PRESETS) >= {'byol', 'stl10', 'cifar10', 'fashion_mnist', 'none'}
  cfg = augment.augment_config('byol')
  assert cfg.crop_scale == (0.08, 1.0) and cfg.blur_prob == (1.0, 0.1)
  assert cfg.solarize_prob == (0.0, 0.2) and cfg.brightness == 0.4 and cfg.hue == 0.1
  stl = augment.augment_config('stl10')
  assert (stl.brightness, stl.contrast, stl.saturation, stl.hue) == (0.8, 0.8, 0.8, 0.2)
  assert stl.blur_prob == (1.0, 1.0) and stl.solarize_prob == (0.0, 0.0)
  assert augment.blur_kernel_size(stl.blur_kernel_frac, 96) == 9  # the paper's 9x9
  assert augment.blur_kernel_size(0.1, 224) == 23  # BYOL's 23 taps
  cifar = augment.augment_config('cifar10')
  assert cifar.blur_prob == (0.0, 0.0) and cifar.saturation == 0.4
  with pytest.raises(ValueError):
    augment.augment_config('nope')


@pytest.mark.parametrize('channels,preset', [(1, 'fashion_mnist'), (3, 'byol')])
def test_two_views_shapes_and_range(channels, preset):
  images = _random_images(8, 20, channels)
  v1, v2 = two_views(images, np.arange(8), 0, 0, preset=preset, out_size=16)
  chex.assert_shape([v1, v2], (8, 16, 16, channels))
  chex.assert_type([v1, v2], jnp.float32)
  chex.assert_tree_all_finite((v1, v2))
  for v in (v1, v2):
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
  assert not np.allclose(v1, v2)


def test_per_example_determinism_and_steps():
  images = _random_images(8, 20, 1)
  seed = 11
  # Example 42 at position 0 of a batch of 4, and at position 5 of a batch of 8.
  small = images[:4].copy()
  idx_small = np.array([42, 1, 2, 3])
  big = images.copy()
  big[5] = small[0]
  idx_big = np.array([10, 11, 12, 13, 14, 42, 16, 17])
  a = two_views(small, idx_small, 7, seed, preset='fashion_mnist', out_size=16)
  b = two_views(big, idx_big, 7, seed, preset='fashion_mnist', out_size=16)
  for va, vb in zip(a, b):
    np.testing.assert_allclose(va[0], vb[5], rtol=0, atol=1e-6)
  # Same image at another index, or at another step, gets other views.
  c = two_views(big, idx_big, 8, seed, preset='fashion_mnist', out_size=16)
  assert not np.allclose(b[0][5], c[0][5]) and not np.allclose(b[1][5], c[1][5])
  d = two_views(small, np.array([43, 1, 2, 3]), 7, seed, preset='fashion_mnist', out_size=16)
  assert not np.allclose(a[0][0], d[0][0])
  # A uint32 seed gives the same keys as the python int.
  np.testing.assert_array_equal(augment.example_key(jnp.uint32(seed), jnp.int32(8), 42, 1),
                                augment.example_key(seed, 8, 42, 1))


def test_two_views_matches_augment_view():
  # Same images/config/shape as test_two_views_shapes_and_range[3-byol]: no extra two_views compile.
  images = _random_images(8, 20, 3)
  indices = np.arange(8) + 100
  v = two_views(images, indices, 3, 2, preset='byol', out_size=16)
  cfg = augment.augment_config('byol')
  view1 = jax.jit(jax.vmap(lambda im, key: augment.augment_view(im, key, cfg, 1, 16)))
  keys = jnp.stack([augment.example_key(2, 3, i, 1) for i in indices[:2]])
  np.testing.assert_allclose(view1(jnp.asarray(images[:2]), keys), v[1][:2], atol=1e-5)


@pytest.mark.parametrize('channels', [1, 3])
def test_none_preset_is_resize(channels):
  images = _random_images(4, 20, channels)
  v1, v2 = two_views(images, np.arange(4), 1, 0, preset='none', out_size=12)
  ref = augment.eval_view(jnp.asarray(images), 12)
  chex.assert_shape(ref, (4, 12, 12, channels))
  # Equal up to float rounding of the differently fused programs (1 ulp).
  np.testing.assert_allclose(v1, ref, rtol=0, atol=1e-6)
  np.testing.assert_allclose(v2, ref, rtol=0, atol=1e-6)
  # At the input size the resize is the identity.
  np.testing.assert_allclose(augment.eval_view(jnp.asarray(images), 20), images / 255.0, atol=1e-6)


def _classify(views, images):
  """For each example, which of (flip, gray, solarize) explains the view (random_crop off)."""
  x = images.astype(np.float32) / 255.0
  found = np.full((len(x), 3), -1)
  for i in range(len(x)):
    for flip in (0, 1):
      for gray in (0, 1):
        for sol in (0, 1):
          y = x[i][:, ::-1] if flip else x[i]
          if gray:
            g = y @ np.array([0.2989, 0.5870, 0.1140], np.float32)
            y = np.repeat(g[..., None], 3, axis=-1)
          if sol:
            y = np.where(y >= 0.5, 1.0 - y, y)
          if np.allclose(views[i], y, atol=1e-5):
            found[i] = (flip, gray, sol)
  assert (found >= 0).all(), 'a view matched no combination'
  return found


def test_flip_gray_solarize_probabilities():
  n = 256
  images = _random_images(n, 8, 3, seed=5)
  v1, v2 = two_views(images, np.arange(n), 0, 0, preset='none', out_size=8, flip_prob=0.5,
                     grayscale_prob=(0.5, 0.0), solarize_prob=(0.0, 0.5))
  f1, f2 = _classify(np.asarray(v1), images), _classify(np.asarray(v2), images)
  tol = 0.12  # ~4 standard deviations at n = 256
  for f in (f1, f2):
    assert abs(f[:, 0].mean() - 0.5) < tol  # flip ~ 0.5 on each view
  assert abs(f1[:, 1].mean() - 0.5) < tol and f1[:, 2].sum() == 0  # view 0: gray, never solarized
  assert f2[:, 1].sum() == 0 and abs(f2[:, 2].mean() - 0.5) < tol  # view 1: solarized, never gray
  assert not np.array_equal(f1[:, 0], f2[:, 0])  # the views flip independently


@pytest.mark.parametrize('channels,changes', [
    (3, {}),  # all four ops: 3 passes, hue in any of 4 slots
    (3, {'saturation': 0.0}),  # an op that is off drops out of the order
    (3, {'brightness': 0.0, 'contrast': 0.0, 'saturation': 0.0}),  # hue alone
    (1, {}),  # grayscale: brightness and contrast only
])
def test_color_jitter_matches_hsv_reference(channels, changes):
  """The fast jitter (saturation without HSV, one pass per cheap op, hue in closed form) equals BYOL's
  sequential recipe, here in numpy with the stdlib's colorsys for HSV."""
  import colorsys
  cfg = augment.augment_config('stl10')  # strong jitter: 0.8, 0.8, 0.8, 0.2
  cfg.update(changes)
  n = 48
  xs = np.random.default_rng(0).uniform(size=(n, channels, 4, 4)).astype(np.float32)  # planar [C, H, W]
  us = np.random.default_rng(1).uniform(size=(n, augment._NUM_UNIFORMS)).astype(np.float32)
  fast = jax.jit(jax.vmap(lambda x, u: augment._color_jitter(x, u, cfg, jnp.bool_(True))))(xs, us)

  def hsv_op(x, sat_factor, hue_delta):
    if channels == 1:
      return x
    out = np.empty_like(x)
    for i in range(x.shape[1]):
      for j in range(x.shape[2]):
        h, s, v = colorsys.rgb_to_hsv(*x[:, i, j])
        out[:, i, j] = colorsys.hsv_to_rgb((h + hue_delta) % 1.0, min(max(s * sat_factor, 0), 1), v)
    return out

  lerp = lambda u, strength, centre: centre - strength + 2 * strength * u
  for k, (x, u) in enumerate(zip(xs, us)):
    b, c = lerp(u[augment._U_BRIGHT], cfg.brightness, 0.0), lerp(u[augment._U_CONTRAST], cfg.contrast, 1.0)
    f, dh = lerp(u[augment._U_SAT], cfg.saturation, 1.0), lerp(u[augment._U_HUE], cfg.hue, 0.0)
    for op in np.argsort(u[augment._U_ORDER]):  # an op that is off is the identity
      if op == 0:
        x = x + b
      elif op == 1:
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = (x - mean) * c + mean
      elif op == 2:
        x = hsv_op(x, f, 0.0)
      else:
        x = hsv_op(x, 1.0, dh)
      x = np.clip(x, 0.0, 1.0)
    np.testing.assert_allclose(fast[k], x, atol=1e-5)
  assert float(jnp.abs(fast - xs).mean()) > 0.05
