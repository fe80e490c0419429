"""Run identity, and the study folders' runs: their status, runs shared between studies (--reuse), and records
(--record: finished runs without checkpoints, committed, so a study spans sittings and machines)."""
from __future__ import annotations

import copy
import json
import os
import shutil

from byol_jax.study.plan import StudyError


def config_json(c) -> dict:
  return json.loads(c.to_json_best_effort())


# Settings that change how a run executes, not its numbers: the device split, progress and logging, checkpoint
# cadence, where the data lies, and kernel choices that compute the same function. They are left out of a run's
# identity, so a study resumes with or without --parallel, and on another machine.
EXECUTION_KEYS = ('train.num_devices', 'train.cpu_devices', 'train.progress_bar', 'train.log_every',
                  'train.checkpoint_every', 'train.keep_checkpoints', 'model.conv_impl', 'model.max_pool_impl',
                  'data.path', 'data.tfds_data_dir', 'eval.batch_size')
# Keys added to the config schema after runs were recorded, with the value that reproduces those runs: a
# config.json without the key is read with it (a recorded run stays the run it was).
LEGACY_VALUES = {'predictor.centre_with': 'batch_mean', 'eval.precise_bn': 'never', 'eval.precise_bn_batches': 100}


def run_identity(held: dict) -> dict:
  """The settings that make a run the run it is: config.json without EXECUTION_KEYS, absent keys of
  LEGACY_VALUES filled in. Two runs with equal identities give the same numbers."""
  ident = copy.deepcopy(held)
  for key, value in LEGACY_VALUES.items():
    *path, leaf = key.split('.')
    node = ident
    for part in path:
      node = node.setdefault(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.setdefault(leaf, value)
  for key in EXECUTION_KEYS:
    if key == 'data.path' and (ident.get('data') or {}).get('name') == 'image_folder':
      continue  # there the folder is the dataset itself, not where a known dataset lies
    *path, leaf = key.split('.')
    node = ident
    for part in path:
      node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.pop(leaf, None)
  return ident


def run_dir(workdir: str, row: str, seed: int) -> str:
  return os.path.join(workdir, row, f'seed{seed}')


def read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def run_status(path: str, config) -> str:
  """'done', 'diverged', 'partial' (resumable), 'new'; raises StudyError when the folder holds a run of
  another config."""
  cfg = os.path.join(path, 'config.json')
  if not os.path.exists(cfg):
    return 'new'
  with open(cfg) as f:
    try:
      held = json.load(f)
    except json.JSONDecodeError:
      held = None
  if held is None or run_identity(held) != run_identity(config_json(config)):
    if held is not None:
      diff = first_difference(run_identity(held), run_identity(config_json(config)))
      raise StudyError(f'{path} holds a run of another config ({diff}); use another --workdir or remove it')
    return 'new'
  if os.path.exists(os.path.join(path, 'summary.json')):
    return 'done'
  if os.path.exists(os.path.join(path, 'diverged.json')):
    return 'diverged'
  return 'partial'


def find_reusable(config, reuse_dirs) -> str | None:
  """A finished run of exactly this config in another study folder (DIR/<row>/seed<k>/), or None.

  Studies share rows (table3's `linear` is predictors' `linear`): equal configs are the same run, so a
  study can link it instead of training it again."""
  want = run_identity(config_json(config))
  for d in reuse_dirs:
    for row in sorted(os.listdir(d)) if os.path.isdir(d) else []:
      row_dir = os.path.join(d, row)
      for seed_dir in sorted(os.listdir(row_dir)) if os.path.isdir(row_dir) else []:
        path = os.path.join(row_dir, seed_dir)
        held = read_json(os.path.join(path, 'config.json'))
        if os.path.exists(os.path.join(path, 'summary.json')) and held is not None and run_identity(held) == want:
          return path
  return None


def link_run(path: str, source: str) -> None:
  """DIR/<row>/seed<k> -> source, as a relative symlink (study folders that move together keep working)."""
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  os.symlink(os.path.relpath(os.path.realpath(source), os.path.realpath(parent)), path)


RECORD_SKIP = ('checkpoints', 'tensorboard')  # what a record leaves out: large, and not needed to aggregate


def _copy_run(source: str, dest: str) -> None:
  """Copies a finished run folder without RECORD_SKIP, atomically (a temporary folder, then a rename)."""
  tmp = f'{dest}.tmp{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(os.path.realpath(source), tmp, ignore=lambda d, names: [n for n in names if n in RECORD_SKIP])
  if os.path.lexists(dest):
    shutil.rmtree(dest) if os.path.isdir(dest) and not os.path.islink(dest) else os.remove(dest)
  os.replace(tmp, dest)


def import_record(runs: list, record: str) -> int:
  """Marks done every pending run that `record` holds finished with the same identity, copying it into the run's
  folder (config, metrics, summary, plots). Returns how many."""
  count = 0
  for r in runs:
    if r['status'] == 'done':
      continue
    source = run_dir(record, r['row'], r['seed'])
    if os.path.realpath(source) == os.path.realpath(r['path']) or not os.path.exists(
        os.path.join(source, 'summary.json')):
      continue
    held = read_json(os.path.join(source, 'config.json'))
    if held is None or run_identity(held) != run_identity(config_json(r['config'])):
      raise StudyError(f'{source} holds a run of another config '
                       f'({first_difference(run_identity(held or {}), run_identity(config_json(r["config"])))}); '
                       'point --record at this study\'s record')
    os.makedirs(os.path.dirname(r['path']), exist_ok=True)
    _copy_run(source, r['path'])
    r['status'] = 'done'
    count += 1
  return count


def export_run(path: str, record: str, row: str, seed: int) -> None:
  """Adds a finished run to the record (without checkpoints and TensorBoard events)."""
  dest = run_dir(record, row, seed)
  if os.path.realpath(dest) != os.path.realpath(path):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _copy_run(path, dest)


def first_difference(a, b, prefix='') -> str:
  if isinstance(a, dict) and isinstance(b, dict):
    for k in list(a) + [k for k in b if k not in a]:
      if a.get(k) != b.get(k):
        return first_difference(a.get(k), b.get(k), f'{prefix}{k}.')
  return f'{prefix.rstrip(".")}: {a!r} there, {b!r} now'
