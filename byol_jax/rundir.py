"""The run directory: what a run writes, read back. The one contract between the library and whatever drives
runs (byol_jax.study, scripts, your own tools): they agree on these files, not on Python objects.

  DIR/config.json       the run's config (`python -m byol_jax.main --config=configs/run.py:DIR` runs it again)
  DIR/metrics.jsonl     one JSON record per logged step and per evaluation ('step' in each)
  DIR/summary.json      the end-of-run summary: the run is done
  DIR/diverged.json     {'message'}: the run stopped on a non-finite loss or parameters
  DIR/checkpoints/      orbax checkpoints, one folder per step (the run resumes from the latest)
  DIR/tensorboard/      TensorBoard events
  DIR/*.png, DIR/real_vs_theory.json   plots; the spectra beside the theory (linear-type predictors)
  DIR/log.txt           a study's log of the run
  DIR/.lock             who trains the run now (`lock`: one process at a time)
  DIR/evaluation.jsonl  one JSON record per evaluation protocol run on it (python -m byol_jax.evaluate)
  DIR/subsets/          the label subsets the semi-supervised protocol trained on, one index per line

`status(DIR)`: 'new' (nothing trained yet), 'partial' (resumable), 'done' or 'diverged'. `identity(held)`: the
settings of a config.json that make the run the run it is; two runs with equal identities give the same numbers.
No JAX here: reading a run directory is cheap.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import sys
import time

CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
SUMMARY = 'summary.json'
DIVERGED = 'diverged.json'
CHECKPOINTS = 'checkpoints'
TENSORBOARD = 'tensorboard'
LOG = 'log.txt'
REAL_VS_THEORY = 'real_vs_theory'  # .json and .png
LOCK = '.lock'  # held (fcntl.flock) by the process training the run; the kernel releases it when that process dies
EVALUATION = 'evaluation.jsonl'  # byol_jax.protocols: one record per protocol run
SUBSETS = 'subsets'  # byol_jax.protocols: the semi-supervised label subsets
STATUSES = ('new', 'partial', 'done', 'diverged')


class RunDirError(ValueError):
  """A run directory that cannot be used as asked; the message is one line naming the file and the fix."""


# ----------------------------------------------------------------------------------------------------
# Identity
# ----------------------------------------------------------------------------------------------------
# Settings that change how a run executes, not its numbers: the device split, progress and logging, checkpoint
# cadence, where the data lies, and kernel choices that compute the same function. They are left out of a run's
# identity, so a study resumes with or without --parallel, and on another machine.
EXECUTION_KEYS = ('train.num_devices', 'train.cpu_devices', 'train.progress_bar', 'train.log_every',
                  'train.checkpoint_every', 'train.keep_checkpoints', 'model.conv_impl', 'model.max_pool_impl',
                  'data.path', 'data.tfds_data_dir', 'eval.batch_size')
# Keys added to the config schema after runs were recorded, with the value that reproduces those runs: a
# config.json without the key is read with it (a recorded run stays the run it was).
LEGACY_VALUES = {'predictor.centre_with': 'batch_mean', 'eval.precise_bn': 'never', 'eval.precise_bn_batches': 100,
                 'predictor.projection_threshold': 0.0, 'model.projector_output_bias': True,
                 'model.zero_init_last_bn_scale': False, 'predictor.output_bias': True,
                 'optim.lars_lr_applied': 'before_momentum', 'loss.isoloss': False, 'model.padding': 'symmetric'}


def config_json(config) -> dict:
  """A ConfigDict as config.json holds it."""
  return json.loads(config.to_json_best_effort())


def _parent(tree: dict, key: str, create: bool):
  """(the dict holding a dotted key's leaf, the leaf's name); None for the dict where the path is missing or not a
  dict (`create`: missing levels are added)."""
  *path, leaf = key.split('.')
  node = tree
  for part in path:
    node = node.setdefault(part, {}) if create and isinstance(node, dict) else (
        node.get(part) if isinstance(node, dict) else None)
  return (node if isinstance(node, dict) else None), leaf


def with_legacy_values(held: dict) -> dict:
  """A copy of a config.json's content with the absent keys of LEGACY_VALUES filled in."""
  out = copy.deepcopy(held)
  for key, value in LEGACY_VALUES.items():
    node, leaf = _parent(out, key, create=True)
    if node is not None:
      node.setdefault(leaf, value)
  return out


