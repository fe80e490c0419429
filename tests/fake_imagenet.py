"""A tfds imagenet2012 prepared by tfds's own builder from fake ILSVRC2012 tars (what tests/test_tfds.py and
tests/test_protocols.py read): 10 random JPEGs of each of 3 classes in the train split, named
`<synset>_<i>.JPEG` as ImageNet's files are, in 3 shards, and 10 validation images."""
import io
import tarfile

import numpy as np

CLASSES = ('n01440764', 'n01443537', 'n01484850')  # ImageNet's class ids 0, 1, 2
PER_CLASS = 10
NUM_VAL = 10


def _jpeg(rng, height, width) -> bytes:
  import tensorflow as tf
  return tf.io.encode_jpeg(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), quality=90).numpy()


def _add(tar, name, data):
  member = tarfile.TarInfo(name)
  member.size = len(data)
  tar.addfile(member, io.BytesIO(data))


def prepare(data_dir) -> str:
  """Writes the tars into data_dir/downloads/manual and prepares imagenet2012 there; returns data_dir."""
  import tensorflow_datasets as tfds
  manual = data_dir / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  rng = np.random.default_rng(0)
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as train:
    for synset in CLASSES:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as t:
        for i in range(PER_CLASS):
          _add(t, f'{synset}_{i}.JPEG', _jpeg(rng, int(rng.integers(40, 90)), int(rng.integers(40, 90))))
      _add(train, f'{synset}.tar', inner.getvalue())
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as val:
    for i in range(NUM_VAL):
      _add(val, f'ILSVRC2012_val_{i + 1:08d}.JPEG', _jpeg(rng, 50, 70))
  builder = tfds.builder('imagenet2012', data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual), num_shards=3, try_download_gcs=False))
  return str(data_dir)
