"""In-memory datasets (Fashion-MNIST, synthetic, a folder of one's own images: `load_image_folder`) and a
deterministic, resumable batch source.

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
import zlib
from typing import Iterator

import numpy as np

FASHION_MNIST_PATH = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist
FASHION_MNIST_URL = 'https://github.com/zalandoresearch/fashion-mnist'  # data/fashion/*.gz
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


class DatasetFileError(FileNotFoundError):
  """A dataset file that cannot be read (truncated, not gzip, a wrong IDX header); the message, one line, names it
  (and, from `load_fashion_mnist`, how to get it again). A FileNotFoundError: a damaged copy is no copy, and the
  entry points print those as one line."""


def _missing(what: str, path: str, tried_tfds: str = '') -> FileNotFoundError:
  return FileNotFoundError(
      f'Fashion-MNIST {what} not found at {path!r}{tried_tfds}: install it with '
      f'`apt-get install dataset-fashion-mnist` (Debian), or download the four *-ubyte.gz files '
      f'from {FASHION_MNIST_URL} into a folder and pass --config.data.path=<folder>')


def read_idx(filename: str, magic: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes, checking its magic number and size; DatasetFileError (one line,
  naming the file) when it is damaged."""
  try:
    with gzip.open(filename, 'rb') as f:
      data = f.read()
  except EOFError:  # gzip's words for a cut file ("Compressed file ended before the end-of-stream marker...")
    raise DatasetFileError(f'{filename} is truncated (its gzip stream ends early)') from None
  except (OSError, zlib.error) as e:  # gzip.BadGzipFile (an OSError): not gzip, or a CRC mismatch; zlib: bad data
    raise DatasetFileError(f'{filename} is damaged ({e})') from None
  if len(data) < 8:
    raise DatasetFileError(f'{filename}: truncated IDX header')
  found = int.from_bytes(data[0:4], 'big')
  if found != magic:
    raise DatasetFileError(f'{filename}: IDX magic number {found}, expected {magic}')
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  arr = np.frombuffer(data, dtype=np.uint8, offset=header)
  if arr.size != int(np.prod(shape)):
    raise DatasetFileError(f'{filename}: {arr.size} bytes of data, header says shape {shape}')
  return arr.reshape(shape)


def _get_again(filename: str) -> str:
  """How to replace a damaged Fashion-MNIST file."""
  if os.path.dirname(os.path.abspath(filename)) == FASHION_MNIST_PATH:
    return 'reinstall it: `apt-get install --reinstall dataset-fashion-mnist`'
  return f'download {os.path.basename(filename)} again from {FASHION_MNIST_URL} (data/fashion/)'


def load_fashion_mnist(path: str = FASHION_MNIST_PATH) -> dict:
  """Fashion-MNIST from the four IDX gz files in `path`.

  Returns {'train': {'images': uint8 [60000, 28, 28, 1], 'labels': int32 [60000]},
           'test': {'images': uint8 [10000, 28, 28, 1], 'labels': int32 [10000]}}.
  Raises FileNotFoundError (saying how to get the data) if the folder or a file is missing, DatasetFileError
  (naming the file and how to get it again) if one is damaged.
  """
  if not os.path.isdir(path):
    raise _missing('folder', path)
  files = {}
  for key, name in _FASHION_MNIST_FILES.items():
    files[key] = os.path.join(path, name)
    if not os.path.isfile(files[key]):
      raise _missing(f'file {name}', path)

  def read(key: str, magic: int) -> np.ndarray:
    try:
      return read_idx(files[key], magic)
    except DatasetFileError as e:
      raise DatasetFileError(f'{e}; {_get_again(files[key])}') from None

  out = {}
  for split in ('train', 'test'):
    images = read(f'{split}_images', _IDX_IMAGES_MAGIC)
    labels = read(f'{split}_labels', _IDX_LABELS_MAGIC)
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