def identity(held: dict) -> dict:
  """The settings that make a run the run it is: config.json without EXECUTION_KEYS, absent keys of
  LEGACY_VALUES filled in. Two runs with equal identities give the same numbers."""
  ident = with_legacy_values(held)
  for key in EXECUTION_KEYS:
    if key == 'data.path' and (ident.get('data') or {}).get('name') == 'image_folder':
      continue  # there the folder is the dataset itself, not where a known dataset lies
    node, leaf = _parent(ident, key, create=False)
    if node is not None:
      node.pop(leaf, None)
  return ident


run_identity = identity  # the name byol_jax.study has always used


def first_difference(a, b, prefix='') -> str:
  """'key: <a's value> there, <b's value> now' for the first key where two nested dicts differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    for k in list(a) + [k for k in b if k not in a]:
      if a.get(k) != b.get(k):
        return first_difference(a.get(k), b.get(k), f'{prefix}{k}.')
  return f'{prefix.rstrip(".")}: {a!r} there, {b!r} now'


def same_run(held: dict, config) -> bool:
  return identity(held) == identity(config_json(config))


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
def read_json(path: str):
  """The JSON content of path, or None when it is missing or unreadable (a file being written, a cut file)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError):
    return None


def write_json(path: str, content, indent: int = 2) -> None:
  """Writes atomically (a temporary file, then a rename): a reader never sees half a file."""
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    json.dump(content, f, indent=indent)
  os.replace(tmp, path)


def write_config(workdir: str, config) -> None:
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, f'.{CONFIG}.{os.getpid()}.tmp')
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, os.path.join(workdir, CONFIG))


def read_config(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, CONFIG))


def load_config(workdir: str):
  """The run's config as a ConfigDict of the current schema (byol_jax.config.base_config(): its types, tuples
  included), from config.json with LEGACY_VALUES for the keys it predates. RunDirError when there is none or it
  holds a key the schema lacks."""
  import ml_collections
  from byol_jax import config as config_lib
  path = os.path.join(workdir, CONFIG)
  held = read_json(path)
  if not isinstance(held, dict):
    raise RunDirError(f'{path}: missing or not JSON; give a run directory written by byol_jax')
  config = config_lib.base_config()

  def as_config(value):  # JSON has lists where configs hold tuples (ConfigDict's to_json writes tuples as lists)
    return tuple(as_config(v) for v in value) if isinstance(value, list) else value

  def fill(node, values, prefix):
    free = not list(node.keys())  # a group the schema leaves open (data.augment: filled from its preset)
    for key, value in values.items():
      if free:
        node[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else as_config(value)
      elif key not in node:
        raise RunDirError(f'{path}: key {prefix}{key} is not in the config schema (a newer byol_jax wrote it?)')
      elif isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
        fill(node[key], value, f'{prefix}{key}.')
      else:
        with node.ignore_type():
          node[key] = as_config(value) if isinstance(node[key], tuple) else value

  fill(config, with_legacy_values(held), '')
  return config


def write_summary(workdir: str, summary: dict) -> None:
  write_json(os.path.join(workdir, SUMMARY), summary)


def read_summary(workdir: str) -> dict | None:
  """summary.json of a finished run, or None (not finished; a summary of a preempted run does not count)."""
  s = read_json(os.path.join(workdir, SUMMARY))
  return None if s is None or s.get('preempted') else s


def write_diverged(workdir: str, message: str) -> None:
  write_json(os.path.join(workdir, DIVERGED), {'message': message})


def read_diverged(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, DIVERGED))


def read_metrics(path: str, warn=None) -> list[dict]:
  """The records of a metrics.jsonl (path: the file or its run directory).

  A cut last line (a process killed mid-write) is dropped, with one line of warning (to `warn`, default stderr);
  a bad line elsewhere raises RunDirError naming the file and the line number."""
  if os.path.isdir(path):
    path = os.path.join(path, METRICS)
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    lines = f.read().decode(errors='replace').split('\n')
  records = []
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or 'step' not in record:
        raise ValueError('not a record with a step')
    except ValueError:
      if i == last:
        print(f'warning: {path} line {i + 1}: a cut last record (the process was killed while writing it); '
              'dropped', file=warn or sys.stderr, flush=True)
        break
      raise RunDirError(f'{path} line {i + 1}: not a JSON record; repair or delete that line') from None
    records.append(record)
  return records


def last_step(workdir: str) -> int:
  """The step of the last whole record of DIR/metrics.jsonl (0 if none), read from its tail only: a study's
  progress line asks every 2 s, and evaluation records (spectra) run to several KB, so the tail read is generous
  and a record cut by it is skipped."""
  try:
    with open(os.path.join(workdir, METRICS), 'rb') as f:
      f.seek(0, 2)
      f.seek(max(0, f.tell() - 65536))
      lines = f.read().decode(errors='ignore').strip().splitlines()
  except OSError:
    return 0
  for line in reversed(lines):
    try:
      return int(json.loads(line)['step'])
    except (ValueError, KeyError, TypeError):
      continue
  return 0


