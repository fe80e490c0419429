"""Frozen features of a run's network and their evaluation: the data splits held in memory, evaluation batches,
the backbone features and projector outputs z of un-augmented images, precise BatchNorm, and one evaluation
(linear probe, kNN and the collapse indicators of byol_jax/collapse.py). The training loop (train.py) evaluates
with these; so do byol_jax.embed and scripts/.
"""
from __future__ import annotations

import itertools

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from byol_jax import collapse, config as config_lib, evaluate
from byol_jax import step as step_lib
from byol_jax.data import augment, sources
from byol_jax.models.norm import ViewBatchNorm


def load_data(config):
  """Returns (data, info). data = {'train', 'test', 'train_eval'?: (images uint8, labels)} for datasets held
  in memory (Fashion-MNIST, synthetic, CIFAR, STL-10); None for ImageNet, which is streamed by tfds."""
  d = config.data
  if d.name == 'imagenet2012':
    from byol_jax.data import tfds_source  # TensorFlow is imported only on the tfds path
    return None, tfds_source.dataset_info(d.name)
  if d.name in config_lib.TFDS_DATASETS:
    from byol_jax.data import tfds_source
    data, info = tfds_source.load_in_memory(d.name, d.tfds_data_dir or None, d.image_size)
  elif d.name == 'image_folder':
    try:
      raw, info = sources.load_image_folder(d.path, d.image_size)
    except sources.ImageFolderError as e:  # a config value that cannot work: one line from the entry points
      raise config_lib.ConfigError(f'data.path: {e}') from None
    data = {split: (raw[split]['images'], raw[split]['labels']) for split in ('train', 'test')}
    if jax.process_index() == 0:
      print(f'data: {info["report"]}', flush=True)
  else:
    raw = sources.load_dataset(d.name, d.path or None, seed=config.seed, num_train=d.num_train or 512,
                               num_test=d.num_test or 256, image_size=d.image_size, channels=3, num_classes=10)
    data = {split: (raw[split]['images'], raw[split]['labels']) for split in ('train', 'test')}
    info = sources.dataset_info(d.name)
  if config.eval.num_train:
    data['train_eval'] = tuple(a[:config.eval.num_train] for a in data.get('train_eval', data['train']))
  return data, info


def eval_batches(config, data, split: str, batch_size: int):
  """Process-local, fixed-size evaluation batches {'image', 'label', 'mask'} covering a split once."""
  if data is None:
    from byol_jax.data import tfds_source
    pipe = tfds_source.ImageNetEvalPipeline(
        'train' if split == 'train' else 'validation', batch_size, config.data.image_size, jax.process_index(),
        jax.process_count(), config.data.tfds_data_dir or None,
        max_examples=(config.eval.num_train or 50_000) if split == 'train' else None)
    yield from pipe.batches()
    return
  images, labels = data.get('train_eval', data['train']) if split == 'train' else data['test']
  local = batch_size // jax.process_count()
  lo = jax.process_index() * local
  for start in range(0, len(images), batch_size):
    idx = np.arange(start + lo, start + lo + local)
    mask = idx < len(images)
    idx = np.minimum(idx, len(images) - 1)
    yield {'image': images[idx], 'label': labels[idx], 'mask': mask}