def fashion_mnist_from_tfds(data_dir: str | None = None) -> dict:
  """Fashion-MNIST through tensorflow-datasets (`fashion_mnist`, downloaded and prepared in `data_dir`, else
  $TFDS_DATA_DIR or ~/tensorflow_datasets, the first time), for where Debian's files are absent; says in one line
  where it looked.

  The same 70,000 images as the IDX files, in tfds's order: a run's numbers are those of another data order, not
  bit for bit those of a run on Debian's files. FileNotFoundError (one line, naming both places) when tfds cannot get it.
  """
  try:
    from byol_jax.data import tfds_source  # TensorFlow is imported only on this path
    data, where = tfds_source.load_fashion_mnist(data_dir)
  except Exception as e:  # noqa: BLE001 - no TensorFlow, no network, a failed download: all end in the same line
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise _missing('folder', FASHION_MNIST_PATH, f' and tensorflow-datasets could not fetch it ({reason})') from None
  print(f'Fashion-MNIST: not in {FASHION_MNIST_PATH} (Debian\'s dataset-fashion-mnist); read through tfds from '
        f'{where}', flush=True)
  return data


def load_dataset(name: str, path: str | None = None, seed: int = 0, tfds_data_dir: str | None = None,
                 **synthetic_kwargs) -> dict:
  """'fashion_mnist' (from `path`; by default /usr/share/datasets/fashion-mnist, else through tfds, prepared in
  `tfds_data_dir`) or 'synthetic'."""
  if name == 'fashion_mnist':
    if path is None and not all(os.path.isfile(os.path.join(FASHION_MNIST_PATH, f))
                                for f in _FASHION_MNIST_FILES.values()):
      return fashion_mnist_from_tfds(tfds_data_dir)
    return load_fashion_mnist(path or FASHION_MNIST_PATH)
  if name == 'synthetic':
    return synthetic_dataset(seed=seed, **synthetic_kwargs)
  raise ValueError(f'unknown dataset {name!r}; choose fashion_mnist or synthetic')


# ----------------------------------------------------------------------------------------------------
# A folder of one's own images (data.name='image_folder', data.path)
# ----------------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
IMAGE_FOLDER_TEST_FRACTION = 0.1  # of each class, without train/ and test/ subfolders
IMAGE_FOLDER_SPLIT_SEED = 0       # the same split for every run and seed: one test set to compare runs on
IMAGE_FOLDER_MAX_MEMORY = 0.5     # of the memory available: beyond it, stream instead (tfds's ImageFolder)


class ImageFolderError(ValueError):
  """A folder of images that cannot be read as a dataset; the message names the file or folder."""


def _image_files(folder: str, recursive: bool) -> list[str]:
  """Sorted paths of the PNG / JPEG files in `folder` (hidden files and folders left out)."""
  out = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if recursive else []
    out += [os.path.join(root, f) for f in files
            if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(out)


def _subfolders(folder: str) -> list[str]:
  return sorted(d for d in os.listdir(folder) if not d.startswith('.') and os.path.isdir(os.path.join(folder, d)))


def _scan_split(folder: str) -> tuple[list[str], list[str], list[str]]:
  """(files, their class names or '' each, the class names) of one folder: class subfolders, or images only."""
  classes = _subfolders(folder)
  loose = _image_files(folder, recursive=False)
  if classes and loose:
    raise ImageFolderError(f'{folder} holds both images ({os.path.basename(loose[0])}, ...) and subfolders '
                           f'({", ".join(classes[:4])}{", ..." if len(classes) > 4 else ""}): put every image in '
                           'a class subfolder, or use no subfolders (unlabelled)')
  if not classes:
    if not loose:
      raise ImageFolderError(f'{folder} holds no image ({"/".join(IMAGE_EXTENSIONS)})')
    return loose, [''] * len(loose), []
  files, names = [], []
  for c in classes:
    found = _image_files(os.path.join(folder, c), recursive=True)
    if not found:
      raise ImageFolderError(f'class folder {os.path.join(folder, c)} holds no image ({"/".join(IMAGE_EXTENSIONS)})')
    files += found
    names += [c] * len(found)
  return files, names, classes


def _seeded_split(names: list[str], fraction: float, seed: int) -> np.ndarray:
  """Boolean test mask: round(fraction x n) of each class's n images (at least one where n >= 2)."""
  rng = np.random.default_rng(seed)
  names = np.asarray(names)
  test = np.zeros(len(names), bool)
  for c in sorted(set(names.tolist())):
    idx = np.flatnonzero(names == c)
    n_test = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
    test[rng.permutation(idx)[:n_test]] = True
  return test


def _memory_available() -> int:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def _gray_from_16bit(img):
  """16-bit grayscale (PNG 'I;16' / 'I') as 8-bit 'L' (PIL's convert('L') would clip at 255, not scale)."""
  from PIL import Image
  arr = np.asarray(img, np.float64) / 257.0
  return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), 'L')


