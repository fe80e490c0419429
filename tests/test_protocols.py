"""The evaluation protocols (byol_jax/protocols.py, `python -m byol_jax.evaluate`) on one configs/tiny.py run: frozen
and knn are the run's own evaluation, linear trains the head only, finetune learns, semi's subset is class-balanced,
written and reused; bad input is one line, exit status 2, nothing written. Then the same on a streamed dataset: a
tiny imagenet2012 that tfds's own builder prepares from fake ILSVRC2012 tars (as tests/test_tfds.py), where semi's
subset is a list of file names (SimCLR's format) and the train stream keeps exactly the listed examples.

Small batches and few epochs; the protocols of one process share their compiled steps.
"""
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from byol_jax import config as config_lib, features, protocols, rundir, train
from configs import tiny
import fake_imagenet  # tests/fake_imagenet.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(epochs=15, batch_size=32)  # 8 steps an epoch of the 256 synthetic images


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, xla_unoptimized_module):
  """A trained configs/tiny.py run (evaluated at steps 0 and 6) and its summary, on 2 of the tests' 8 devices. The
  module's programs are compiled unoptimized (the protocols' numbers are compared with numbers made the same way)."""
  workdir = str(tmp_path_factory.mktemp('protocols'))
  config = tiny.get_config()
  config.train.num_devices = 2
  summary = train.run(config, workdir)
  return workdir, summary


def records(workdir):
  with open(os.path.join(workdir, rundir.EVALUATION)) as f:
    return [json.loads(line) for line in f]


def run_command(workdir, protocol, **kwargs):
  out, err = io.StringIO(), io.StringIO()
  status = protocols.command(workdir, protocol, stdout=out, stderr=err, **kwargs)
  return status, out.getvalue(), err.getvalue()


def test_frozen_and_knn_are_the_runs_own_evaluation(tiny_run):
  workdir, summary = tiny_run
  for protocol, from_scratch, expected in [('frozen', False, summary['final_linear_probe_top1']),
                                           ('knn', False, summary['final_knn_top1']),
                                           # the random initialisation, with precise BatchNorm as at step 0
                                           ('frozen', True, summary['initial_linear_probe_top1'])]:
    status, out, err = run_command(workdir, protocol, from_scratch=from_scratch)
    assert status == 0 and not err, err
    assert len(out.splitlines()) == 1 and out.startswith(f'byol_jax {protocol}'), out
    record = records(workdir)[-1]
    assert (record['protocol'], record['from_scratch']) == (protocol, from_scratch)
    assert record['checkpoint_step'] == (None if from_scratch else 6)
    assert record['top1'] == pytest.approx(expected, abs=1e-6)
    assert f'top-1 {expected:.4f}' in out