def shard_batch(mesh, local_batch):
  """Process-local numpy batch -> global arrays split over 'data' (also across hosts)."""
  sharding = NamedSharding(mesh, P(step_lib.AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def make_feature_fn(config, networks, info):
  """(frozen backbone features, projector output z) of un-augmented images (BatchNorm in inference mode)."""
  def features(params, stats, images):
    x = step_lib.normalize(augment.eval_view(images, config.data.image_size), info['mean'], info['std'])
    model = nnx.merge(networks.online_eval, params, stats)
    return model.tower(x)
  return jax.jit(features)


def make_batch_stats_fn(config, networks, info, mesh):
  """The online tower's BatchNorm statistics of one global batch of un-augmented images (training-mode
  BatchNorm over the global batch, one view, no gradients): {'tower': ...} of the online batch_stats tree."""
  def batch_stats(params, stats, images):
    x = step_lib.normalize(augment.eval_view(images, config.data.image_size), info['mean'], info['std'])
    model = nnx.merge(networks.online_eval, params, stats)
    for _, m in nnx.iter_modules(model.tower):
      if isinstance(m, ViewBatchNorm):  # momentum 0: the "running" statistics become this batch's
        m.use_running_average, m.views, m.momentum = False, 1, 0.0
    model.tower(x)
    return nnx.to_pure_dict(nnx.state(model.tower, nnx.BatchStat))
  mapped = jax.shard_map(batch_stats, mesh=mesh, in_specs=(P(), P(), P(step_lib.AXIS)), out_specs=P(),
                         check_vma=False)
  return jax.jit(mapped)


def precise_bn_batches(config, data):
  """The process-local image batches precise BatchNorm averages over: the first eval.precise_bn_batches x
  train.batch_size images of the train split (wrapping around), the same for every run and seed."""
  count, size = config.eval.precise_bn_batches, config.train.batch_size
  if data is None:  # streamed (ImageNet): the evaluation pipeline's train examples, full batches only
    batches = (b['image'] for b in eval_batches(config, data, 'train', size) if np.all(b['mask']))
    yield from itertools.islice(batches, count)
    return
  images = data['train'][0]
  local = size // jax.process_count()
  lo = jax.process_index() * local
  for i in range(count):
    yield images[(i * size + lo + np.arange(local)) % len(images)]


def precise_batch_stats(batch_stats_fn, state, batches, mesh):
  """Precise BatchNorm (Wu & Johnson 2021): the online BatchNorm statistics with the tower's replaced by the
  mean, over `batches`, of each batch's mean and variance. Returns a new batch_stats tree (state unchanged)."""
  total, n = None, 0
  for images in batches:
    stats = batch_stats_fn(state.params, state.batch_stats, shard_batch(mesh, images))
    total = stats if total is None else jax.tree.map(jax.numpy.add, total, stats)
    n += 1
  if not n:
    raise ValueError('precise BatchNorm: the train split gave no full batch; lower train.batch_size or set '
                     '--config.eval.precise_bn=never')
  return {**state.batch_stats, 'tower': jax.tree.map(lambda x: x / n, total)}


def _gather(x):
  return np.asarray(multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x)


def extract_features(feature_fn, state, batches, mesh):
  """(features, labels, projections z) of every real (mask=True) example of `batches`, gathered on every
  process."""
  feats, labels, zs = [], [], []
  for b in batches:
    f, z = feature_fn(state.params, state.batch_stats, shard_batch(mesh, b['image']))
    mask = _gather(b['mask'])
    feats.append(_gather(f)[mask])
    zs.append(_gather(z)[mask])
    labels.append(_gather(b['label'])[mask])
  return np.concatenate(feats), np.concatenate(labels), np.concatenate(zs)


def run_evaluation(config, feature_fn, state, data, info, mesh) -> dict:
  """Linear probe and kNN (train split -> test split), and the collapse indicators of the test split's
  features and projector outputs (byol_jax/collapse.py)."""
  bs = max(mesh.size, config.eval.batch_size // mesh.size * mesh.size)
  ftrain, ytrain, _ = extract_features(feature_fn, state, eval_batches(config, data, 'train', bs), mesh)
  ftest, ytest, ztest = extract_features(feature_fn, state, eval_batches(config, data, 'test', bs), mesh)
  result = {}
  if info.get('labelled', True):  # unlabelled images (image_folder without class folders): no probes to fit
    result = evaluate.evaluate_features(ftrain, ytrain, ftest, ytest, info['num_classes'], config.eval)
  result.update(collapse.collapse_stats(ftest, ztest))
  return result
