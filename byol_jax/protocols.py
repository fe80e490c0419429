"""The evaluation protocols of the self-supervised learning papers, on a run's checkpoint:

  python -m byol_jax.evaluate --workdir=DIR --protocol=frozen|knn|linear|finetune|semi
      [--label_fraction=0.01|0.1] [--subset_file=FILE] [--from_scratch] [--epochs=N --batch_size=N --base_lr=X]

Each prints one line and appends one JSON record to DIR/evaluation.jsonl (rundir.EVALUATION):

- frozen:   the converged linear probe on frozen, un-augmented backbone features (eval.probe_* of the run's config;
            byol_jax/evaluate.py), the number a training run reports at its end.
- knn:      the weighted kNN vote on the same features (eval.knn_k, eval.knn_temperature).
- linear:   BYOL's linear evaluation: a linear classifier on the frozen backbone (BatchNorm in inference mode),
            trained on random crops and flips with Nesterov SGD (momentum 0.9), lr base_lr * batch / 256 with a
            cosine decay to 0, no weight decay; tested on the whole, un-cropped images.
- finetune: the whole backbone and a new linear classifier trained together, from the run's weights (BatchNorm in
            training mode, its statistics updated), the same optimizer and views.
- semi:     finetune on a fixed, class-balanced subset of the train labels: --label_fraction of each class, drawn
            with --subset_seed (0), written to DIR/subsets/ beside the result so anyone can reuse it; or the subset
            a file lists (--subset_file, '#' comments; what this command writes): one index into the train split
            per line for a dataset held in memory, one file name per line for a streamed one (ImageNet: SimCLR's
            published 1percent.txt / 10percent.txt). SimCLR's schedule: 60 epochs of a subset under 10% of the
            labels, 30 from 10% on.
--from_scratch: the same protocol from the run's random initialisation (its seed) instead of its checkpoint: with
  finetune and semi, a supervised network trained on the same labels, which says what the pretraining is worth.

The recipes (RECIPES) are BYOL's and SimCLR's (Nesterov SGD, cosine, crops and flips) with fewer epochs, so each
protocol takes minutes on 2 CPU cores for the default run; the crop's scale and aspect range are the run's
(data.augment), the classifier starts at zero.

Streamed datasets (ImageNet, tfds_source.ImageNetPipeline): the classifier trains on the streamed train split, one
crop per image made on the host with the run's scale and ratio (the pretraining's pipeline with views=1), the flip
on device, in the same compiled step as the in-memory case; it is tested with the same evaluation path as frozen
(the centre-cropped validation split). A semi subset on a stream is resolved by one pass over the split's file
names and labels (tfds_source.scan_file_names, no image decoded): --subset_file's names become positions, with how
many were found, and --label_fraction draws the same class-balanced subset as in memory and writes it as file
names; the train stream then keeps exactly those positions. docs/evaluation.md has the default run's table.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import json
import os
import sys
import time

import numpy as np

from byol_jax import rundir

PROTOCOLS = ('frozen', 'knn', 'linear', 'finetune', 'semi')
TRAINED = ('linear', 'finetune', 'semi')  # the protocols that train a classifier
REFERENCE_BATCH = 256  # the lr scales as base_lr * batch / 256 (BYOL, SimCLR)


@dataclasses.dataclass(frozen=True)
class Recipe:
  epochs: int          # passes over the (sub)set of labelled train examples
  batch_size: int      # global batch (rounded down to a multiple of the device count)
  base_lr: float       # the lr at batch 256: lr = base_lr * batch / 256, cosine-decayed to 0 over the steps
  weight_decay: float  # on the weights only (not biases and BatchNorm parameters), as BYOL
  momentum: float = 0.9  # Nesterov

  @property
  def lr(self) -> float:
    return self.base_lr * self.batch_size / REFERENCE_BATCH


# BYOL's linear evaluation: Nesterov SGD, base lr 0.2, cosine, no weight decay, 80 epochs of ImageNet; here 10.
# Fine-tuning (SimCLR Appendix B.5, which BYOL's semi-supervised protocol follows): Nesterov SGD, base lr 0.05,
# cosine, no weight decay, 60 epochs of a 1% subset and 30 of a 10% one (the 10% schedule takes as many steps as
# finetune's 3 epochs of all labels here).
RECIPES = {
    'linear': Recipe(epochs=10, batch_size=256, base_lr=0.2, weight_decay=0.0),
    'finetune': Recipe(epochs=3, batch_size=256, base_lr=0.05, weight_decay=0.0),
    'semi': Recipe(epochs=30, batch_size=256, base_lr=0.05, weight_decay=0.0),
}
SEMI_SMALL_FRACTION_EPOCHS = 60  # label fractions below 10%: SimCLR's 1% schedule


class ProtocolError(ValueError):
  """Input the protocols cannot use; the message is one line naming the flag or file and the fix."""


# ----------------------------------------------------------------------------------------------------
# Label subsets (no JAX)
# ----------------------------------------------------------------------------------------------------
def check_fraction(fraction: float) -> None:
  if not 0.0 < fraction <= 1.0:
    raise ProtocolError(f'--label_fraction={fraction:g} is outside (0, 1]; give e.g. 0.01 (1%) or 0.1 (10%)')


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of round(fraction * n_c) examples (at least 1) of each class c, drawn without replacement by
  np.random.default_rng(seed), class after class in label order: the same subset for every run and machine."""
  check_fraction(fraction)
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  picked = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    picked.append(rng.choice(members, size=max(1, int(round(fraction * len(members)))), replace=False))
  return np.sort(np.concatenate(picked)).astype(np.int64)


