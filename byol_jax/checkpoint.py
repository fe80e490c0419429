"""Checkpoints with orbax, verified: atomic (written to a temporary folder, then renamed), periodic and final, each
with the SHA-256 of every file it holds.

orbax makes a save atomic but does not notice damage after it: its compressed chunks carry no checksum, so flipped
bytes restore as wrong numbers, and a truncated or missing file stops every restart with a TensorStore traceback.
So each save ends by writing `<step>/SHA256SUMS` (the digest of each file of the step folder, in `sha256sum`'s
format, written to a temporary file and renamed: it is there whole or not at all), and a restart picks the newest
step folder that checks against it:

- a step whose files do not match their digests (changed, truncated, missing or unreadable) is moved aside to
  `<step>.corrupt` with one line, and the run resumes from the previous one;
- a folder named like a step that is no orbax checkpoint (empty, or someone else's files) is moved aside to
  `<step>.incomplete` with one line, so that it neither stops the restart nor blocks the save of that step;
- a complete orbax checkpoint without SHA256SUMS (written before digests existed, or cut between orbax's rename
  and the digests) is restored unverified, with one line;
- none readable: one line, and training starts from step 0.

A save cut short by SIGKILL leaves only a temporary folder, which orbax ignores and deletes on start. A save that
fails for want of space (ENOSPC, or a quota) deletes what it wrote and raises CheckpointError, one line naming the
intact checkpoint. Digests are computed at save and restore only, never in the training step.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from byol_jax import rundir

DIGESTS = 'SHA256SUMS'
METADATA = '_CHECKPOINT_METADATA'  # orbax writes it into every finalized step folder
_STEP_NAME = re.compile(r'^(0|[1-9]\d*)$')  # orbax's step folder names (no prefix, no padding)
_TMP_SUFFIX = '.orbax-checkpoint-tmp'
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(rundir.RunDirError):
  """A checkpoint that cannot be saved; the message, one line, names it and what to do (the entry points print
  it as one line, as every RunDirError)."""


def step_folders(directory: str) -> list[int]:
  """The steps of the folders in `directory` named like orbax's step folders, newest first ([]: no folder).
  Unverified: a listing."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return sorted((int(n) for n in names if _STEP_NAME.match(n) and os.path.isdir(os.path.join(directory, n))),
                reverse=True)


def file_digests(folder: str) -> dict[str, str]:
  """{path relative to `folder`: SHA-256 hex digest} of every file under it except SHA256SUMS, sorted."""
  out = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      if rel == DIGESTS:
        continue
      with open(path, 'rb') as f:
        out[rel] = hashlib.file_digest(f, 'sha256').hexdigest()
  return out


def write_digests(folder: str) -> None:
  """Writes folder/SHA256SUMS atomically (temporary file, fsync, rename); `sha256sum -c SHA256SUMS` in the folder
  checks it."""
  text = ''.join(f'{digest}  {rel}\n' for rel, digest in file_digests(folder).items())
  tmp = os.path.join(folder, DIGESTS + '.tmp')
  with open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(folder, DIGESTS))
  fd = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def read_digests(folder: str) -> dict[str, str] | None:
  """{relative path: digest} from folder/SHA256SUMS; None when there is no such file."""
  path = os.path.join(folder, DIGESTS)
  if not os.path.exists(path):
    return None
  out = {}
  with open(path) as f:
    for line in f:
      digest, _, rel = line.rstrip('\n').partition('  ')
      out[rel] = digest
  return out


def verify(folder: str) -> str | None:
  """Why the step folder does not match its SHA256SUMS (one phrase), or None when every listed file does."""
  try:
    expected = read_digests(folder)
    if not expected:
      return f'{DIGESTS} is empty' if expected is not None else f'no {DIGESTS}'
    for rel, digest in expected.items():
      path = os.path.join(folder, rel)
      if not os.path.isfile(path):
        return f'{rel} is missing'
      with open(path, 'rb') as f:
        if hashlib.file_digest(f, 'sha256').hexdigest() != digest:
          return f'{rel} does not match its SHA-256'
  except OSError as e:
    return f'unreadable ({e.strerror or e})'
  return None