# ----------------------------------------------------------------------------------------------------
# Status
# ----------------------------------------------------------------------------------------------------
def status(workdir: str) -> str:
  """'done' (summary.json), 'diverged' (diverged.json), 'partial' (metrics or checkpoints: resumable), or 'new'
  (nothing trained: no folder, or a config.json alone, as a study writes it before launching)."""
  if read_summary(workdir) is not None:
    return 'done'
  if os.path.exists(os.path.join(workdir, DIVERGED)):
    return 'diverged'
  if os.path.exists(os.path.join(workdir, METRICS)) or os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
    return 'partial'
  return 'new'


def finished(workdir: str) -> bool:
  return status(workdir) in ('done', 'diverged')


def check_same_run(workdir: str, config, fix: str = 'use another --workdir or remove it') -> None:
  """RunDirError (one line: the first differing key, both values) when DIR/config.json holds a run of another
  identity than `config`; nothing when there is no config.json (or an unreadable one: nothing was trained)."""
  held = read_config(workdir)
  if held is not None and not same_run(held, config):
    diff = first_difference(identity(held), identity(config_json(config)))
    raise RunDirError(f'{workdir} holds a run of another config ({diff}); {fix}')


# ----------------------------------------------------------------------------------------------------
# The lock: one process trains a run at a time
# ----------------------------------------------------------------------------------------------------
_held: dict = {}  # realpath of a run directory -> [fd, count]: the locks this process holds (re-entrant)
HELD_FD_ENV = 'BYOL_JAX_RUN_LOCK_FD'  # a study hands the lock it holds to the process it starts on the run


def _lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK)


def holder(workdir: str) -> str:
  """Who holds the run's lock, as the lock file says ('process 123 (since 2026-12-06 05:40:41 UTC)')."""
  try:
    with open(_lock_path(workdir)) as f:
      pid, _, since = f.read().strip().partition(' ')
    return f'process {int(pid)} (since {since})'
  except (OSError, ValueError):
    return 'another process'


def _inherited_fd(path: str):
  """The lock's descriptor when the process that started this one handed its lock over (HELD_FD_ENV), else None."""
  fd = os.environ.get(HELD_FD_ENV)
  try:
    got, want = os.fstat(int(fd)), os.stat(path)
  except (TypeError, ValueError, OSError):
    return None
  return int(fd) if (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino) else None


def try_lock(workdir: str) -> bool:
  """Takes the run's lock without waiting; False when another process holds it. Re-entrant within a process."""
  key = os.path.realpath(workdir)
  if key in _held:
    _held[key][1] += 1
    return True
  os.makedirs(workdir, exist_ok=True)
  path = _lock_path(workdir)
  inherited = _inherited_fd(path)
  if inherited is not None:  # the lock is ours already: the descriptor shares the starting process's lock
    _held[key] = [inherited, 1]
    return True
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return False
  os.ftruncate(fd, 0)
  os.pwrite(fd, f'{os.getpid()} {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}\n'.encode(), 0)
  _held[key] = [fd, 1]
  return True


def lock_fd(workdir: str) -> int | None:
  """The descriptor of the run's lock if this process holds it (to hand over to a process it starts, with
  HELD_FD_ENV), else None."""
  entry = _held.get(os.path.realpath(workdir))
  return entry[0] if entry else None


def unlock(workdir: str) -> None:
  key = os.path.realpath(workdir)
  entry = _held.get(key)
  if entry is None:
    return
  entry[1] -= 1
  if entry[1] == 0:
    del _held[key]
    os.close(entry[0])  # the kernel releases the lock with the last descriptor of it


@contextlib.contextmanager
def locked(workdir: str):
  """Holds the run's lock; RunDirError (one line: the holder's pid and since when) when another process has it."""
  if not try_lock(workdir):
    raise RunDirError(f'{workdir} is in use: {holder(workdir)} is training this run; wait for it to end, or '
                      'stop it first')
  try:
    yield
  finally:
    unlock(workdir)


def busy(workdir: str) -> str | None:
  """Who trains the run now (holder()), or None when no other process holds its lock."""
  if not os.path.exists(_lock_path(workdir)) or os.path.realpath(workdir) in _held:
    return None
  if try_lock(workdir):
    unlock(workdir)
    return None
  return holder(workdir)

