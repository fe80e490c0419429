"""A study's mode recruitment: byol_jax.recruitment per run, aggregated over seeds per row.

  python -m byol_jax.study.recruitment DIR [--rows=a,b]   (DIR: a study folder or record, DIR/<row>/seed<k>/)

writes DIR/recruitment.json (per run and per row), DIR/recruitment.md (one table) and DIR/recruitment.png (the
number of F's modes above LIVE_FRACTION s_1 against the step, one line per row: the median over seeds, the
seeds' range shaded). Rows without logged spectra (an MLP predictor) are left out. A study draws it as its
figure 'recruitment' (results.py: `fits`, `write`) after every run, for its rows with linear-type predictors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from byol_jax import real_vs_theory, recruitment, rundir


def run_dirs(study_dir: str, rows=None) -> dict[str, list[str]]:
  """{row: [run folders with a summary, by seed]} of a study folder, rows in folder order (or `rows`' order)."""
  names = rows or sorted(d for d in os.listdir(study_dir) if os.path.isdir(os.path.join(study_dir, d)))
  out = {}
  for row in names:
    row_dir = os.path.join(study_dir, row)
    seeds = sorted((d for d in os.listdir(row_dir) if d.startswith('seed') and d[4:].isdigit()),
                   key=lambda d: int(d[4:])) if os.path.isdir(row_dir) else []
    done = [os.path.join(row_dir, d) for d in seeds if rundir.read_summary(os.path.join(row_dir, d))]
    if done:
      out[row] = done
  return out


def row_table(per_run: list[dict]) -> dict:
  """Aggregates of one row's runs: median recruitment step per mode (None if any seed never recruits it:
  then 'recruited' says in how many), mean and std of the mode counts and slopes."""
  def stats(key):
    v = np.array([r[key] for r in per_run], np.float64)
    v = v[np.isfinite(v)]
    return {'mean': float(v.mean()) if v.size else None,
            'std': float(v.std(ddof=1)) if v.size > 1 else None, 'n': int(v.size)}
  steps = {}
  for k in map(str, recruitment.MODES):
    got = [r['recruitment_steps'][k] for r in per_run if r['recruitment_steps'][k] is not None]
    steps[k] = {'median': float(np.median(got)) if len(got) == len(per_run) else None,
                'recruited': len(got), 'of': len(per_run)}
  return {'seeds': len(per_run), 'recruitment_steps': steps,
          **{key: stats(key) for key in ('modes_above_final', 'modes_above_late_mean', 'live_slope', 'all_slope')}}


def measure(study_dir: str, rows=None) -> dict:
  """{'runs': {row: {seed folder: summary}}, 'rows': {row: row_table}} of every finished run with spectra."""
  runs, table = {}, {}
  for row, dirs in run_dirs(study_dir, rows).items():
    per = {}
    for d in dirs:
      sp = real_vs_theory.from_records(rundir.read_metrics(d))
      if sp is not None and len(sp.steps):
        per[os.path.basename(d)] = recruitment.summarize(sp)
    if per:
      runs[row] = per
      table[row] = row_table(list(per.values()))
  return {'runs': runs, 'rows': table}


def _fmt(stat, digits=1):
  if stat['mean'] is None:
    return '-'
  return f'{stat["mean"]:.{digits}f}' + (f' ± {stat["std"]:.{digits}f}' if stat['std'] is not None else '')


def markdown(result: dict) -> str:
  ks = list(map(str, recruitment.MODES))
  lines = [f'Mode recruitment (byol_jax/recruitment.py): the median step at which F\'s k-th mode passes '
           f'{recruitment.RECRUIT_FRACTION:g} of the first (over seeds; "n/m" where only n of m seeds recruit it), '
           f'the number of modes above {recruitment.LIVE_FRACTION:g} s_1 at the end and its mean over the second '
           f'half of the run, and the log-log slope of p_j^2 against s_j at the end over the live modes '
           f'(s_j >= {recruitment.SLOPE_FLOOR:g} s_1) and over all modes above {real_vs_theory.FLOOR:g} s_1.', '',
           '| row | seeds | ' + ' | '.join(f'k={k}' for k in ks)
           + ' | modes kept, end | modes kept, 2nd half | live slope | all-mode slope |',
           '|---|---|' + '---|' * len(ks) + '---|---|---|---|']
  for row, t in result['rows'].items():
    cells = []
    for k in ks:
      r = t['recruitment_steps'][k]
      cells.append(f'{r["median"]:.0f}' if r['median'] is not None else f'{r["recruited"]}/{r["of"]}')
    lines.append(f'| {row} | {t["seeds"]} | ' + ' | '.join(cells) + f' | {_fmt(t["modes_above_final"])} | '
                 f'{_fmt(t["modes_above_late_mean"])} | {_fmt(t["live_slope"], 2)} | {_fmt(t["all_slope"], 2)} |')
  return '\n'.join(lines) + '\n'


def figure(result: dict, path: str, title: str = '') -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 4.5))
  for i, (row, per) in enumerate(result['runs'].items()):
    length = min(len(r['steps']) for r in per.values())
    steps = np.array(next(iter(per.values()))['steps'][:length])
    counts = np.array([r['modes_above'][:length] for r in per.values()], np.float64)
    # Ten colours, then the next line style: a study of more than ten rows keeps every row apart.
    color, style = f'C{i % 10}', ('-', '--', '-.')[i // 10 % 3]
    ax.plot(steps, np.median(counts, axis=0), color=color, ls=style, label=f'{row} ({len(per)})')
    if len(per) > 1:
      ax.fill_between(steps, counts.min(axis=0), counts.max(axis=0), color=color, alpha=0.12)
  ax.set_xlabel('step')
  ax.set_ylabel(f'modes of F above {recruitment.LIVE_FRACTION:g} s_1')
  ax.set_title(title or 'mode recruitment: median over seeds, range shaded')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))  # outside: the lines fill the axes
  fig.tight_layout()
  fig.savefig(path, dpi=110, format='png')  # path may be a temporary name (results.py's atomic writer)
  plt.close(fig)