def test_linear_trains_the_head_on_a_frozen_backbone(tiny_run):
  workdir, _ = tiny_run
  record, line = protocols.evaluate_run(workdir, 'linear', **SMALL)
  assert record['steps'] == 15 * 8 and record['settings']['lr'] == pytest.approx(0.2 * 32 / 256)
  assert record['final_loss'] < 0.97 * np.log(10), record  # the head starts at zero: chance's loss
  assert 0.0 <= record['top1'] <= 1.0 and 'byol_jax linear on synthetic (step 6)' in line
  # One step of the (cached) compiled step: the head moves, the backbone's BatchNorm statistics do not.
  run = protocols.load_run(workdir, config_lib.finalize(rundir.load_config(workdir)), from_scratch=False)
  _, eval_graph, params, stats = protocols.encoder_parts(run, run.state)
  aug = protocols.classifier_augment(run.config)
  mean, std = protocols._normalisation(run.info)
  tx, step = protocols.make_train_step(run.mesh, eval_graph, train_encoder=False, weight_decay=0.0, momentum=0.9,
                                       augment_items=tuple(sorted(aug.to_dict().items())), image_size=16, seed=0,
                                       mean=mean, std=std)
  dim = run.state.params['probe']['kernel'].shape[0]
  head = {'w': np.zeros((dim, 10), np.float32), 'b': np.zeros(10, np.float32)}
  images, labels = run.data['train']
  batch = {'image': images[:32], 'label': labels[:32], 'index': np.arange(32, dtype=np.int32)}
  trainable, new_stats, _, _ = step({'head': head}, params, stats, tx.init({'head': head}),
                                    features.shard_batch(run.mesh, batch), np.int32(0), np.float32(0.1))
  assert np.abs(np.asarray(trainable['head']['w'])).max() > 0
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(new_stats)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_finetune_learns_and_semi_writes_and_reuses_its_subset(tiny_run):
  workdir, _ = tiny_run
  # From the random initialisation the whole network learns the synthetic classes (chance: 0.1).
  record, line = protocols.evaluate_run(workdir, 'finetune', from_scratch=True, base_lr=0.8, **SMALL)
  assert record['top1'] > 0.25, record
  assert line.startswith('byol_jax finetune from scratch on synthetic (random initialisation): top-1')
  # semi: half of each class, seeded; the subset is written beside the result ...
  record, _ = protocols.evaluate_run(workdir, 'semi', label_fraction=0.5, **SMALL)
  labels = protocols.load_run(workdir, rundir.load_config(workdir), from_scratch=True).data['train'][1]
  class_sizes = np.bincount(labels, minlength=10)
  assert record['labels_per_class'] == [int(round(0.5 * n)) for n in class_sizes]
  path = os.path.join(workdir, record['subset'])
  assert record['subset'] == os.path.join(rundir.SUBSETS, 'synthetic_50pct_seed0.txt')
  subset = protocols.read_subset(path, len(labels))
  np.testing.assert_array_equal(subset, protocols.balanced_subset(labels, 0.5, seed=0))
  # ... and the same file gives the same subset, hence the same network and number.
  again, _ = protocols.evaluate_run(workdir, 'semi', subset_file=path, **SMALL)
  assert again['top1'] == record['top1'] and again['labels_per_class'] == record['labels_per_class']
  assert again['subset'] == path


def test_balanced_subsets_are_seeded_and_subset_files_are_checked(tmp_path):
  labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 100, 100, 100, 100, 50])
  one = protocols.balanced_subset(labels, 0.1, seed=0)
  assert np.bincount(labels[one]).tolist() == [10] * 9 + [5]
  np.testing.assert_array_equal(one, protocols.balanced_subset(labels, 0.1, seed=0))
  assert not np.array_equal(one, protocols.balanced_subset(labels, 0.1, seed=1))
  assert np.bincount(labels[protocols.balanced_subset(labels, 0.001, seed=0)]).tolist() == [1] * 10
  path = str(tmp_path / 'subset.txt')
  protocols.write_subset(path, one, 'header\nsecond line')
  np.testing.assert_array_equal(protocols.read_subset(path, len(labels)), one)
  # STL-10's train split holds its 100k unlabelled images (label -1) after the labelled ones: the protocols train on
  # and draw subsets from the labelled ones only.
  images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1)
  kept_images, kept_labels = protocols.labelled_train({'train': (images, np.array([3, 1, 4, -1, -1, -1]))})
  assert kept_images.ravel().tolist() == [0, 1, 2] and kept_labels.tolist() == [3, 1, 4]
  for text, match in [('n01440764_10026.JPEG\n', 'line 1: .* is not an index'), ('# only\n', 'lists no index'),
                      ('3\n950\n', 'line 2: index 950 is past the train split')]:
    with open(path, 'w') as f:
      f.write(text)
    with pytest.raises(protocols.ProtocolError, match=match):
      protocols.read_subset(path, len(labels))


