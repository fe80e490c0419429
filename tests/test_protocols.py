"""The evaluation protocols (byol_jax/protocols.py, `python -m byol_jax.evaluate`) on one configs/tiny.py run: frozen
and knn are the run's own evaluation, linear trains the head only, finetune learns, semi's subset is class-balanced,
written and reused; bad input is one line, exit status 2, nothing written.

Small batches and few epochs; the protocols of one process share their compiled steps.
"""
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(epochs=15, batch_size=32)  # 8 steps an epoch of the 256 synthetic images


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A trained configs/tiny.py run (evaluated at steps 0 and 6) and its summary."""
  workdir = str(tmp_path_factory.mktemp('protocols'))
  summary = train.run(tiny.get_config(), workdir)
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