def read_image(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """One image as uint8 [size, size, 1 or 3] (grayscale stays one channel; palette, alpha and CMYK become RGB,
  the alpha dropped), its shorter side resized to `size` and the centre cropped; and its original (W, H)."""
  from PIL import Image
  try:
    with Image.open(path) as img:
      img.draft('RGB' if img.mode not in ('L', '1') else 'L', (size, size))  # JPEG: decode at a reduced scale
      img.load()
      original = img.size
      if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        img = _gray_from_16bit(img)
      elif img.mode in ('1', 'L', 'LA'):
        img = img.convert('L')
      else:
        img = img.convert('RGB')
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageFolderError(f'{path}: cannot read it as an image ({e})') from None
  w, h = img.size
  if min(w, h) < 1:
    raise ImageFolderError(f'{path}: empty image ({w}x{h})')
  scale = size / min(w, h)
  new = (max(size, round(w * scale)), max(size, round(h * scale)))
  img = img.resize(new, Image.Resampling.BILINEAR)
  left, top = (new[0] - size) // 2, (new[1] - size) // 2
  arr = np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)
  return (arr[..., None] if arr.ndim == 2 else arr), original


def _read_images(files: list[str], size: int) -> tuple[np.ndarray, list[tuple[int, int]], int]:
  """uint8 [N, size, size, C] with C = 3 if any image is colour (grayscale ones then repeated to RGB), else 1;
  the original sizes; how many grayscale images were made RGB."""
  from concurrent.futures import ThreadPoolExecutor
  with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
    results = list(pool.map(lambda f: read_image(f, size), files))
  channels = 3 if any(a.shape[-1] == 3 for a, _ in results) else 1
  images = np.empty((len(files), size, size, channels), np.uint8)
  converted = 0
  for i, (a, _) in enumerate(results):
    if a.shape[-1] != channels:
      converted += 1
    images[i] = a if a.shape[-1] == channels else np.repeat(a, channels, axis=-1)
  return images, [s for _, s in results], converted