def subset_name(dataset: str, fraction: float, seed: int) -> str:
  return f'{dataset}_{100 * fraction:g}pct_seed{seed}.txt'


def write_subset(path: str, entries, header: str) -> None:
  """One entry (an index, or a file name) per line after '#' header lines; written to a temporary file, then
  renamed."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(''.join(f'# {line}\n' for line in header.splitlines()))
    f.write(''.join(f'{entry}\n' for entry in entries))
  os.replace(tmp, path)


def _subset_lines(path: str) -> list[tuple[int, str]]:
  """(line number, stripped text) of a subset file's entries: blank lines and '#' comments left out."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ProtocolError(f'--subset_file={path}: cannot be read ({getattr(e, "strerror", None) or e})') from None
  return [(number, line.strip()) for number, line in enumerate(lines, 1)
          if line.strip() and not line.strip().startswith('#')]


def read_subset(path: str, num_examples: int) -> np.ndarray:
  """The sorted, distinct train-split indices a subset file lists (what write_subset writes for a dataset held in
  memory)."""
  indices = []
  for number, line in _subset_lines(path):
    if not line.isdigit():
      raise ProtocolError(
          f'--subset_file={path} line {number}: {line[:40]!r} is not an index into the train split (a list of file '
          "names, as ImageNet's published lists, is for a streamed dataset; this run's is held in memory)")
    if int(line) >= num_examples:
      raise ProtocolError(f'--subset_file={path} line {number}: index {line} is past the train split '
                          f'({num_examples} examples); was the file written for another dataset?')
    indices.append(int(line))
  if not indices:
    raise ProtocolError(f'--subset_file={path}: lists no index; give a file that `--protocol=semi '
                        '--label_fraction=...` wrote')
  return np.unique(np.asarray(indices, np.int64))


def read_file_names(path: str) -> np.ndarray:
  """The distinct file names a subset file of a streamed dataset lists (sorted): SimCLR's ImageNet lists
  (`n01440764_10026.JPEG`, one a line) or what write_subset writes for a streamed dataset."""
  names = [line for _, line in _subset_lines(path)]
  if not names:
    raise ProtocolError(f'--subset_file={path}: lists no file name; give one file name of the train split per line '
                        "(ImageNet: SimCLR's imagenet_subsets/1percent.txt or 10percent.txt)")
  if all(name.isdigit() for name in names):
    raise ProtocolError(f'--subset_file={path}: lists indices (a subset of a dataset held in memory); a streamed '
                        "dataset's subset lists file names, e.g. n01440764_10026.JPEG")
  return np.unique(np.asarray(names, str))


def match_file_names(listed: np.ndarray, names: np.ndarray, path: str, where: str) -> np.ndarray:
  """The sorted positions in the split (`names`: every example's file name, in split order) of the listed names
  found there; ProtocolError when none is."""
  positions = np.flatnonzero(np.isin(names, listed))
  if not positions.size:
    example = f'; its examples are named like {str(names[0])!r}' if len(names) else ''
    raise ProtocolError(f'--subset_file={path}: none of its {len(listed)} file names (e.g. {str(listed[0])!r}) is in '
                        f'{where}{example}; was the list written for another dataset?')
  return positions.astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# Checks before anything runs (no JAX: bad input costs no start-up, and nothing is written)