def write_dir(study_dir: str, rows=None) -> dict:
  """recruitment.json, .md and .png of a study folder (the command line's job); returns what it measured."""
  result = measure(study_dir, rows)
  rundir.write_json(os.path.join(study_dir, 'recruitment.json'), result)
  with open(os.path.join(study_dir, TABLE), 'w') as f:
    f.write(markdown(result))
  if result['runs']:
    figure(result, os.path.join(study_dir, 'recruitment.png'), os.path.basename(os.path.normpath(study_dir)))
  return result


TABLE = 'recruitment.md'
LINEAR_KINDS = ('linear', 'linear_symmetric', 'directpred', 'directcopy')  # the predictors whose runs log spectra


def _linear_rows(configs: dict) -> list[str]:
  return [r for r, c in configs.items() if c['predictor']['kind'] in LINEAR_KINDS]


def fits(res: dict, configs: dict) -> bool:
  """Whether a row has a linear-type predictor (results.json's content and the rows' run configs as JSON)."""
  del res
  return bool(_linear_rows(configs))


def write(res: dict, configs: dict, save, workdir: str = '') -> bool:
  """recruitment.json, .md and .png of the linear-type rows' finished runs in workdir; returns whether there were
  any. save(name, writer) is study.write_results' atomic writer."""
  del res
  result = measure(workdir, _linear_rows(configs)) if workdir else {'runs': {}}
  if not result['runs']:
    return False
  save('recruitment.json', lambda p: rundir.write_json(p, result))

  def write_table(path):
    with open(path, 'w') as f:
      f.write(markdown(result))
  save(TABLE, write_table)
  save('recruitment.png', lambda p: figure(result, p, os.path.basename(os.path.normpath(workdir))))
  return True


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('study_dir')
  parser.add_argument('--rows', default='', help='comma-separated rows, in this order (default: every row)')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.study_dir):
    print(f'error: {args.study_dir} is not a folder (a study folder or record: DIR/<row>/seed<k>/)', file=sys.stderr)
    return 2
  rows = [r for r in args.rows.split(',') if r] or None
  result = write_dir(args.study_dir, rows)
  print(markdown(result), end='')
  return 0


if __name__ == '__main__':
  sys.exit(main())
