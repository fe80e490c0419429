"""Runs shared between studies (--reuse) and study records (--record: finished runs without checkpoints,
committed, so a study spans sittings and machines). Run identity: byol_jax/rundir.py."""
from __future__ import annotations

import os
import shutil

from byol_jax import rundir
from byol_jax.study.plan import StudyError, run_dir  # noqa: F401  (run_dir: read here by tests and scripts)
# Run identity lives with the run directory; these names stay importable from here.
from byol_jax.rundir import (EXECUTION_KEYS, LEGACY_VALUES, config_json, first_difference, read_json,  # noqa: F401
                             run_identity)


def find_reusable(config, reuse_dirs) -> str | None:
  """A finished run of exactly this config in another study folder (DIR/<row>/seed<k>/), or None.

  Studies share rows (table3's `linear` is predictors' `linear`): equal configs are the same run, so a
  study can link it instead of training it again."""
  for d in reuse_dirs:
    for row in sorted(os.listdir(d)) if os.path.isdir(d) else []:
      row_dir = os.path.join(d, row)
      for seed_dir in sorted(os.listdir(row_dir)) if os.path.isdir(row_dir) else []:
        path = os.path.join(row_dir, seed_dir)
        held = rundir.read_config(path)
        if rundir.status(path) == 'done' and held is not None and rundir.same_run(held, config):
          return path
  return None


def link_run(path: str, source: str) -> None:
  """DIR/<row>/seed<k> -> source, as a relative symlink (study folders that move together keep working)."""
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  os.symlink(os.path.relpath(os.path.realpath(source), os.path.realpath(parent)), path)


# What a record leaves out: large and not needed to aggregate, or about a process, not the run.
RECORD_SKIP = (rundir.CHECKPOINTS, rundir.TENSORBOARD, rundir.LOCK)


def _copy_run(source: str, dest: str) -> None:
  """Copies a finished run folder without RECORD_SKIP, atomically (a temporary folder, then a rename)."""
  tmp = f'{dest}.tmp{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(os.path.realpath(source), tmp, ignore=lambda d, names: [n for n in names if n in RECORD_SKIP])
  if os.path.lexists(dest):
    shutil.rmtree(dest) if os.path.isdir(dest) and not os.path.islink(dest) else os.remove(dest)
  os.replace(tmp, dest)


def import_record(runs: list, record: str) -> int:
  """Copies into its folder every unfinished run that `record` holds finished with the same identity (config,
  metrics, summary, plots). Returns how many."""
  count = 0
  for r in runs:
    if rundir.finished(r.path):
      continue
    source = run_dir(record, r.row, r.seed)
    if os.path.realpath(source) == os.path.realpath(r.path) or rundir.status(source) != 'done':
      continue
    try:
      rundir.check_same_run(source, r.config, fix="point --record at this study's record")
    except rundir.RunDirError as e:
      raise StudyError(str(e)) from None
    os.makedirs(os.path.dirname(r.path), exist_ok=True)
    _copy_run(source, r.path)
    count += 1
  return count


def export_run(run, record: str) -> None:
  """Adds a finished run to the record (without checkpoints and TensorBoard events)."""
  dest = run_dir(record, run.row, run.seed)
  if os.path.realpath(dest) != os.path.realpath(run.path):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _copy_run(run.path, dest)


def export_missing(runs, record: str) -> None:
  """Adds to the record the finished runs it lacks."""
  for r in runs:
    if rundir.status(r.path) == 'done' and rundir.status(run_dir(record, r.row, r.seed)) != 'done':
      export_run(r, record)