# ----------------------------------------------------------------------------------------------------
def check_request(workdir: str, protocol: str, *, label_fraction: float | None, subset_file: str | None,
                  from_scratch: bool):
  """The run's config (a ConfigDict) when the request can run; ProtocolError (one line) when it cannot."""
  if not protocol:
    raise ProtocolError(f'--protocol is required: one of {", ".join(PROTOCOLS)}')
  if protocol not in PROTOCOLS:
    raise ProtocolError(f'--protocol={protocol!r} is unknown; choose one of {", ".join(PROTOCOLS)}')
  if not workdir:
    raise ProtocolError('--workdir is required: a byol_jax run directory (config.json and checkpoints/)')
  if label_fraction is not None:
    check_fraction(label_fraction)
  if protocol == 'semi':
    if (label_fraction is None) == (subset_file is None):
      raise ProtocolError('--protocol=semi needs one of --label_fraction (e.g. 0.01 or 0.1) or --subset_file')
    if subset_file is not None and not os.path.isfile(subset_file):
      raise ProtocolError(f'--subset_file={subset_file}: no such file')
  elif label_fraction is not None or subset_file is not None:
    raise ProtocolError(f'--label_fraction and --subset_file are for --protocol=semi, not {protocol}')
  try:
    config = rundir.load_config(workdir)
  except rundir.RunDirError as e:
    raise ProtocolError(f'--workdir={workdir}: {e}') from None
  if not from_scratch and not _has_checkpoint(workdir):
    raise ProtocolError(f'--workdir={workdir}: no checkpoint in {os.path.join(workdir, rundir.CHECKPOINTS)}; '
                        'train the run first, or give --from_scratch for its random initialisation')
  if protocol == 'semi' and is_streamed(config):  # the subset is named by file names: can it be?
    from byol_jax.data import tfds_source
    features = tfds_source.feature_names(config.data.name, config.data.tfds_data_dir or None)
    if 'file_name' not in features:
      raise ProtocolError(f'--protocol=semi on the streamed dataset {config.data.name}: its examples have no '
                          f'file_name feature (only {", ".join(features)}), so no subset of them can be listed; '
                          'use --protocol=linear or finetune')
    if subset_file is not None:
      read_file_names(subset_file)
  return config


def is_streamed(config) -> bool:
  """Whether the run's dataset is streamed by tfds (ImageNet) rather than held in memory."""
  from byol_jax.data import tfds_source  # imports no TensorFlow
  return config.data.name in tfds_source.STREAMED


def _has_checkpoint(workdir: str) -> bool:
  folder = os.path.join(workdir, rundir.CHECKPOINTS)
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


# ----------------------------------------------------------------------------------------------------
# The run: data, networks and state
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  config: object
  data: dict | None
  info: dict
  mesh: object
  networks: object
  state: object        # the checkpoint's (or, from scratch, the initial) TrainState, replicated over the mesh
  step: int | None     # the checkpoint's step; None from scratch


def load_run(workdir: str, config, from_scratch: bool) -> Run:
  """The run's data and its latest checkpoint (or its initialisation), as byol_jax.embed loads them."""
  import jax
  from byol_jax import checkpoint, config as config_lib, features, optim, state as state_lib, step as step_lib
  config = config_lib.finalize(config)
  mesh = step_lib.make_mesh(config.train.num_devices)
  data, info = features.load_data(config)
  in_channels = data['train'][0].shape[-1] if data is not None else 3
  networks, state = state_lib.build(config, in_channels=in_channels, num_classes=info['num_classes'],
                                    tx=optim.make_optimizer(config))
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  step = None
  if not from_scratch:
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, rundir.CHECKPOINTS))
    try:
      state = ckpt.restore(state)
    finally:
      ckpt.close()
    step = int(jax.device_get(state.step))
  return Run(config, data, info, mesh, networks, state, step)


def _precise_if_untrained(run: Run):
  """The state with precise BatchNorm statistics where training's evaluation would use them (eval.precise_bn:
  'always', or 'untrained' at step 0), so a frozen backbone is measured as the run measures it."""
  from byol_jax import features
  step = 0 if run.step is None else run.step
  mode = run.config.eval.precise_bn
  if not (mode == 'always' or (mode == 'untrained' and step == 0)):
    return run.state
  fn = features.make_batch_stats_fn(run.config, run.networks, run.info, run.mesh)
  stats = features.precise_batch_stats(fn, run.state, features.precise_bn_batches(run.config, run.data), run.mesh)
  return run.state.replace(batch_stats=stats)


