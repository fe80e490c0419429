"""In-memory datasets and a deterministic, resumable batch source.

Datasets are dicts {'train': {'images': uint8 [N, H, W, C], 'labels': int32 [N]}, 'test': {...}}.

`InMemorySource.batch(step)` is a pure function of (seed, step): the epoch's permutation is
`np.random.default_rng([seed, epoch]).permutation(N)`, so a resumed run sees exactly the batches of
an uninterrupted one, and each process takes a contiguous slice of the global batch. Each batch
carries the dataset `index` of its examples, which keys the on-device augmentation
(`augment.two_views`), so the views do not depend on the device/process count either.
"""
from __future__ import annotations

import gzip
import os
from typing import Iterator

import numpy as np

FASHION_MNIST_PATH = '/usr/share/datasets/fashion-mnist'
_FASHION_MNIST_FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim

_INFO = {
    'fashion_mnist': dict(num_classes=10, image_shape=(28, 28, 1), num_train=60000, num_test=10000,
                          mean=(0.2860,), std=(0.3530,)),
    # synthetic_dataset pixels: mean 0.50, std 0.23 (measured with the defaults).
    'synthetic': dict(num_classes=10, image_shape=(32, 32, 3), num_train=2048, num_test=512,
                      mean=(0.5, 0.5, 0.5), std=(0.23, 0.23, 0.23)),
}


def _missing(what: str, path: str) -> FileNotFoundError:
  return FileNotFoundError(
      f'Fashion-MNIST {what} not found at {path!r}: install it with '
      f'`apt-get install dataset-fashion-mnist` (Debian), or download the four *-ubyte.gz files '
      f'from https://github.com/zalandoresearch/fashion-mnist into a folder and pass '
      f'--config.data.path=<folder>')


def read_idx(filename: str, magic: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes, checking its magic number and size."""
  with gzip.open(filename, 'rb') as f:
    data = f.read()
  if len(data) < 8:
    raise ValueError(f'{filename}: truncated IDX header')
  found = int.from_bytes(data[0:4], 'big')
  if found != magic:
    raise ValueError(f'{filename}: IDX magic number {found}, expected {magic}')
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  arr = np.frombuffer(data, dtype=np.uint8, offset=header)
  if arr.size != int(np.prod(shape)):
    raise ValueError(f'{filename}: {arr.size} bytes of data, header says shape {shape}')
  return arr.reshape(shape)


def load_fashion_mnist(path: str = FASHION_MNIST_PATH) -> dict:
  """Fashion-MNIST from the four IDX gz files in `path`.

  Returns {'train': {'images': uint8 [60000, 28, 28, 1], 'labels': int32 [60000]},
           'test': {'images': uint8 [10000, 28, 28, 1], 'labels': int32 [10000]}}.
  Raises FileNotFoundError (saying how to get the data) if the folder or a file is missing.
  """
  if not os.path.isdir(path):
    raise _missing('folder', path)
  files = {}
  for key, name in _FASHION_MNIST_FILES.items():
    files[key] = os.path.join(path, name)
    if not os.path.isfile(files[key]):
      raise _missing(f'file {name}', path)
  out = {}
  for split in ('train', 'test'):
    images = read_idx(files[f'{split}_images'], _IDX_IMAGES_MAGIC)
    labels = read_idx(files[f'{split}_labels'], _IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
      raise ValueError(f'Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels')
    out[split] = {'images': images[..., None], 'labels': labels.astype(np.int32)}
  return out


def synthetic_dataset(num_train: int = 2048, num_test: int = 512, image_size: int = 32,
                      channels: int = 3, num_classes: int = 10, seed: int = 0,
                      max_shift: float = 0.25) -> dict:
  """Class-structured random images, same layout as `load_fashion_mnist`.

  Class c is a fixed random periodic low-frequency pattern P_c (per channel, a sum of 4 plane
  waves with 1-3 cycles per image and random phases). Example i shows P_c circularly shifted by a
  random offset of up to `max_shift` * image_size pixels in each direction, with a random contrast
  a_i ~ U(0.6, 1.4), plus a random low-frequency nuisance pattern Q_i (same family, weight 0.5) and
  pixel noise N(0, 0.05^2): x = 0.5 + 0.2 * (a_i P_c(shifted) + 0.5 Q_i) + noise.
  A linear probe on raw pixels is well above chance (about 0.7 with 2048 training images) but not perfect,
  because of the shifts; shift-invariant (conv + pooling) features do better. Pixels are about
  0.5 +- 0.23 (see `dataset_info('synthetic')`).
  """
  rng = np.random.default_rng(seed)
  grid = np.arange(image_size, dtype=np.float32) / image_size

  def waves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies [n, C, 4, 2] (cycles per image, never (0, 0)) and phases [n, C, 4]."""
    freq = rng.integers(-3, 4, size=(n, channels, 4, 2)).astype(np.float32)
    freq[..., 0] = np.where((freq[..., 0] == 0) & (freq[..., 1] == 0), 1, freq[..., 0])
    phase = rng.uniform(0, 2 * np.pi, size=(n, channels, 4)).astype(np.float32)
    return freq, phase

  def render(freq, phase, shift) -> np.ndarray:
    """Sum of the plane waves, shifted by `shift` [n, 2] (fractions of the image), unit std.
    cos(2pi(fy y + fx x) + phi) = Re(e^{i(2pi fy y + phi)} e^{i 2pi fx x}): separable, no big cos."""
    y = grid[None, :, None, None] + shift[:, 0, None, None, None]  # [n, S, 1, 1]
    x = grid[None, :, None, None] + shift[:, 1, None, None, None]
    ey = np.exp(1j * (2 * np.pi * freq[:, None, :, :, 0] * y + phase[:, None]))  # [n, S, C, 4]
    ex = np.exp(1j * 2 * np.pi * freq[:, None, :, :, 1] * x)
    ey, ex = ey.transpose(0, 2, 1, 3), ex.transpose(0, 2, 3, 1)  # [n, C, S, 4], [n, C, 4, S]
    img = np.matmul(ey, ex).real.transpose(0, 2, 3, 1).astype(np.float32)
    return img / (img.std(axis=(1, 2, 3), keepdims=True) + 1e-6)

  class_freq, class_phase = waves(num_classes)

  def make(n: int) -> dict:
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    shift = rng.uniform(-max_shift, max_shift, size=(n, 2)).astype(np.float32)
    signal = render(class_freq[labels], class_phase[labels], shift)
    nuisance = render(*waves(n), np.zeros((n, 2), np.float32))
    amp = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)).astype(np.float32)
    x = 0.5 + 0.2 * (amp * signal + 0.5 * nuisance)
    x += 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    images = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
    return {'images': images, 'labels': labels}

  return {'train': make(num_train), 'test': make(num_test)}


