"""Studies: many ordinary runs from one config, and one table of their results.

  python -m byol_jax.study --config=configs/study/<name>.py --workdir=DIR [--rows=a,b]
      [--config.seeds=1] [--config.base.train.steps=40] [--config.base.optim.lr=0.05 ...] [--reuse=DIR2,...]
      [--parallel=2]

A study config (configs/study/*.py) holds
  name   the study's name (for the tables);
  base   an ordinary run config (byol_jax.config.base_config() and changes);
  rows   row name -> its changes to base, as the comma-separated switches of configs/stl10.py's ARGS
         ('linear_sym,no_ema', 'rho0.5,eps0'), in table order (the order the config file writes them);
  seeds  runs per row (>= 1);
  paper  row name -> {'value': the paper's number, 'table': where it is}, for the rows the paper reports.

Every (row, seed k) is an ordinary run, byol_jax.train.run(config, DIR/<row>/seed<k>/), with the row's
switches applied to base and config.seed = (base seed, or the row's seed<n>) + k, so seed0 of a row is
exactly `python -m byol_jax.main` with the same config. In a study, `epochs<n>` scales base.train.steps by
n/100 (the base stands for the paper's 100 epochs). Runs go seed-major (seed 0 of every row, then seed 1,
...), so a first complete table exists after a third of a 3-seed study.

Running the same command again skips finished runs (summary.json present, config.json equal to the run's
config), resumes an interrupted one from its checkpoint, and refuses (before any run) a run folder that
holds a different config. A run that diverges (NaN) is recorded (diverged.json) and counted as such.
SIGTERM stops the study after the current run has saved its checkpoint.

`--parallel=N` trains N runs at a time, each in its own process pinned to one CPU core with one JAX device
(base.train.cpu_devices=1, which is part of each run's config: repeat --parallel to resume or extend). On the
2-core machine --parallel=2 gives 1.2-1.3x the throughput of one 2-device process (docs/study.md, "Sizing").

`--reuse=DIR2,DIR3` links (relative symlink) a run whose config equals a finished run in another study
folder instead of training it again: studies share rows (table3's `linear` is predictors' `linear`).

After each run and at the end: DIR/results.json, DIR/results.md, DIR/results.png (see `write_results`), and
for a weight decay x EMA rate grid of linear-predictor rows DIR/phase_diagram.png / .json (byol_jax/phase_map.py).
Means are over the finished seeds of a row; std is the sample standard deviation (ddof=1) over seeds,
null with one seed. Collapse indicators and the collapse rule: byol_jax/collapse.py.

A bad study config (an unknown switch, a row whose run config fails byol_jax.config.validate, seeds < 1, a
--rows name not in rows, a paper entry for no row) stops before any run with one line naming it, exit 2.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import signal
import sys
import threading
import time

import numpy as np

from byol_jax import collapse, phase_map
from byol_jax import config as config_lib

ROW_NAME = re.compile(r'^[A-Za-z0-9_-]+$')
METRICS = ('linear_probe_top1', 'knn_top1', 'initial_linear_probe_top1', 'initial_knn_top1') + collapse.KEYS
# What runs with a linear-type predictor report of their spectra beside the theory (byol_jax/real_vs_theory.py).
THEORY_METRICS = ('loglog_slope_topk', 'loglog_r2_topk', 'loglog_slope', 'alignment_topk_final', 'asymmetry_final')


class StudyError(ValueError):
  """A study config that cannot run; the message names the row or key."""


def _stl10_module():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return config_lib.load_config_module(os.path.join(root, 'configs', 'x.py'), 'stl10.py')


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
    epochs = _stl10_module().apply_switches(c, args)
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


def _config_json(c) -> dict:
  return json.loads(c.to_json_best_effort())


def plan(study, rows_flag: str = '', num_devices: int | None = None) -> list[dict]:
  """Checks the study config and the workdir-independent parts of every run; returns the runs of the
  selected rows, seed-major: [{'row', 'seed', 'config'}]. Raises StudyError naming the problem."""
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
      runs.append({'row': r, 'seed': k, 'config': c})
  runs.sort(key=lambda x: (x['seed'], selected.index(x['row'])))
  return runs


def run_dir(workdir: str, row: str, seed: int) -> str:
  return os.path.join(workdir, row, f'seed{seed}')


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
  if held != _config_json(config):
    if held is not None:
      diff = _first_difference(held, _config_json(config))
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
  want = _config_json(config)
  for d in reuse_dirs:
    for row in sorted(os.listdir(d)) if os.path.isdir(d) else []:
      row_dir = os.path.join(d, row)
      for seed_dir in sorted(os.listdir(row_dir)) if os.path.isdir(row_dir) else []:
        path = os.path.join(row_dir, seed_dir)
        if (os.path.exists(os.path.join(path, 'summary.json'))
            and _read_json(os.path.join(path, 'config.json')) == want):
          return path
  return None


def link_run(path: str, source: str) -> None:
  """DIR/<row>/seed<k> -> source, as a relative symlink (study folders that move together keep working)."""
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  os.symlink(os.path.relpath(os.path.realpath(source), os.path.realpath(parent)), path)


def _first_difference(a, b, prefix='') -> str:
  if isinstance(a, dict) and isinstance(b, dict):
    for k in list(a) + [k for k in b if k not in a]:
      if a.get(k) != b.get(k):
        return _first_difference(a.get(k), b.get(k), f'{prefix}{k}.')
  return f'{prefix.rstrip(".")}: {a!r} there, {b!r} now'


# ----------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------
def _stat(values: list) -> dict:
  vals = [float(v) for v in values if v is not None]
  n = len(vals)
  return {'mean': float(np.mean(vals)) if n else None,
          'std': float(np.std(vals, ddof=1)) if n > 1 else None,
          'per_seed': [None if v is None else float(v) for v in values], 'n': n}


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def collect(study, workdir: str) -> dict:
  """results.json's content from the run folders (finished seeds 0..seeds-1 of every row)."""
  rows = {}
  paper = study.get('paper') or {}
  for r in ordered_keys(study.rows):
    done, diverged, summaries = [], [], []
    for k in range(study.seeds):
      path = run_dir(workdir, r, k)
      s = _read_json(os.path.join(path, 'summary.json'))
      if s is not None and not s.get('preempted'):
        done.append(k)
        summaries.append(s)
      elif os.path.exists(os.path.join(path, 'diverged.json')):
        diverged.append(k)
    entry = {'args': study.rows[r], 'seeds_done': done, 'seeds_diverged': diverged}
    for key in METRICS:
      source = key if key.startswith('initial_') else f'final_{key}'
      entry[key] = _stat([s.get(source) for s in summaries])
    rvt = [s['real_vs_theory'] for s in summaries if s.get('real_vs_theory')]
    if rvt:
      entry['real_vs_theory'] = {k: _stat([r.get(k) for r in rvt]) for k in THEORY_METRICS}
    verdicts = [collapse.collapse_verdict(s) for s in summaries]
    n_coll = sum(v[0] for v in verdicts)
    entry['collapsed'] = (n_coll > len(verdicts) / 2) if verdicts else None
    entry['collapsed_seeds'] = n_coll
    entry['collapse_reasons'] = [v[1] for v in verdicts]
    p = paper.get(r) if r in ordered_keys(paper) else None
    entry['paper'] = None if p is None else p.get('value')
    entry['paper_table'] = None if p is None else p.get('table')
    entry['steps'] = summaries[0]['steps'] if summaries else None
    entry['verdict'] = _verdict(len(done), n_coll, len(diverged), study.seeds)
    rows[r] = entry
  b = study.base
  base = {'dataset': b.data.name, 'image_size': b.data.image_size, 'backbone': b.model.backbone,
          'width': b.model.width, 'projector': f'{b.model.projector_hidden}-{b.model.projector_dim}',
          'method': b.method, 'predictor (unless the row sets it)': b.predictor.kind,
          'steps': b.train.steps, 'batch_size': b.train.batch_size, 'optimizer': b.optim.name,
          'lr': b.optim.lr, 'lr_schedule': b.optim.schedule, 'weight_decay': b.optim.weight_decay,
          'ema_tau': b.ema.tau_base, 'ema_schedule': b.ema.schedule, 'target_init': b.ema.target_init,
          'probe_train_examples': b.eval.num_train or 'all',
          'probe': (f'L-BFGS logistic regression, C = {b.eval.probe_c}' if b.eval.probe_solver == 'lbfgs'
                    else f'Adam, {b.eval.probe_epochs} epochs'),
          'seed': b.seed}
  return {'study': study.get('name', ''), 'seeds': study.seeds, 'base': base,
          'std': 'sample standard deviation over seeds (ddof=1); null with one finished seed',
          'collapse_rule': (f'collapsed when z_std*sqrt(d) < {collapse.Z_STD_THRESHOLD} or z effective rank < '
                            f'{collapse.Z_RANK_THRESHOLD} at the final evaluation (test split); a row is '
                            'collapsed when most of its finished seeds are (byol_jax/collapse.py)'),
          'rows': rows}