def _channel_stats(images: np.ndarray) -> tuple[tuple, tuple]:
  """Per-channel mean and std of the pixels in [0, 1], in chunks (no float copy of the whole split)."""
  total = np.zeros(images.shape[-1])
  squares = np.zeros(images.shape[-1])
  for start in range(0, len(images), 1024):
    x = images[start:start + 1024].astype(np.float64) / 255.0
    total += x.sum(axis=(0, 1, 2))
    squares += (x * x).sum(axis=(0, 1, 2))
  n = images.shape[0] * images.shape[1] * images.shape[2]
  mean = total / n
  std = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
  return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def load_image_folder(path: str, image_size: int) -> tuple[dict, dict]:
  """A folder of PNG / JPEG images as an in-memory dataset (like `load_fashion_mnist`), and its info.

  Layout: class subfolders (path/<class>/*.png) give labels 0..K-1 in sorted order; images straight in `path`
  are unlabelled (labels -1: the online probe ignores them, the linear probe and kNN are skipped).
  path/train/ and path/test/ (each laid out so) give the split; else IMAGE_FOLDER_TEST_FRACTION of each class
  is the test split (seed IMAGE_FOLDER_SPLIT_SEED, the same for every run). Each image is resized, shorter side
  to `image_size`, and centre-cropped square; grayscale images stay one channel unless the folder also holds
  colour images (then all are RGB); alpha is dropped. Mean and std for normalisation are those of the train
  split. Everything is held in memory: N x image_size^2 x C bytes, refused above IMAGE_FOLDER_MAX_MEMORY of the
  memory available (beyond it, stream with tfds's ImageFolder builder).

  Returns ({'train': {'images', 'labels'}, 'test': {...}}, info) with info as `dataset_info` plus class_names,
  labelled and report (one line saying what was read and reconciled). Raises ImageFolderError naming the file
  or folder.
  """
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise ImageFolderError(f'{path} is not a folder' if os.path.exists(path) else f'{path} does not exist')
  subs = _subfolders(path)
  if 'train' in subs or 'test' in subs:
    if not ('train' in subs and 'test' in subs):
      have, missing = ('train', 'test') if 'train' in subs else ('test', 'train')
      raise ImageFolderError(f'{path} has {have}/ but no {missing}/: give both, or neither (then '
                             f'{IMAGE_FOLDER_TEST_FRACTION:.0%} of each class is the test split)')
    train_files, train_names, classes = _scan_split(os.path.join(path, 'train'))
    test_files, test_names, test_classes = _scan_split(os.path.join(path, 'test'))
    if bool(classes) != bool(test_classes):
      raise ImageFolderError(f'{path}: one of train/ and test/ has class subfolders and the other does not')
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
      raise ImageFolderError(f'{os.path.join(path, "test", unknown[0])}: class {unknown[0]!r} is not in '
                             f'{os.path.join(path, "train")}')
    files, names = train_files + test_files, train_names + test_names
    is_test = np.arange(len(files)) >= len(train_files)
    how = 'train/ and test/ subfolders'
  else:
    files, names, classes = _scan_split(path)
    is_test = _seeded_split(names, IMAGE_FOLDER_TEST_FRACTION, IMAGE_FOLDER_SPLIT_SEED)
    if not is_test.any():
      raise ImageFolderError(f'{path}: no class has 2 images or more, too few for a test split: add images, or '
                             'give train/ and test/ subfolders')
    how = f'a seeded {IMAGE_FOLDER_TEST_FRACTION:.0%} of each class as test split'
  need = len(files) * image_size * image_size * 3
  available = _memory_available()
  if need > IMAGE_FOLDER_MAX_MEMORY * available:
    raise ImageFolderError(
        f'{path}: {len(files):,} images at {image_size}x{image_size}x3 need {need / 2**30:.1f} GiB in memory, more '
        f'than {IMAGE_FOLDER_MAX_MEMORY:.0%} of the {available / 2**30:.1f} GiB available: use a smaller '
        'data.image_size or fewer images, or stream them (tfds\'s ImageFolder builder; docs/cluster_and_own_data.md)')
  images, sizes, converted = _read_images(files, image_size)
  labels = np.array([classes.index(n) if n else -1 for n in names], np.int32)
  data = {'train': {'images': images[~is_test], 'labels': labels[~is_test]},
          'test': {'images': images[is_test], 'labels': labels[is_test]}}
  mean, std = _channel_stats(data['train']['images'])
  widths, heights = [s[0] for s in sizes], [s[1] for s in sizes]
  reconciled = []
  if len(set(sizes)) > 1 or sizes[0] != (image_size, image_size):
    reconciled.append(f'sizes {min(widths)}-{max(widths)} x {min(heights)}-{max(heights)} px resized to '
                      f'{image_size}x{image_size} (shorter side, centre crop)')
  if converted:
    reconciled.append(f'{converted} grayscale image{"s" if converted > 1 else ""} made RGB')
  labelled = bool(classes)
  report = (f'{path}: {int((~is_test).sum())} train / {int(is_test.sum())} test images, '
            f'{images.shape[-1]} channel{"s" if images.shape[-1] > 1 else ""}, '
            + (f'{len(classes)} classes ({", ".join(classes[:5])}{", ..." if len(classes) > 5 else ""})'
               if labelled else 'unlabelled (no class subfolders): the linear probe and kNN are skipped')
            + f'; {how}' + ''.join(f'; {r}' for r in reconciled))
  info = dict(num_classes=max(1, len(classes)), image_shape=(image_size, image_size, images.shape[-1]),
              num_train=int((~is_test).sum()), num_test=int(is_test.sum()), mean=mean, std=std,
              class_names=list(classes), labelled=labelled, report=report)
  return data, info


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