def _eval_batch_size(run: Run) -> int:
  n = run.mesh.size
  return max(n, run.config.eval.batch_size // n * n)


# ----------------------------------------------------------------------------------------------------
# frozen and knn: the run's own evaluation (byol_jax/features.py, byol_jax/evaluate.py)
# ----------------------------------------------------------------------------------------------------
def frozen_features(run: Run):
  """(train features, labels, test features, labels) of un-augmented images; the train split as the run's probe
  sees it (eval.num_train)."""
  from byol_jax import features
  state = _precise_if_untrained(run)
  fn = features.make_feature_fn(run.config, run.networks, run.info)
  bs = _eval_batch_size(run)
  ftrain, ytrain, _ = features.extract_features(fn, state, features.eval_batches(run.config, run.data, 'train', bs),
                                                run.mesh)
  ftest, ytest, _ = features.extract_features(fn, state, features.eval_batches(run.config, run.data, 'test', bs),
                                              run.mesh)
  return ftrain, ytrain, ftest, ytest


def run_frozen(run: Run) -> dict:
  from byol_jax import evaluate
  ftrain, ytrain, ftest, ytest = frozen_features(run)
  e = run.config.eval
  probe = evaluate.linear_probe(ftrain, ytrain, ftest, ytest, run.info['num_classes'], solver=e.probe_solver,
                                c=e.probe_c, max_iter=e.probe_max_iter, tol=e.probe_tol, epochs=e.probe_epochs,
                                batch_size=e.probe_batch_size, learning_rate=e.probe_lr,
                                weight_decay=e.probe_weight_decay)
  settings = (dict(solver='lbfgs', c=e.probe_c, iterations=probe['iterations']) if e.probe_solver == 'lbfgs' else
              dict(solver='adam', epochs=e.probe_epochs, lr=e.probe_lr))
  return dict(top1=probe['top1'], train_top1=probe['train_top1'], train_examples=len(ytrain),
              test_examples=len(ytest), settings=settings)


def run_knn(run: Run) -> dict:
  from byol_jax import evaluate
  ftrain, ytrain, ftest, ytest = frozen_features(run)
  e = run.config.eval
  top1 = evaluate.knn_top1(ftrain, ytrain, ftest, ytest, run.info['num_classes'], k=e.knn_k,
                           temperature=e.knn_temperature)
  return dict(top1=top1, train_examples=len(ytrain), test_examples=len(ytest),
              settings=dict(k=e.knn_k, temperature=e.knn_temperature))


# ----------------------------------------------------------------------------------------------------
# linear, finetune, semi: a classifier trained on augmented views
# ----------------------------------------------------------------------------------------------------
def classifier_augment(config, host_crops: bool = False):
  """The trained protocols' views: the run's random crop (its scale and aspect range) and a horizontal flip,
  nothing else (BYOL's linear evaluation and SimCLR's fine-tuning). `host_crops`: the images are crops already
  (a streamed dataset's, made on the host with the same scale and range), the device only flips them."""
  from byol_jax.data import augment
  cfg = augment.augment_config('none')
  cfg.random_crop = not host_crops
  cfg.crop_scale = tuple(config.data.augment.crop_scale)
  cfg.crop_ratio = tuple(config.data.augment.crop_ratio)
  cfg.flip_prob = 0.5
  return cfg


def encoder_parts(run: Run, state):
  """(training-mode graph, inference-mode graph, params, BatchNorm statistics) of the online backbone alone, one
  view per batch (training's graphs hold two)."""
  import jax
  from flax import nnx
  from byol_jax.models.norm import set_views
  params, stats = jax.device_get((state.params, state.batch_stats))
  encoder = nnx.merge(run.networks.online_eval, params, stats).tower.encoder
  set_views(encoder, 1)
  encoder.train()
  train_graph, params, stats = nnx.split(encoder, nnx.Param, nnx.BatchStat)
  encoder.eval()
  eval_graph = nnx.split(encoder, nnx.Param, nnx.BatchStat)[0]
  return train_graph, eval_graph, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def make_optimizer(weight_decay: float, momentum: float):
  """Nesterov SGD at lr 1 (the step scales the update by this step's lr), weight decay on weights (ndim > 1)
  only. optax.sgd applies its lr after the momentum, so this is optax.sgd(schedule, nesterov=True) exactly, and
  one compiled step serves every lr and length."""
  import jax
  import optax
  return optax.chain(
      optax.add_decayed_weights(weight_decay, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
      optax.sgd(1.0, momentum=momentum, nesterov=True))


def lr_schedule(recipe: Recipe, steps: int):
  """recipe.lr, cosine-decayed to 0 over `steps` (no warmup, as BYOL's linear evaluation)."""
  import optax
  return optax.cosine_decay_schedule(recipe.lr, max(1, steps))


@functools.lru_cache(maxsize=None)
def make_train_step(mesh, graph, *, train_encoder: bool, weight_decay: float, momentum: float, augment_items: tuple,
                    image_size: int, seed: int, mean: tuple, std: tuple):
  """jit(shard_map(step)) of one update on a global batch split over the mesh: cross-entropy of the linear head
  on the backbone's features of augmented views; gradients (and, in training mode, BatchNorm statistics) averaged
  over the devices. The backbone is differentiated only when `train_encoder`. Cached: the protocols of one
  process (the tests) share their compiled steps."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax
  from flax import nnx
  from jax.sharding import PartitionSpec as P
  from byol_jax import step as step_lib
  from byol_jax.data import augment
  aug = ml_collections.ConfigDict(dict(augment_items))
  tx = make_optimizer(weight_decay, momentum)

  def per_device(trainable, frozen, stats, opt_state, batch, step, lr):
    view = lambda image, index: augment.augment_view(image, augment.example_key(seed, step, index, 0), aug, 0,
                                                     image_size)
    x = step_lib.normalize(jax.vmap(view)(batch['image'], batch['index']), mean, std)

    def loss_fn(trainable):
      model = nnx.merge(graph, trainable['encoder'] if train_encoder else frozen, stats)
      f = model(x).astype(jnp.float32)
      logits = f @ trainable['head']['w'] + trainable['head']['b']
      ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']))
      return ce, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = jax.lax.pmean(grads, step_lib.AXIS)  # equal shards: the gradient of the global batch's mean
    updates, opt_state = tx.update(grads, opt_state, trainable)
    updates = jax.tree.map(lambda u: lr * u, updates)
    return optax.apply_updates(trainable, updates), stats, opt_state, jax.lax.pmean(loss, step_lib.AXIS)

  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), P(), P(step_lib.AXIS), P(), P()),
                         out_specs=(P(), P(), P(), P()), check_vma=False)
  return tx, jax.jit(mapped, donate_argnums=(0, 2, 3))


@functools.lru_cache(maxsize=None)
def _logits_fn(eval_graph, image_size: int, mean: tuple, std: tuple):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from byol_jax import step as step_lib
  from byol_jax.data import augment

  @jax.jit
  def logits(params, stats, images):
    x = step_lib.normalize(augment.eval_view(images, image_size), mean, std)
    out = nnx.merge(eval_graph, params['encoder'], stats)(x).astype(jnp.float32) @ params['head']['w']
    out = out + params['head']['b']
    return out, out[:, :0]  # (extract_features gathers a second output, z, on every process: nothing here)
  return logits


def classifier_top1(run: Run, eval_graph, encoder_params, stats, head) -> float:
  """Top-1 of the trained classifier on the test split's un-augmented images (BatchNorm in inference mode)."""
  import types
  from byol_jax import features
  logits = _logits_fn(eval_graph, run.config.data.image_size, *_normalisation(run.info))
  held = types.SimpleNamespace(params={'encoder': encoder_params, 'head': head}, batch_stats=stats)
  out, labels, _ = features.extract_features(logits, held, features.eval_batches(
      run.config, run.data, 'test', _eval_batch_size(run)), run.mesh)
  return float(np.mean(np.argmax(out, axis=-1) == labels))


def _normalisation(info) -> tuple[tuple, tuple]:
  return tuple(np.ravel(info['mean']).tolist()), tuple(np.ravel(info['std']).tolist())


def labelled_train(data: dict) -> tuple[np.ndarray, np.ndarray]:
  """The labelled examples of an in-memory train split (STL-10's holds its unlabelled images too, label -1)."""
  images, labels = data['train']
  if np.any(labels < 0):
    keep = np.flatnonzero(labels >= 0)
    images, labels = images[keep], labels[keep]
  return images, labels


def train_labels(config, data: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
  """(label of every labelled train example, its file name or None): what a semi subset is drawn from and
  names. In memory (`data`), the arrays; streamed (None), one pass over the split's file names and labels (no
  image decoded)."""
  if data is not None:
    return labelled_train(data)[1], None
  from byol_jax.data import tfds_source
  d = config.data
  try:
    names, labels = tfds_source.scan_file_names(d.name, d.tfds_data_dir or None, 'train')
  except ValueError as e:
    raise ProtocolError(f'--protocol=semi: {e}') from None
  return labels, names


def labelled_count(run: Run, indices: np.ndarray | None) -> int:
  if indices is not None:
    return len(indices)
  if run.data is not None:
    return len(labelled_train(run.data)[1])
  from byol_jax.data import tfds_source
  return tfds_source.num_examples(run.config.data.name, run.config.data.tfds_data_dir or None, 'train')


def classifier_batches(run: Run, batch: int, indices: np.ndarray | None):
  """(process-local batches {'image', 'label', 'index'} of steps 0, 1, 2, ... (endless), steps per epoch) of the
  labelled train examples `indices` (None: all). In memory: whole images (sources.InMemorySource), cropped on the
  device. Streamed: the train split as the pretraining streams it (tfds_source.ImageNetPipeline) with one crop per
  image (views=1), the run's crop scale and ratio, kept to `indices`. 'index' keys each example's flip (and, in
  memory, its crop) with the step."""
  import jax
  d = run.config.data
  if run.data is not None:
    from byol_jax.data import sources
    images, labels = labelled_train(run.data)
    if indices is not None:
      images, labels = images[indices], labels[indices]
    source = sources.InMemorySource(images, labels, global_batch_size=batch, seed=run.config.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count())
    return (source.batch(step) for step in itertools.count()), source.steps_per_epoch
  from byol_jax.data import tfds_source
  try:
    pipe = tfds_source.ImageNetPipeline('train', batch, d.image_size, run.config.seed, jax.process_index(),
                                        jax.process_count(), d.tfds_data_dir or None, name=d.name,
                                        crop_scale=tuple(d.augment.crop_scale), crop_ratio=tuple(d.augment.crop_ratio),
                                        views=1, subset=indices)
  except ValueError as e:  # a subset too small for a batch in some process's slice of the split
    raise ProtocolError(f'{e}; give a larger subset or a smaller --batch_size') from None

  def batches():
    stream = pipe.batch_iterator(0)
    try:
      for b in stream:
        yield {'image': b['view1_u8'], 'label': b['label'], 'index': b['index']}
    finally:
      stream.close()  # stops the prefetch thread
  return batches(), pipe.steps_per_epoch


def train_classifier(run: Run, protocol: str, recipe: Recipe, indices: np.ndarray | None, log=None) -> dict:
  """Trains the protocol's classifier on the labelled train examples `indices` (None: all), returns its test
  top-1."""
  import jax
  import jax.numpy as jnp
  from byol_jax import features
  n, devices = labelled_count(run, indices), run.mesh.size
  batch = max(devices, min(recipe.batch_size, n) // devices * devices)
  if batch > n:
    raise ProtocolError(f'{n} labelled examples cannot fill a batch on {devices} devices; give a larger '
                        '--label_fraction')
  recipe = dataclasses.replace(recipe, batch_size=batch)
  batches, steps_per_epoch = classifier_batches(run, batch, indices)
  steps = recipe.epochs * steps_per_epoch
  train_encoder = protocol != 'linear'
  state = _precise_if_untrained(run) if not train_encoder else run.state
  train_graph, eval_graph, encoder_params, stats = encoder_parts(run, state)
  graph = train_graph if train_encoder else eval_graph
  dim = state.params['probe']['kernel'].shape[0]  # the backbone's feature width
  head = {'w': np.zeros((dim, run.info['num_classes']), np.float32),
          'b': np.zeros((run.info['num_classes'],), np.float32)}
  trainable = {'encoder': encoder_params, 'head': head} if train_encoder else {'head': head}
  frozen = None if train_encoder else encoder_params
  aug = classifier_augment(run.config, host_crops=run.data is None)
  tx, step_fn = make_train_step(run.mesh, graph, train_encoder=train_encoder,
                                weight_decay=recipe.weight_decay, momentum=recipe.momentum,
                                augment_items=tuple(sorted(aug.to_dict().items())),
                                image_size=run.config.data.image_size, seed=run.config.seed,
                                mean=_normalisation(run.info)[0], std=_normalisation(run.info)[1])
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  trainable, frozen, stats = jax.device_put((trainable, frozen, stats), replicated)
  opt_state = jax.device_put(tx.init(trainable), replicated)
  lr = lr_schedule(recipe, steps)
  loss = None
  for step, b in zip(range(steps), batches):
    trainable, stats, opt_state, loss = step_fn(trainable, frozen, stats, opt_state,
                                                features.shard_batch(run.mesh, b), jnp.int32(step),
                                                jnp.float32(lr(step)))
    if log is not None and (step + 1) % max(1, steps // 10) == 0:
      log(f'{protocol}: step {step + 1}/{steps}, loss {float(loss):.4f}')
  batches.close()
  final_loss = float(loss) if loss is not None else None
  if final_loss is not None and not np.isfinite(final_loss):
    raise ProtocolError(f'{protocol}: the loss became {final_loss} at base lr {recipe.base_lr:g}; give a lower '
                        '--base_lr')
  top1 = classifier_top1(run, eval_graph, trainable.get('encoder', encoder_params), stats, trainable['head'])
  return dict(top1=top1, final_loss=final_loss, train_examples=n, steps=steps,
              settings=dict(dataclasses.asdict(recipe), lr=recipe.lr, optimizer='nesterov sgd, cosine to 0',
                            augment='random crop (scale {}, ratio {}) and flip'.format(
                                *[tuple(round(v, 4) for v in run.config.data.augment[k])
                                  for k in ('crop_scale', 'crop_ratio')])))


# ----------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------
def recipe_for(protocol: str, *, label_fraction: float | None, epochs: int | None, batch_size: int | None,
               base_lr: float | None, weight_decay: float | None) -> Recipe:
  recipe = RECIPES[protocol]
  # (rounded: SimCLR's ImageNet 10% list holds 128,116 of 1,281,167 examples, 9.99994%)
  if protocol == 'semi' and label_fraction is not None and round(label_fraction, 3) < 0.1:
    recipe = dataclasses.replace(recipe, epochs=SEMI_SMALL_FRACTION_EPOCHS)
  given = dict(epochs=epochs, batch_size=batch_size, base_lr=base_lr, weight_decay=weight_decay)
  for name, value in given.items():
    if value is not None and not value >= (1 if name in ('epochs', 'batch_size') else 0):
      raise ProtocolError(f'--{name}={value} must be {">= 1" if name in ("epochs", "batch_size") else ">= 0"}')
  return dataclasses.replace(recipe, **{k: v for k, v in given.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class Subset:
  indices: np.ndarray        # sorted positions in the labelled train split
  labels: np.ndarray         # the label of every labelled train example
  names: np.ndarray | None   # streamed: the file name of every train example; in memory: None
  path: str                  # --subset_file, or where the drawn subset is written
  listed: dict               # streamed --subset_file: {'listed_names', 'found_names'}; else {}


def choose_subset(config, data: dict | None, workdir: str, *, label_fraction: float | None, subset_file: str | None,
                  subset_seed: int, log=None) -> Subset:
  """semi's labelled examples: the file's (indices in memory; file names on a stream, of which those found), or a
  class-balanced draw of label_fraction of each class."""
  labels, names = train_labels(config, data)
  if subset_file is None:
    return Subset(balanced_subset(labels, label_fraction, subset_seed), labels, names, os.path.join(
        workdir, rundir.SUBSETS, subset_name(config.data.name, label_fraction, subset_seed)), {})
  if names is None:
    return Subset(read_subset(subset_file, len(labels)), labels, None, subset_file, {})
  listed = read_file_names(subset_file)
  where = f'{config.data.name}/train'
  indices = match_file_names(listed, names, subset_file, where)
  if log is not None:
    missing = np.setdiff1d(listed, names[indices])
    log(f'semi: {len(indices)} of the {len(listed)} file names {subset_file} lists are in {where}'
        + (f'; not found: {", ".join(missing[:3])}{", ..." if len(missing) > 3 else ""}' if len(missing) else ''))
  return Subset(indices, labels, names, subset_file, dict(listed_names=len(listed), found_names=len(indices)))


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f'{minutes}m{seconds:02d}s'


def evaluate_run(workdir: str, protocol: str, *, label_fraction: float | None = None, subset_file: str | None = None,
                 subset_seed: int = 0, from_scratch: bool = False, epochs: int | None = None,
                 batch_size: int | None = None, base_lr: float | None = None, weight_decay: float | None = None,
                 log=None) -> tuple[dict, str]:
  """Runs one protocol; appends its record to DIR/evaluation.jsonl (and writes the semi subset); returns (record,
  the one-line summary). ProtocolError, before anything is computed or written, for a request that cannot run."""
  config = check_request(workdir, protocol, label_fraction=label_fraction, subset_file=subset_file,
                         from_scratch=from_scratch)
  overrides = dict(epochs=epochs, batch_size=batch_size, base_lr=base_lr, weight_decay=weight_decay)
  recipe = recipe_for(protocol, label_fraction=label_fraction, **overrides) if protocol in TRAINED else None
  t0 = time.time()
  subset = None
  if protocol == 'semi' and is_streamed(config):  # before the network: a list that names nothing fails at once
    subset = choose_subset(config, None, workdir, label_fraction=label_fraction, subset_file=subset_file,
                           subset_seed=subset_seed, log=log)
  run = load_run(workdir, config, from_scratch)
  if protocol in TRAINED and not run.info.get('labelled', True):
    raise ProtocolError(f'--protocol={protocol}: the run\'s images ({config.data.name}) have no labels')
  record = dict(protocol=protocol, from_scratch=bool(from_scratch), checkpoint_step=run.step,
                dataset=config.data.name)
  indices = None
  if protocol == 'semi':
    if subset is None:  # in memory: the labels came with the run's data
      subset = choose_subset(config, run.data, workdir, label_fraction=label_fraction, subset_file=subset_file,
                             subset_seed=subset_seed, log=log)
    indices, labels, names, subset_path = subset.indices, subset.labels, subset.names, subset.path
    counts = np.bincount(labels[indices], minlength=run.info['num_classes'])
    record.update(subset.listed)
    record.update(subset=os.path.relpath(subset_path, workdir) if subset_file is None else subset_file,
                  label_fraction=label_fraction if subset_file is None else len(indices) / len(labels),
                  subset_seed=subset_seed if subset_file is None else None, labels_per_class=counts.tolist())
    recipe = recipe_for(protocol, label_fraction=record['label_fraction'], **overrides)  # a file's fraction
  if protocol == 'frozen':
    result = run_frozen(run)
  elif protocol == 'knn':
    result = run_knn(run)
  else:
    result = train_classifier(run, protocol, recipe, indices, log=log)
  import jax
  if jax.process_index() == 0:
    if protocol == 'semi' and subset_file is None:
      entry = 'One index into the train split' if names is None else 'One file name (tfds file_name) of the train split'
      header = (f'{config.data.name} train split: {len(indices)} of {len(labels)} examples, '
                f'{label_fraction:g} of each class (class-balanced), drawn with numpy default_rng({subset_seed}).\n'
                f'{entry} per line; reuse: --protocol=semi --subset_file=<this file>')
      write_subset(subset_path, indices if names is None else np.sort(names[indices]), header)
  record.update(result, seconds=round(time.time() - t0, 1),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, rundir.EVALUATION), 'a') as f:
      f.write(json.dumps(record) + '\n')
  return record, summary_line(record, workdir)


def summary_line(record: dict, workdir: str) -> str:
  name = record['protocol']
  if name == 'semi':
    name += f' {100 * record["label_fraction"]:.3g}%'  # a published list's 12,811 of 1,281,167: 1%
  if record['from_scratch']:
    name += ' from scratch'
  where = 'random initialisation' if record['checkpoint_step'] is None else f'step {record["checkpoint_step"]}'
  s = record['settings']
  found = (f' ({record["found_names"]} of the {record["listed_names"]} listed file names found)'
           if record.get('found_names', 0) < record.get('listed_names', 0) else '')
  how = (f'{s["epochs"]} epochs of {record["train_examples"]} labels{found}, {record["steps"]} steps of batch '
         f'{s["batch_size"]}, lr {s["lr"]:.3g}' if 'steps' in record else
         f'k {s["k"]}' if name.startswith('knn') else f'{s["solver"]} probe on {record["train_examples"]} examples')
  return (f'byol_jax {name} on {record["dataset"]} ({where}): top-1 {record["top1"]:.4f} | {how} | '
          f'{_duration(record["seconds"])} | {os.path.join(workdir, rundir.EVALUATION)}')


def define_flags() -> None:
  """The command's flags, defined only when it runs as a program (other entry points define --workdir too)."""
  from absl import flags
  flags.DEFINE_string('workdir', None, 'A training run directory (config.json and checkpoints/).')
  flags.DEFINE_string('protocol', None, f'One of {", ".join(PROTOCOLS)}.')
  flags.DEFINE_float('label_fraction', None, 'semi: the fraction of each class\'s train labels, in (0, 1].')
  flags.DEFINE_string('subset_file', None, 'semi: a file of train-split indices, one per line (what semi writes); of '
                      "file names for a streamed dataset (ImageNet: SimCLR's 1percent.txt, 10percent.txt).")
  flags.DEFINE_integer('subset_seed', 0, 'semi: the seed of the class-balanced draw.')
  flags.DEFINE_bool('from_scratch', False, 'Start from the run\'s random initialisation instead of its checkpoint.')
  flags.DEFINE_integer('epochs', None, 'linear, finetune, semi: epochs (default: RECIPES in byol_jax/protocols.py).')
  flags.DEFINE_integer('batch_size', None, 'linear, finetune, semi: global batch (default 256).')
  flags.DEFINE_float('base_lr', None, 'linear, finetune, semi: the lr at batch 256 (lr = base_lr * batch / 256).')
  flags.DEFINE_float('weight_decay', None, 'linear, finetune, semi: weight decay on weights (default 0).')


def command(workdir, protocol, *, stdout=None, stderr=None, **kwargs) -> int:
  """Runs evaluate_run; prints its line (or `error: ...`, one line); returns the exit status (0, or 2)."""
  from byol_jax import config as config_lib
  stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
  try:
    _, line = evaluate_run(workdir, protocol, **kwargs)
  except (ProtocolError, rundir.RunDirError, config_lib.ConfigError, FileNotFoundError) as e:
    print('error: ' + ' '.join(str(e).split()), file=stderr, flush=True)
    return 2
  print(line, file=stdout, flush=True)
  return 0


def main(argv) -> None:
  from absl import flags, logging
  from byol_jax import cli, config as config_lib
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected argument {argv[1]!r}; give --workdir=DIR --protocol=NAME')
  if not f['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:  # the run's device split, before JAX starts (as byol_jax.main does)
    config = check_request(f.workdir, f.protocol, label_fraction=f.label_fraction, subset_file=f.subset_file,
                           from_scratch=f.from_scratch)
    config_lib.set_cpu_devices(config)
  except (ProtocolError, config_lib.ConfigError) as e:
    cli.fail(str(e))
  sys.exit(command(f.workdir, f.protocol, label_fraction=f.label_fraction, subset_file=f.subset_file,
                   subset_seed=f.subset_seed, from_scratch=f.from_scratch, epochs=f.epochs,
                   batch_size=f.batch_size, base_lr=f.base_lr, weight_decay=f.weight_decay,
                   log=lambda line: print(line, file=sys.stderr, flush=True)))