def _verdict(n_done, n_coll, n_div, seeds) -> str:
  if n_done == 0 and n_div == 0:
    return 'not run'
  parts = []
  if n_done:
    if n_coll == 0:
      parts.append('not collapsed')
    elif n_coll == n_done:
      parts.append(f'collapsed ({n_coll}/{n_done} seeds)')
    else:
      parts.append(f'partly collapsed ({n_coll}/{n_done} seeds)')
  if n_div:
    parts.append(f'diverged ({n_div} seed{"s" if n_div > 1 else ""})')
  if n_done + n_div < seeds:
    parts.append(f'{n_done + n_div}/{seeds} seeds run')
  return ', '.join(parts)


def _fmt(stat: dict, digits=3, with_std=True) -> str:
  if stat['mean'] is None:
    return '-'
  s = f'{stat["mean"]:.{digits}f}'
  if with_std and stat['std'] is not None:
    s += f' ± {stat["std"]:.{digits}f}'
  return s


def results_markdown(res: dict) -> str:
  b = res['base']
  initial = [v for e in res['rows'].values() for v in e['initial_linear_probe_top1']['per_seed'] if v is not None]
  lines = [
      f'# Study `{res["study"]}`',
      '',
      f'Base: {b["dataset"]}, {b["backbone"]} width {b["width"]}, {b["method"]}, {b["steps"]} steps of batch '
      f'{b["batch_size"]}, {b["optimizer"]} lr {b["lr"]} ({b["lr_schedule"]}), weight decay {b["weight_decay"]}, '
      f'EMA {b["ema_tau"]} ({b["ema_schedule"]}, target init {b["target_init"]}); linear probe on '
      f'{b["probe_train_examples"]} train examples ({b["probe"]}), top-1 on the whole test split.',
      f'Seeds: {res["seeds"]} per row; mean ± {res["std"]}.',
      f'Accuracies are fractions of the {b["dataset"]} test split. "paper" is the paper\'s STL-10 top-1 in % '
      '(ResNet-18, 100 epochs, 5 seeds): on another dataset, network and training length it is there to '
      'compare orderings and collapse with, not values.',
  ]
  if initial:
    lines.append(f'The randomly initialised network (step 0 of these runs) gives a linear probe of '
                 f'{np.mean(initial):.3f} (mean over runs): accuracy alone does not show collapse, the '
                 'collapse indicators do.')
  lines += [f'Collapse rule: {res["collapse_rule"]}.', '',
            '| row | args | paper (STL-10 %) | linear probe top-1 | per seed | kNN top-1 | z_std·√d | '
            'z eff. rank | feature eff. rank | verdict |',
            '|---|---|---|---|---|---|---|---|---|---|']
  for name, e in res['rows'].items():
    paper = '-' if e['paper'] is None else f'{e["paper"]:.2f} ({e["paper_table"]})'
    per_seed = ', '.join('-' if v is None else f'{v:.3f}' for v in e['linear_probe_top1']['per_seed']) or '-'
    lines.append(f'| {name} | `{e["args"] or "(base)"}` | {paper} | {_fmt(e["linear_probe_top1"])} | {per_seed} | '
                 f'{_fmt(e["knn_top1"])} | {_fmt(e["z_std_times_sqrt_d"], 2)} | {_fmt(e["z_effective_rank"], 1)} | '
                 f'{_fmt(e["feature_effective_rank"], 1)} | {e["verdict"]} |')
  theory_rows = {name: e['real_vs_theory'] for name, e in res['rows'].items() if e.get('real_vs_theory')}
  if theory_rows:
    lines += ['', 'Linear-type predictors beside the theory (byol_jax/real_vs_theory.py, at the end of training): '
              'the log-log slope of p_j^2 against s_j over the top 10 modes of F and its R^2 (theory: slope 1), '
              'the same over all modes above 1e-6 s_max, the mean |cos(W_p u_j, u_j)| of the top 10 eigenvectors '
              'of F (theory: 1; random: ~0.07 at d = 128), and ||W_p - W_p^T|| / ||W_p|| (theory: 0).', '',
              '| row | slope, top 10 | R^2, top 10 | slope, all modes | alignment, top 10 | asymmetry |',
              '|---|---|---|---|---|---|']
    for name, t in theory_rows.items():
      lines.append(f'| {name} | {_fmt(t["loglog_slope_topk"], 2)} | {_fmt(t["loglog_r2_topk"], 2)} | '
                   f'{_fmt(t["loglog_slope"], 2)} | {_fmt(t["alignment_topk_final"], 2)} | '
                   f'{_fmt(t["asymmetry_final"], 2)} |')
  return '\n'.join(lines) + '\n'