@pytest.mark.parametrize('args, match', [
    (dict(protocol='fine'), "--protocol='fine' is unknown; choose one of frozen, knn, linear, finetune, semi"),
    (dict(protocol='semi', label_fraction=0.0), r'--label_fraction=0 is outside \(0, 1\]'),
    (dict(protocol='semi', label_fraction=1.5), r'--label_fraction=1.5 is outside \(0, 1\]'),
    (dict(protocol='semi'), 'needs one of --label_fraction'),
    (dict(protocol='knn', label_fraction=0.1), 'are for --protocol=semi'),
    (dict(protocol='linear', epochs=0), '--epochs=0 must be >= 1'),
    (dict(protocol='frozen', no_checkpoint=True), 'no checkpoint in .*; train the run first'),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_run, tmp_path, args, match):
  workdir, _ = tiny_run
  args = dict(args)
  if args.pop('no_checkpoint', False):  # a run directory with its config only
    workdir = str(tmp_path / 'untrained')
    os.makedirs(workdir)
    shutil.copy(os.path.join(tiny_run[0], rundir.CONFIG), workdir)
  before = sorted(os.listdir(workdir)), os.path.getsize(os.path.join(workdir, rundir.CONFIG))
  evaluation = os.path.join(workdir, rundir.EVALUATION)
  size = os.path.getsize(evaluation) if os.path.exists(evaluation) else None
  status, out, err = run_command(workdir, args.pop('protocol'), **args)
  assert status == 2 and not out and len(err.splitlines()) == 1, err
  assert err.startswith('error: ') and re.search(match, err), err
  assert (sorted(os.listdir(workdir)), os.path.getsize(os.path.join(workdir, rundir.CONFIG))) == before
  assert (os.path.getsize(evaluation) if os.path.exists(evaluation) else None) == size


def test_the_command_line_exits_2_with_one_line(tmp_path):
  """python -m byol_jax.evaluate: a workdir that is no run, and an unknown protocol, before JAX computes anything."""
  for args, match in [(['--protocol=knn'], 'config.json: missing or not JSON'),
                      (['--protocol=linearr'], "--protocol='linearr' is unknown")]:
    proc = subprocess.run([sys.executable, '-m', 'byol_jax.evaluate', f'--workdir={tmp_path}', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not proc.stdout, proc
    assert len(proc.stderr.strip().splitlines()) == 1 and match in proc.stderr, proc.stderr
  assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------------
# A streamed dataset: imagenet2012 read by tf.data (byol_jax/data/tfds_source.py)
# ----------------------------------------------------------------------------------------------------
SYNSETS, PER_CLASS = fake_imagenet.CLASSES, fake_imagenet.PER_CLASS
LISTED = [f'{synset}_{i}.JPEG' for synset in SYNSETS for i in range(4)]  # 4 of each class's 10 train images
ABSENT = 'n09999999_1.JPEG'  # a listed name that no example has


@pytest.fixture(scope='module')
def fake_imagenet_dir(tmp_path_factory):
  """A tfds data_dir with imagenet2012 prepared from fake ILSVRC2012 tars (tests/fake_imagenet.py): 30 train images
  (10 of each of 3 classes, named n01440764_0.JPEG ...) in 3 shards, 10 validation images."""
  pytest.importorskip('tensorflow_datasets')
  return fake_imagenet.prepare(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def streamed_run(fake_imagenet_dir, tmp_path_factory):
  """A run directory of configs/imagenet.py (its config only: the protocols run --from_scratch) with a tiny network
  on 2 of the tests' 8 devices, reading fake_imagenet."""
  spec = importlib.util.spec_from_file_location('imagenet_config', os.path.join(ROOT, 'configs', 'imagenet.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config('mlp')
  c.data.tfds_data_dir, c.data.image_size = fake_imagenet_dir, 16
  c.model.backbone, c.model.width = 'resnet_tiny', 4
  c.model.projector_hidden, c.model.projector_dim, c.predictor.hidden = 16, 8, 16
  c.train.batch_size, c.train.num_devices, c.train.compute_dtype = 8, 2, 'float32'
  c.eval.batch_size, c.eval.precise_bn_batches = 8, 1
  workdir = str(tmp_path_factory.mktemp('streamed'))
  rundir.write_config(workdir, c)
  return workdir


def write_list(path, names, header='# a list in the format of SimCLR\'s imagenet_subsets/1percent.txt'):
  with open(path, 'w') as f:
    f.write('\n'.join([header, *names]) + '\n')
  return str(path)


def take(pipeline, steps):
  batches = pipeline.batch_iterator(0)
  return [next(batches) for _ in range(steps)]


def test_a_list_of_file_names_keeps_exactly_those_examples_of_the_stream(fake_imagenet_dir, tmp_path):
  from byol_jax.data import tfds_source
  names, labels = tfds_source.scan_file_names('imagenet2012', fake_imagenet_dir)
  assert sorted(names) == sorted(f'{s}_{i}.JPEG' for s in SYNSETS for i in range(PER_CLASS))
  assert [SYNSETS[label] for label in labels] == [name.split('_')[0] for name in names]
  path = write_list(tmp_path / 'list.txt', LISTED + [ABSENT, LISTED[0]])  # a name twice counts once
  listed = protocols.read_file_names(path)
  assert len(listed) == 13
  positions = protocols.match_file_names(listed, names, path, 'imagenet2012/train')
  assert sorted(names[positions]) == sorted(LISTED)
  pipe = lambda **kw: tfds_source.ImageNetPipeline('train', 4, 16, seed=1, data_dir=fake_imagenet_dir,
                                                   shuffle_buffer=16, prefetch=0, **kw)
  # One process: an epoch of the filtered stream is the 12 listed examples, each once, one crop each: the
  # pretraining pipeline's first crop of the example.
  subset = pipe(views=1, subset=positions)
  assert subset.steps_per_epoch == 3
  epoch = take(subset, 3)
  assert all(set(b) == {'view1_u8', 'label', 'index'} for b in epoch)
  index = np.concatenate([b['index'] for b in epoch])
  assert len(index) == 12 and sorted(index.tolist()) == sorted(positions.tolist())
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in epoch]), labels[index])
  full = take(pipe(), 7)  # the whole epoch of the default pipeline (7 batches of 4)
  crop_of = {i: v for b in full for i, v in zip(b['index'].tolist(), b['view1_u8'])}
  common = [(i, v) for b in epoch for i, v in zip(b['index'].tolist(), b['view1_u8']) if i in crop_of]
  assert common and all(np.array_equal(v, crop_of[i]) for i, v in common)
  # Two processes: each keeps the listed examples of its slice, and both take the same number of steps.
  halves = [pipe(views=1, subset=positions, process_index=p, process_count=2) for p in range(2)]
  fewest = min(np.sum((positions >= h.start) & (positions < h.end)) for h in halves)
  assert halves[0].steps_per_epoch == halves[1].steps_per_epoch == fewest // 2
  for h in halves:
    seen = np.concatenate([b['index'] for b in take(h, h.steps_per_epoch)])
    assert set(seen.tolist()) <= set(positions.tolist()) and np.all((seen >= h.start) & (seen < h.end))
  with pytest.raises(ValueError, match='cifar10 has no file_name feature'):
    tfds_source.scan_file_names('cifar10', str(tmp_path))


@pytest.mark.slow  # trains three classifiers (about 20 s of CPU, most of it compiling)
@pytest.mark.usefixtures('xla_unoptimized')
def test_linear_and_semi_train_on_the_stream(streamed_run, fake_imagenet_dir, tmp_path, monkeypatch):
  workdir = streamed_run
  seen = []  # the indices of every example the classifier trained on, batch by batch
  make_batches = protocols.classifier_batches

  def spy(run, batch, indices):
    batches, steps_per_epoch = make_batches(run, batch, indices)

    def recorded():
      try:
        for b in batches:
          seen.append(np.asarray(b['index']))
          yield b
      finally:
        batches.close()
    return recorded(), steps_per_epoch
  monkeypatch.setattr(protocols, 'classifier_batches', spy)
  small = dict(epochs=1, batch_size=4, from_scratch=True)
  # linear: the whole train split streamed (30 images: 7 batches of 4), tested on the validation split.
  status, out, err = run_command(workdir, 'linear', **small)
  assert status == 0 and not err, err
  assert out.startswith('byol_jax linear from scratch on imagenet2012 (random initialisation): top-1') and \
      '1 epochs of 30 labels, 7 steps of batch 4' in out, out
  record = records(workdir)[-1]
  assert (record['protocol'], record['train_examples'], record['steps']) == ('linear', 30, 7)
  assert len(set(np.concatenate(seen).tolist())) == 28 and 0.0 <= record['top1'] <= 1.0
  # semi on a list of file names: exactly the 12 listed examples that exist, each once in the epoch.
  from byol_jax.data import tfds_source
  names, labels = tfds_source.scan_file_names('imagenet2012', fake_imagenet_dir)
  path = write_list(tmp_path / 'list.txt', LISTED + [ABSENT])
  seen.clear()
  status, out, err = run_command(workdir, 'semi', subset_file=path, **small)
  assert status == 0 and not err, err
  assert '1 epochs of 12 labels (12 of the 13 listed file names found), 3 steps of batch 4' in out, out
  record = records(workdir)[-1]
  assert (record['listed_names'], record['found_names'], record['train_examples']) == (13, 12, 12)
  assert record['labels_per_class'][:3] == [4, 4, 4] and sum(record['labels_per_class']) == 12
  trained_on = np.concatenate(seen)
  assert len(trained_on) == 12 and sorted(names[trained_on]) == sorted(LISTED)
  # semi with a label fraction: a class-balanced subset from one pass over the labels, written as file names ...
  record, _ = protocols.evaluate_run(workdir, 'semi', label_fraction=0.34, **small)
  assert record['subset'] == os.path.join(rundir.SUBSETS, 'imagenet2012_34pct_seed0.txt')
  written = protocols.read_file_names(os.path.join(workdir, record['subset']))
  np.testing.assert_array_equal(written, np.sort(names[protocols.balanced_subset(labels, 0.34, seed=0)]))
  assert record['labels_per_class'][:3] == [3, 3, 3] and len(written) == 9
  # ... that trains the same network again from the file.
  again, _ = protocols.evaluate_run(workdir, 'semi', subset_file=os.path.join(workdir, record['subset']), **small)
  assert again['top1'] == record['top1'] and again['final_loss'] == record['final_loss']
  assert (again['listed_names'], again['found_names']) == (9, 9)


@pytest.mark.parametrize('case, match', [
    ('no names', "lists no file name; give one file name of the train split per line"),
    ('not text', 'cannot be read'),
    ('indices', 'lists indices .* a streamed dataset\'s subset lists file names'),
    ('no name found', "none of its 1 file names \\(e.g. 'n09999999_1.JPEG'\\) is in imagenet2012/train"),
    ('no file_name feature', 'on the streamed dataset imagenet2012: its examples have no file_name feature'),
])
def test_bad_subset_lists_on_the_stream_are_one_line_and_write_nothing(streamed_run, tmp_path, monkeypatch, case,
                                                                       match):
  from byol_jax.data import tfds_source
  workdir = streamed_run
  path = str(tmp_path / 'list.txt')
  if case == 'not text':
    with open(path, 'wb') as f:
      f.write(b'\xff\xfe\x00n01440764_0.JPEG\n')
  else:
    write_list(path, {'no names': [], 'indices': ['3', '17'], 'no name found': [ABSENT]}.get(case, LISTED))
  if case == 'no file_name feature':  # no streamed dataset byol_jax reads lacks it: imagenet2012 as cifar10's
    monkeypatch.setattr(tfds_source, 'feature_names', lambda name, data_dir=None: ('id', 'image', 'label'))
  before = sorted(os.listdir(workdir))
  evaluation = os.path.join(workdir, rundir.EVALUATION)
  size = os.path.getsize(evaluation) if os.path.exists(evaluation) else None
  status, out, err = run_command(workdir, 'semi', subset_file=path, from_scratch=True)
  assert status == 2 and not out and len(err.splitlines()) == 1, err
  assert err.startswith('error: --') and re.search(match, err), err
  assert sorted(os.listdir(workdir)) == before
  assert (os.path.getsize(evaluation) if os.path.exists(evaluation) else None) == size