def dataset_info(name: str) -> dict:
  """num_classes, image_shape (H, W, C), num_train, num_test, per-channel mean and std (of pixels
  in [0, 1]) for normalisation. For 'synthetic' the shape is the `synthetic_dataset` default."""
  if name not in _INFO:
    raise ValueError(f'unknown dataset {name!r}; choose one of {sorted(_INFO)}')
  return dict(_INFO[name])


def load_dataset(name: str, path: str | None = None, seed: int = 0, **synthetic_kwargs) -> dict:
  """'fashion_mnist' (from `path`, default /usr/share/datasets/fashion-mnist) or 'synthetic'."""
  if name == 'fashion_mnist':
    return load_fashion_mnist(path or FASHION_MNIST_PATH)
  if name == 'synthetic':
    return synthetic_dataset(seed=seed, **synthetic_kwargs)
  raise ValueError(f'unknown dataset {name!r}; choose fashion_mnist or synthetic')


class InMemorySource:
  """Deterministic batches of an in-memory split, for one of `process_count` processes.

  `batch(step)` depends only on (seed, step): epoch = step // steps_per_epoch, the epoch's order is
  `np.random.default_rng([seed, epoch]).permutation(N)`, the global batch is the step's contiguous
  chunk of it (the remainder of each epoch is dropped) and this process takes its contiguous
  `global_batch_size // process_count` slice.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f'images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}')
    if labels.shape != (images.shape[0],):
      raise ValueError(f'labels shape {labels.shape} does not match {images.shape[0]} images')
    if global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} not divisible by {process_count} processes')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    if global_batch_size > images.shape[0]:
      raise ValueError(f'global batch {global_batch_size} larger than the dataset ({images.shape[0]})')
    self.images = images
    self.labels = labels.astype(np.int32)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.local_batch_size = self.global_batch_size // self.process_count
    self._epoch = None
    self._perm = None

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.global_batch_size

  def permutation(self, epoch: int) -> np.ndarray:
    """The example order of `epoch` (cached for the current epoch)."""
    if epoch != self._epoch:
      self._perm = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)
      self._epoch = epoch
    return self._perm

  def batch_indices(self, step: int) -> np.ndarray:
    """Dataset indices of this process's part of the batch of `step` (int32 [B_local])."""
    step = int(step)
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    epoch, pos = divmod(step, self.steps_per_epoch)
    start = pos * self.global_batch_size + self.process_index * self.local_batch_size
    return self.permutation(epoch)[start:start + self.local_batch_size].astype(np.int32)

  def batch(self, step: int) -> dict:
    """{'image': uint8 [B_local, H, W, C], 'label': int32 [B_local], 'index': int32 [B_local]}."""
    idx = self.batch_indices(step)
    return {'image': self.images[idx], 'label': self.labels[idx], 'index': idx}

  def eval_batches(self, batch_size: int) -> Iterator[dict]:
    """The whole split in order, in batches of exactly `batch_size` (all processes see all of it).

    The last batch is padded with copies of example 0; `mask` (bool [batch_size]) is False on the
    padding, so masked sums use every example exactly once. `index` is -1 on the padding.
    """
    n = self.num_examples
    for start in range(0, n, batch_size):
      idx = np.arange(start, min(start + batch_size, n), dtype=np.int32)
      count = idx.shape[0]
      mask = np.zeros(batch_size, bool)
      mask[:count] = True
      padded = np.concatenate([idx, np.zeros(batch_size - count, np.int32)])
      index = np.concatenate([idx, np.full(batch_size - count, -1, np.int32)])
      yield {'image': self.images[padded], 'label': self.labels[padded], 'index': index,
             'mask': mask}