def results_plot(res: dict, path: str) -> None:
  """Three panels sharing the rows: our linear probe (mean, ± std, each seed; the random-network probe
  marked), the paper's STL-10 number on its own axis, and z_std*sqrt(d) with the collapse threshold.
  Points with error bars, not bars from 0: the probe values differ by points where a bar from 0 would
  hide them, and a bar cut off above 0 would exaggerate them."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = list(res['rows'])
  rows = [res['rows'][n] for n in names]
  y = np.arange(len(names))[::-1]
  fig, axes = plt.subplots(1, 3, figsize=(15, max(3.2, 1.6 + 0.45 * len(names))), sharey=True,
                           gridspec_kw={'width_ratios': [2, 1.2, 1.2]}, constrained_layout=True)

  def panel(ax, key, color_by_collapse=True):
    for yi, e in zip(y, rows):
      st = e[key]
      if st['mean'] is None:
        continue
      color = 'tab:red' if (color_by_collapse and e['collapsed']) else 'tab:blue'
      ax.errorbar(st['mean'], yi, xerr=st['std'] or 0, fmt='o', color=color, capsize=4, ms=7)
      seeds = [v for v in st['per_seed'] if v is not None]
      ax.plot(seeds, [yi] * len(seeds), 'x', color='k', ms=5, alpha=0.6)

  ax = axes[0]
  panel(ax, 'linear_probe_top1')
  initial = [v for e in rows for v in e['initial_linear_probe_top1']['per_seed'] if v is not None]
  if initial:
    ax.axvline(np.mean(initial), ls='--', color='grey', label=f'random network (step 0): {np.mean(initial):.3f}')
    ax.legend(loc='best', fontsize=8)
  ax.set(xlabel=f'linear probe top-1 ({res["base"]["dataset"]}, fraction)',
         title=f'{res["study"]}: ours (o mean ± std, x seeds; red: collapsed)')
  ax.set_yticks(y)
  ax.set_yticklabels(names)
  ax = axes[1]
  for yi, e in zip(y, rows):
    if e['paper'] is not None:
      ax.plot(e['paper'], yi, 'D', color='tab:green', ms=7)
    else:
      ax.text(0.5, yi, 'not in the paper', transform=ax.get_yaxis_transform(), ha='center', va='center',
              fontsize=8, color='grey')
  values = [e['paper'] for e in rows if e['paper'] is not None]
  if values:
    ax.set_xlim(min(values) - 5, max(values) + 5)
  ax.set(xlabel='paper: STL-10 top-1 (%), ResNet-18, 100 ep', title='paper (another dataset: compare order)')
  ax = axes[2]
  panel(ax, 'z_std_times_sqrt_d')
  ax.axvline(collapse.Z_STD_THRESHOLD, ls=':', color='tab:red', label=f'collapse below {collapse.Z_STD_THRESHOLD}')
  ax.set(xlabel='z_std·√d (1: spread, 0: collapsed)', title='collapse indicator', xlim=(-0.05, 1.3))
  ax.legend(loc='best', fontsize=8)
  for a in axes:
    a.grid(alpha=0.3)
  axes[0].set_ylim(-0.6, len(names) - 0.4)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_results(study, workdir: str) -> dict:
  """Writes DIR/results.json, results.md, results.png (each atomically), and phase_diagram.png / .json when
  the rows form a weight decay x EMA rate grid (byol_jax/phase_map.py); returns the results."""
  res = collect(study, workdir)
  os.makedirs(workdir, exist_ok=True)

  def atomic(name, write):
    tmp = os.path.join(workdir, f'.{name}.{os.getpid()}.tmp')  # several study processes may share DIR (--rows)
    write(tmp)
    os.replace(tmp, os.path.join(workdir, name))

  def json_writer(p):
    with open(p, 'w') as f:
      json.dump(res, f, indent=2)

  def md_writer(p):
    with open(p, 'w') as f:
      f.write(results_markdown(res))

  atomic('results.json', json_writer)
  atomic('results.md', md_writer)
  atomic('results.png', lambda p: results_plot(res, p + '.png') or os.replace(p + '.png', p))
  row_configs = {r: _config_json(run_config(study, r, 0)) for r in ordered_keys(study.rows)}
  try:
    phase_map.write(res, row_configs, atomic)
  except Exception as e:  # a figure must not stop a study: results.json has the numbers
    print(f'warning: phase_diagram.png not written: {type(e).__name__}: {e}', file=sys.stderr, flush=True)
  return res


# ----------------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def _last_step(path: str) -> int:
  """The step of the last line of path/metrics.jsonl (0 if none)."""
  try:
    with open(os.path.join(path, 'metrics.jsonl'), 'rb') as f:
      f.seek(0, 2)
      f.seek(max(0, f.tell() - 4096))
      lines = f.read().decode(errors='ignore').strip().splitlines()
    return int(json.loads(lines[-1])['step']) if lines else 0
  except (OSError, ValueError, KeyError, IndexError):
    return 0


class Progress:
  """One line for the whole study: runs done / total, the current run and its step, time per step, ETA.

  On a terminal the line is redrawn in place every 2 s; otherwise it is printed when a run starts.
  ETA = steps left x seconds per step measured over the runs finished in this invocation (evaluations,
  compilation and start-up included)."""

  def __init__(self, name, total, done, out=None):
    self.name, self.total, self.done = name, total, done
    self.out = out or sys.stdout
    self.tty = hasattr(self.out, 'isatty') and self.out.isatty()
    self.lock = threading.Lock()
    self.current = None  # (label, path, steps)
    self.steps_left_after = 0
    self.seconds = 0.0
    self.steps_measured = 0
    self.run_start = None
    self._stop = threading.Event()
    self._thread = None
    if self.tty:
      self._thread = threading.Thread(target=self._loop, daemon=True)
      self._thread.start()

  def _loop(self):
    while not self._stop.wait(2.0):
      self.draw()

  def line(self) -> str:
    parts = [f'study {self.name}: {self.done}/{self.total} runs done']
    step_now = 0
    if self.current:
      label, path, steps = self.current
      step_now = _last_step(path)
      parts.append(f'now {label} step {step_now}/{steps} ({_duration(time.time() - self.run_start)})')
    if self.steps_measured:
      rate = self.seconds / self.steps_measured
      left = self.steps_left_after + (self.current[2] - step_now if self.current else 0)
      parts.append(f'{rate:.2f} s/step')
      parts.append(f'ETA {_duration(rate * left)}')
    elif self.current:
      parts.append('ETA after the first run')
    if not self.current and self.done >= self.total:
      parts = parts[:1]
    return ' | '.join(parts)

  def draw(self, final=False):
    with self.lock:
      if self.tty:
        self.out.write('\r' + self.line() + '\033[K' + ('\n' if final else ''))
      else:
        self.out.write(self.line() + '\n')
      self.out.flush()

  def message(self, text):
    with self.lock:
      self.out.write(('\r\033[K' if self.tty else '') + text + '\n')
      self.out.flush()
    if self.tty:
      self.draw()

  def start(self, label, path, steps, steps_left_after):
    self.current = (label, path, steps)
    self.steps_left_after = steps_left_after
    self.run_start = time.time()
    self.start_step = _last_step(path)
    self.draw()

  def finish(self, counted=True):
    if self.current and counted:
      self.seconds += time.time() - self.run_start
      self.steps_measured += max(1, self.current[2] - self.start_step)
    self.current = None
    self.done += 1

  def close(self):
    self._stop.set()
    if self._thread:
      self._thread.join()
    self.draw(final=True)


# ----------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------
def _run_line(label, s, seconds) -> str:
  verdict = collapse.collapse_verdict(s)[1]
  init = s.get('initial_linear_probe_top1')
  init = f' (step 0: {init:.3f})' if init is not None else ''
  return (f'{label}: linear probe {s["final_linear_probe_top1"]:.4f}{init}, kNN {s["final_knn_top1"]:.4f}; '
          f'{verdict} ({_duration(seconds)})')


def prepare(study, workdir: str, rows_flag: str = '', reuse_dirs=(), only=None, link=True):
  """The selected runs with their folder and status (plan + run_status), finished ones of --reuse linked
  (when link). only: a set of (row, seed) to keep (a --parallel worker's share). Returns (runs, linked)."""
  import jax
  runs = plan(study, rows_flag, study.base.train.num_devices or jax.device_count())
  if only is not None:
    runs = [r for r in runs if (r['row'], r['seed']) in only]
  linked = 0
  for r in runs:
    r['path'] = run_dir(workdir, r['row'], r['seed'])
    r['status'] = run_status(r['path'], r['config'])
    if r['status'] == 'new' and reuse_dirs and not os.path.lexists(r['path']):
      source = find_reusable(r['config'], reuse_dirs)
      if source is not None:
        if link:
          link_run(r['path'], source)
        r['status'], linked = 'done', linked + 1
  return runs, linked


def run_study(study, workdir: str, rows_flag: str = '', out=None, reuse_dirs=(), only=None) -> dict:
  """Runs the study's pending runs; returns {'results', 'preempted', 'ran', 'skipped'}.

  Raises StudyError (before any run) for a bad study config or a run folder of another config."""
  import jax
  from byol_jax import train
  out = out or sys.stdout
  main_process = jax.process_index() == 0
  runs, linked = prepare(study, workdir, rows_flag, reuse_dirs, only, link=main_process)
  finished = [r for r in runs if r['status'] in ('done', 'diverged')]
  pending = [r for r in runs if r['status'] not in ('done', 'diverged')]
  name = study.get('name', '') or 'study'
  progress = Progress(name, len(runs), len(finished), out=out if main_process else open(os.devnull, 'w'))
  if finished:
    progress.message(f'{len(finished)} of {len(runs)} runs already finished in {workdir}: skipped'
                     + (f' ({linked} linked from --reuse)' if linked else ''))
  stop = {'signal': None}
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
  ran, preempted = [], False
  try:
    for i, r in enumerate(pending):
      if stop['signal'] is not None:
        preempted = True
        break
      label = f'{r["row"]}/seed{r["seed"]}'
      steps_after = sum(x['config'].train.steps for x in pending[i + 1:])
      progress.start(label, r['path'], r['config'].train.steps, steps_after)
      t0 = time.time()
      os.makedirs(r['path'], exist_ok=True)
      try:
        with open(os.path.join(r['path'], 'log.txt'), 'a') as log, contextlib.redirect_stdout(log):
          summary = train.run(r['config'], r['path'])
      except train.TrainingDiverged as e:
        if main_process:
          with open(os.path.join(r['path'], 'diverged.json'), 'w') as f:
            json.dump({'message': str(e)}, f, indent=2)
        progress.finish()
        progress.message(f'{label}: diverged: {e}')
        ran.append(r)
        continue
      if summary.get('preempted'):
        progress.message(f'{label}: stopped by SIGTERM at step {summary["step"]}, checkpoint saved')
        preempted = True
        break
      progress.finish()
      progress.message(_run_line(label, summary, time.time() - t0))
      ran.append(r)
      if main_process:
        write_results(study, workdir)
  finally:
    signal.signal(signal.SIGTERM, previous)
    progress.close()
  results = write_results(study, workdir) if main_process else None
  return {'results': results, 'preempted': preempted, 'ran': len(ran), 'skipped': len(finished)}


# ----------------------------------------------------------------------------------------------------
# --parallel: several runs at a time, one process per CPU core
# ----------------------------------------------------------------------------------------------------
OWN_FLAGS = ('--parallel', '--rows', '--reuse', '--runs')


def forwarded_args(argv: list[str]) -> list[str]:
  """The command line without the flags the parent consumes (both --flag=value and --flag value forms)."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a in OWN_FLAGS:
      skip = True
    elif not a.startswith(tuple(f + '=' for f in OWN_FLAGS)):
      out.append(a)
  return out


def run_parallel(study, workdir: str, n: int, argv: list[str], rows_flag: str = '', reuse_dirs=(),
                 out=None) -> dict:
  """Trains the pending runs n at a time: n worker processes (`python -m byol_jax.study ... --runs=...`), worker
  i pinned to CPU core i with one JAX device (study.base.train.cpu_devices must already be 1), each given every
  n-th pending run in plan order. Their output goes to DIR/.worker<i>.log; this process draws one progress
  line and writes the results when all have ended. SIGTERM is passed on (each worker stops after its run's
  checkpoint). Returns run_study's dict."""
  import subprocess
  out = out or sys.stdout
  runs, linked = prepare(study, workdir, rows_flag, reuse_dirs)
  pending = [r for r in runs if r['status'] not in ('done', 'diverged')]
  name = study.get('name', '') or 'study'
  if not pending:
    out.write(f'study {name}: all {len(runs)} runs already finished in {workdir}\n')
    return {'results': write_results(study, workdir), 'preempted': False, 'ran': 0, 'skipped': len(runs)}
  n = min(n, len(pending))
  cores = sorted(os.sched_getaffinity(0))
  os.makedirs(workdir, exist_ok=True)
  base_cmd = [sys.executable, '-m', 'byol_jax.study'] + forwarded_args(argv[1:])
  workers = []
  for i in range(n):
    share = pending[i::n]
    cmd = base_cmd + ['--config.base.train.cpu_devices=1', '--parallel=1',
                      '--runs=' + ','.join(f'{r["row"]}:{r["seed"]}' for r in share)]
    log = open(os.path.join(workdir, f'.worker{i}.log'), 'w')
    worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    # Pinned from here, not by preexec_fn (unsafe with JAX's threads in this process): the worker's own threads
    # start a second later, after its imports, and inherit the pinning.
    os.sched_setaffinity(worker.pid, {cores[i % len(cores)]})
    workers.append((worker, log, share))
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: [w.send_signal(signum) for w, _, _ in workers])
  t0, total, done_before = time.time(), len(runs), len(runs) - len(pending)
  out.write(f'study {name}: {len(pending)} runs in {n} processes (one per core), {done_before} of {total} already '
            f'finished{f" ({linked} linked from --reuse)" if linked else ""}; logs: {workdir}/.worker<i>.log\n')
  tty, shown = out.isatty(), -1
  try:
    while any(w.poll() is None for w, _, _ in workers):
      time.sleep(2.0)
      finished = sum(os.path.exists(os.path.join(r['path'], 'summary.json')) for r in pending)
      eta = f' | ETA {_duration((time.time() - t0) / finished * (len(pending) - finished))}' if finished else ''
      line = f'study {name}: {done_before + finished}/{total} runs done | {n} processes{eta}'
      if tty or finished != shown:  # a log gets a line per finished run
        out.write('\r' + line + '\033[K' if tty else line + '\n')
        out.flush()
        shown = finished
  finally:
    signal.signal(signal.SIGTERM, previous)
    for _, log, _ in workers:
      log.close()
  if tty:
    out.write('\n')
  failed = [(i, w.returncode) for i, (w, _, _) in enumerate(workers) if w.returncode]
  for i, code in failed:
    out.write(f'worker {i} exited with status {code}: see {os.path.join(workdir, f".worker{i}.log")}\n')
  ran = sum(os.path.exists(os.path.join(r['path'], 'summary.json')) for r in pending)
  results = write_results(study, workdir)
  return {'results': results, 'preempted': ran < len(pending) and not failed, 'ran': ran,
          'skipped': done_before, 'failed': len(failed)}


