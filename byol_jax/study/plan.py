"""A study config, checked, and its runs: one typed `Run` per (row, seed), the base with the row's switches, in
its own run directory DIR/<row>/seed<k>/ (byol_jax/rundir.py)."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re

import ml_collections

from byol_jax import config as config_lib, rundir, switches


ROW_NAME = re.compile(r'^[A-Za-z0-9_-]+$')


class StudyError(ValueError):
  """A study config that cannot run; the message names the row or key."""


FIGURES = ('phase_diagram', 'lr_sweep', 'recruitment')  # what a study config may name in `figures` (results.FIGURES draws them)


@dataclasses.dataclass
class Run:
  """One run of a study: (row, seed k), its run config, and its run directory."""
  row: str
  seed: int
  config: ml_collections.ConfigDict
  path: str

  @property
  def label(self) -> str:
    return f'{self.row}/seed{self.seed}'

  @property
  def key(self) -> str:  # as --runs writes it
    return f'{self.row}:{self.seed}'

  @property
  def steps(self) -> int:
    return self.config.train.steps

  def status(self) -> str:
    return rundir.status(self.path)


def run_dir(workdir: str, row: str, seed: int) -> str:
  return os.path.join(workdir, row, f'seed{seed}')


def ordered_keys(cd) -> list[str]:
  """Keys of a ConfigDict in the order the config file wrote them (ConfigDict iterates sorted)."""
  if cd is None:
    return []
  if hasattr(cd, 'to_json'):
    return list(json.loads(cd.to_json()).keys())
  return list(cd.keys())


def run_config(study, row: str, seed_index: int):
  """The run config of (row, seed k): base + the row's switches, seed + k, no per-run progress bar."""
  c = copy.deepcopy(study.base)
  args = study.rows[row]
  try:
    epochs = switches.apply_switches(c, args)
  except ValueError as e:
    raise StudyError(f'row {row!r} ({args!r}): {e}') from None
  if epochs is not None:
    c.train.steps = max(1, int(round(study.base.train.steps * epochs / 100)))
  c.seed = c.seed + seed_index
  c.train.progress_bar = False
  try:
    return config_lib.finalize(c)
  except config_lib.ConfigError as e:
    raise StudyError(f'row {row!r} ({args!r}): {e}') from None


def comparisons(study) -> list[tuple[str, str]]:
  """(row, other) pairs to compare seed by seed: every row against study.reference, then study.pairs."""
  rows = ordered_keys(study.rows)
  ref = study.get('reference') or ''
  out = [(r, ref) for r in rows if ref and r != ref]
  for pair in (study.get('pairs') or '').split(','):
    if pair.strip():
      a, _, b = pair.strip().partition('-')
      out.append((a, b))
  return out


def figures(study) -> list[str]:
  """The figures the study config names (`figures`: comma-separated, of FIGURES); None when it names none, i.e. has
  no `figures` key (then results.py draws every figure the rows fit)."""
  if 'figures' not in study:
    return None
  names = [f.strip() for f in (study.figures or '').split(',') if f.strip()]
  unknown = [f for f in names if f not in FIGURES]
  if unknown:
    raise StudyError(f'figures: {", ".join(map(repr, unknown))} unknown; a study draws {", ".join(FIGURES)}')
  return names


def plan(study, workdir: str = '', rows_flag: str = '', num_devices: int | None = None) -> list[Run]:
  """Checks the study config and every run config of the selected rows; returns their runs, seed-major (seed 0 of
  every row in table order, then seed 1, ...), in DIR/<row>/seed<k>/. Raises StudyError naming the problem."""
  for key in ('base', 'rows', 'seeds'):
    if key not in study:
      raise StudyError(f'the study config has no {key!r}')
  seeds = study.seeds
  if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
    raise StudyError(f'seeds={seeds!r} must be an integer >= 1')
  rows = ordered_keys(study.rows)
  if not rows:
    raise StudyError('the study has no rows')
  for r in rows:
    if not ROW_NAME.match(r):
      raise StudyError(f'row name {r!r}: use letters, digits, _ and - only (it names a folder)')
    if not isinstance(study.rows[r], str):
      raise StudyError(f'row {r!r}: its value must be a string of switches, got {study.rows[r]!r}')
  for r in ordered_keys(study.get('paper')):
    if r not in rows:
      raise StudyError(f'paper entry {r!r} names no row; the rows are {", ".join(rows)}')
  for a, b in comparisons(study):
    for r, what in ((a, 'a compared row'), (b, 'the reference')):
      if r not in rows:
        raise StudyError(f'{what} {r!r} (reference / pairs) names no row; the rows are {", ".join(rows)}')
  figures(study)
  selected = rows
  if rows_flag:
    selected = [r.strip() for r in rows_flag.split(',') if r.strip()]
    unknown = [r for r in selected if r not in rows]
    if unknown:
      raise StudyError(f'--rows: {", ".join(map(repr, unknown))} not in the study; its rows are {", ".join(rows)}')
    selected = [r for r in rows if r in selected]  # table order
  runs = []
  for r in selected:  # check every row's config before any run
    for k in range(seeds):
      c = run_config(study, r, k)
      try:
        config_lib.validate(c, num_devices)
      except config_lib.ConfigError as e:
        raise StudyError(f'row {r!r} ({study.rows[r]!r}): {e}') from None
      runs.append(Run(r, k, c, run_dir(workdir, r, k)))
  runs.sort(key=lambda x: (x.seed, selected.index(x.row)))
  return runs


def parse_runs(items) -> list[tuple[str, int]]:
  """--runs's 'row:seed' items as [(row, seed)] in the order given. Raises StudyError for a malformed item."""
  pairs = []
  for item in items:
    row, _, seed = item.strip().rpartition(':')
    if not row or not seed.isdigit():
      raise StudyError(f'--runs: {item!r} is not row:seed (e.g. directpred:4)')
    pairs.append((row, int(seed)))
  return pairs


def select_runs(runs: list[Run], pairs) -> list[Run]:
  """The runs named by pairs [(row, seed)], in that order. Raises StudyError for a pair the plan lacks."""
  by_key = {(r.row, r.seed): r for r in runs}
  missing = [f'{row}:{seed}' for row, seed in pairs if (row, seed) not in by_key]
  if missing:
    raise StudyError(f'--runs: {", ".join(missing)} not in the study (check the row names, --rows and seeds)')
  return [by_key[p] for p in dict.fromkeys(pairs)]