def is_disk_full(error: BaseException) -> bool:
  """True when `error`, or one it was raised from, says the disk (or a quota) is full: OSError's errno, or the
  text TensorStore and orbax wrap it in."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
      return True
    if any(os.strerror(code) in str(error) for code in _DISK_FULL):
      return True
    error = error.__cause__ or error.__context__
  return False


def _move_aside(path: str, suffix: str) -> str:
  """Renames `path` to `path.suffix` (`.suffix.1`, ... when taken); returns the new path."""
  dest, n = f'{path}.{suffix}', 0
  while os.path.exists(dest):
    n += 1
    dest = f'{path}.{suffix}.{n}'
  os.rename(path, dest)
  return dest


class Checkpointer:
  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    if jax.process_index() == 0 and os.path.isdir(self.directory):
      self._set_aside_foreign(lambda msg: print(msg, flush=True))  # before orbax lists (and warns about) them
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True, create=True))
    self._latest = None
    self._checked = False  # whether the step folders were checked (once, at the first latest_step())

  def latest_step(self) -> int | None:
    """The newest checkpoint that verifies (or has no digests); on the first call, damaged and foreign step
    folders are moved aside, one line each (see the module docstring). None when there is none."""
    if not self._checked:
      self._latest = self._check_folders()
      self._checked = True
    return self._latest

  def _check_folders(self) -> int | None:
    """Process 0 checks and moves aside; every process then reads its choice (the folders are shared)."""
    main_process = jax.process_index() == 0
    chosen = -1
    if main_process:
      chosen = self._newest_good(lambda msg: print(msg, flush=True))
      chosen = -1 if chosen is None else chosen
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      chosen = int(multihost_utils.broadcast_one_to_all(np.int32(chosen)))
    self.manager.reload()  # after the moves: orbax must not list a folder that was moved aside
    return None if chosen < 0 else chosen

  def _set_aside_foreign(self, say) -> None:
    """Moves aside the folders named like a step that hold no orbax checkpoint (an empty folder, someone else's
    files): orbax would list them as checkpoints, fail to restore them and refuse to save that step."""
    for step in step_folders(self.directory):
      path = self.path(step)
      if not os.path.exists(os.path.join(path, DIGESTS)) and not os.path.exists(os.path.join(path, METADATA)):
        dest = _move_aside(path, 'incomplete')
        say(f'checkpoint folder {path} holds no complete checkpoint (no {DIGESTS}, no orbax {METADATA}): '
            f'moved aside to {dest}')

  def _newest_good(self, say) -> int | None:
    """Checks the step folders from the newest down to the first that verifies, moving aside the damaged ones."""
    moved = []
    good = None
    for step in step_folders(self.directory):
      path = self.path(step)
      has_digests = os.path.exists(os.path.join(path, DIGESTS))
      problem = verify(path) if has_digests else None
      if problem is None:
        good = step
        if not has_digests:
          say(f'checkpoint {path} has no {DIGESTS} (saved before checkpoints had digests, or cut before them): '
              'restoring it unverified')
        break  # older checkpoints are checked when they become the newest
      dest = _move_aside(path, 'corrupt')
      moved.append(dest)
      say(f'checkpoint {path} is damaged ({problem}): moved aside to {dest}')
    if good is None and moved:
      say(f'no readable checkpoint in {self.directory} (moved aside: {", ".join(moved)}): a run starts '
          'again from step 0')
    return good

  def save(self, state) -> None:
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return
    try:
      self.manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))
      self.manager.wait_until_finished()
      if jax.process_index() == 0:
        write_digests(self.path(step))
    except Exception as e:  # noqa: BLE001 - only a full disk is turned into one line; anything else re-raised
      if not is_disk_full(e):
        raise
      raise CheckpointError(self._disk_full_message(step)) from None
    self._latest, self._checked = step, True

  def _disk_full_message(self, step: int) -> str:
    """Deletes what the failed save of `step` wrote (its temporary folder, or a step folder left without digests)
    and says which checkpoint is intact."""
    removed = []
    if jax.process_index() == 0:
      for name in sorted(os.listdir(self.directory)):
        path = os.path.join(self.directory, name)
        if name.startswith(f'{step}{_TMP_SUFFIX}') or (name == str(step) and verify(path) is not None):
          shutil.rmtree(path, ignore_errors=True)
          removed.append(path)
    self.manager.reload()
    intact = [s for s in self.manager.all_steps() if s != step]
    where = (f'the last intact checkpoint is step {intact[-1]} ({self.path(intact[-1])})' if intact else
             'no checkpoint was saved before it')
    return (f'no space left on the device while saving checkpoint {step} to {self.path(step)} '
            f'({"removed the unfinished " + ", ".join(removed) if removed else "nothing of it was left"}); '
            f'{where}: free space on {self.directory} and run the same command to '
            + ('resume' if intact else 'start again'))

  def restore(self, template, step: int | None = None):
    """Restores `step` (default: `latest_step()`, the newest that verifies) into the structure, shapes, dtypes and
    shardings of `template` (a live or abstract state)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
        flax.serialization.to_state_dict(template))
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return flax.serialization.from_state_dict(template, restored)

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def close(self):
    self.manager.close()