def main(argv):
  del argv
  from absl import flags, logging
  FLAGS = flags.FLAGS
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from ml_collections import config_flags
  name = os.path.basename(config_flags.get_config_filename(FLAGS['config']))
  try:
    reuse = [d for d in FLAGS.reuse if d]
    if FLAGS.parallel > 1:  # one JAX device per process: the runs' configs say so (repeat --parallel to resume)
      FLAGS.config.base.train.cpu_devices = 1
    config_lib.set_cpu_devices(FLAGS.config.base)  # before JAX starts
    if FLAGS.parallel > 1:
      outcome = run_parallel(FLAGS.config, FLAGS.workdir, FLAGS.parallel, sys.argv, FLAGS.rows, reuse)
    else:
      only = None
      if FLAGS.runs:
        only = {(r.rsplit(':', 1)[0], int(r.rsplit(':', 1)[1])) for r in FLAGS.runs}
      outcome = run_study(FLAGS.config, FLAGS.workdir, FLAGS.rows, reuse_dirs=reuse, only=only)
  except (StudyError, config_lib.ConfigError, FileNotFoundError) as e:
    print(f'error: study {name}: {e}', file=sys.stderr)
    sys.exit(2)
  if outcome.get('failed'):
    sys.exit(1)
  if outcome['preempted']:
    print(f'study stopped by SIGTERM; run the same command to resume ({FLAGS.workdir})', flush=True)
    sys.exit(0)
  print(f'results: {os.path.join(FLAGS.workdir, "results.md")} (and results.json, results.png)', flush=True)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Study config (configs/study/*.py).', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Study folder: one run folder per (row, seed), and the results.')
  flags.DEFINE_string('rows', '', 'Comma-separated row names to run (default: all).')
  flags.DEFINE_list('reuse', [], 'Other study folders: a finished run there with exactly the config of one of '
                    'this study\'s runs is linked (symlink) instead of trained again.')
  flags.DEFINE_integer('parallel', 1, 'Runs trained at a time, each in its own process pinned to one CPU core '
                       'with one JAX device (sets base.train.cpu_devices=1, part of every run\'s config).')
  flags.DEFINE_list('runs', [], 'row:seed pairs to run (what --parallel gives each worker).')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
