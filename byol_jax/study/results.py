"""A study's table: per-row statistics over seeds, paired differences against a reference row, collapse
verdicts; results.json, results.md, results.png and the phase diagram."""
from __future__ import annotations

import json
import os

import numpy as np

from byol_jax import collapse, rundir
from byol_jax.study import lr_sweep, phase_map, recruitment
from byol_jax.study.plan import StudyError, comparisons, figures, ordered_keys, run_config, run_dir
# The statistics (pure functions): byol_jax/study/stats.py; these names stay importable from here.
from byol_jax.study.stats import (ONE_POINT, paired_difference, row_verdict, seed_stats, seeds_to_resolve,  # noqa: F401
                                  t_quantile)


METRICS = ('linear_probe_top1', 'knn_top1', 'initial_linear_probe_top1', 'initial_knn_top1') + collapse.KEYS
# What runs with a linear-type predictor report of their spectra beside the theory (byol_jax/real_vs_theory.py).
THEORY_METRICS = ('loglog_slope_topk', 'loglog_r2_topk', 'loglog_slope', 'alignment_topk_final', 'asymmetry_final')


def read_outcomes(study, workdir: str) -> dict:
  """{row: {seed: the run's summary, or DIVERGED}} of the finished runs among seeds 0..seeds-1 of every row."""
  out = {}
  for r in ordered_keys(study.rows):
    out[r] = {}
    for k in range(study.seeds):
      path = run_dir(workdir, r, k)
      summary = rundir.read_summary(path)
      if summary is not None:
        out[r][k] = summary
      elif rundir.status(path) == 'diverged':
        out[r][k] = DIVERGED
  return out


DIVERGED = 'diverged'


def collect(study, workdir: str) -> dict:
  """results.json's content from the run folders (finished seeds 0..seeds-1 of every row)."""
  return aggregate(study, read_outcomes(study, workdir))


def aggregate(study, outcomes: dict) -> dict:
  """results.json's content from read_outcomes' {row: {seed: summary or DIVERGED}} (a pure function)."""
  rows = {}
  paper = study.get('paper') or {}
  for r in ordered_keys(study.rows):
    got = outcomes.get(r, {})
    done = [k for k in sorted(got) if got[k] is not DIVERGED]
    diverged = [k for k in sorted(got) if got[k] is DIVERGED]
    summaries = [got[k] for k in done]
    entry = {'args': study.rows[r], 'seeds_done': done, 'seeds_diverged': diverged}
    for key in METRICS:
      source = key if key.startswith('initial_') else f'final_{key}'
      entry[key] = seed_stats([s.get(source) for s in summaries])
    rvt = [s['real_vs_theory'] for s in summaries if s.get('real_vs_theory')]
    if rvt:
      entry['real_vs_theory'] = {k: seed_stats([r.get(k) for r in rvt]) for k in THEORY_METRICS}
    verdicts = [collapse.collapse_verdict(s) for s in summaries]
    n_coll = sum(v[0] for v in verdicts)
    entry['collapsed'] = (n_coll > len(verdicts) / 2) if verdicts else None
    entry['collapsed_seeds'] = n_coll
    entry['collapse_reasons'] = [v[1] for v in verdicts]
    p = paper.get(r) if r in ordered_keys(paper) else None
    entry['paper'] = None if p is None else p.get('value')
    entry['paper_table'] = None if p is None else p.get('table')
    entry['steps'] = summaries[0]['steps'] if summaries else None
    entry['by_seed'] = {k: s.get('final_linear_probe_top1') for k, s in zip(done, summaries)}
    entry['verdict'] = row_verdict(len(done), n_coll, len(diverged), study.seeds)
    rows[r] = entry
  paired = []
  for a, ref in comparisons(study):
    diff = paired_difference(rows[a]['by_seed'], rows[ref]['by_seed'])
    paired.append({'row': a, 'reference': ref, 'metric': 'linear_probe_top1', **diff})
  for entry in rows.values():
    del entry['by_seed']
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
                            'collapsed when most of its finished seeds are (byol_jax/study/collapse.py)'),
          'rows': rows, 'paired': paired,
          'paired_rule': ('difference of final linear probe top-1 (fractions) over the seeds both rows have: mean, '
                          'sample std, 95% t-interval; ahead / behind when the interval excludes 0, equal within 1 '
                          'point when it holds 0 inside +-0.01, else not resolved; seeds_to_resolve_1pt: paired '
                          'seeds whose interval would be within +-0.01 at the measured std')}


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
  if res.get('paired'):
    lines += ['', 'Paired differences of the linear probe (row − reference, seed by seed, in points): mean ± sample '
              'std, 95% t-interval, the verdict (ahead or behind: the interval excludes 0; equal within 1 point: it '
              'holds 0 and lies inside ±1 point), and the paired seeds that would resolve a 1-point difference at '
              'this spread.', '',
              '| row − reference | n | mean ± std (points) | 95% interval | per seed | verdict | seeds for ±1 pt |',
              '|---|---|---|---|---|---|---|']
    for p in res['paired']:
      mean = '-' if p['mean'] is None else f'{100 * p["mean"]:+.2f}'
      if p['std'] is not None:
        mean += f' ± {100 * p["std"]:.2f}'
      ci = '-' if p['ci95'] is None else f'[{100 * p["ci95"][0]:+.2f}, {100 * p["ci95"][1]:+.2f}]'
      per = ', '.join(f'{100 * v:+.1f}' for v in p['per_seed']) or '-'
      lines.append(f'| {p["row"]} − {p["reference"]} | {p["n"]} | {mean} | {ci} | {per} | {p["verdict"]} | '
                   f'{p["seeds_to_resolve_1pt"] or "-"} |')
  theory_rows = {name: e['real_vs_theory'] for name, e in res['rows'].items() if e.get('real_vs_theory')}
  if theory_rows:
    lines += ['', 'Linear-type predictors beside the theory (byol_jax/real_vs_theory.py, at the end of '
              'training): the log-log slope of p_j^2 against s_j over the top 10 modes of F and its R^2 '
              '(theory: slope 1), '
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


# name -> module with fits(res, configs) and write(res, configs, save, workdir)
FIGURES = {'phase_diagram': phase_map, 'lr_sweep': lr_sweep, 'recruitment': recruitment}
FIGURE_NEEDS = {'phase_diagram': 'rows forming a weight decay x EMA rate grid of linear-predictor runs '
                                  '(byol_jax/study/phase_map.py)',
                'lr_sweep': 'rows forming an lr sweep at fixed wd / lr (byol_jax/study/lr_sweep.py)',
                'recruitment': 'a row with a linear-type predictor, whose runs log spectra '
                               '(byol_jax/study/recruitment.py)'}


def _row_configs(study) -> dict:
  return {r: rundir.config_json(run_config(study, r, 0)) for r in ordered_keys(study.rows)}


def check_figures(study) -> None:
  """StudyError (one line) when the study config names a figure its rows cannot draw; before any run."""
  names = figures(study) or []
  if not names:
    return
  skeleton, configs = aggregate(study, {}), _row_configs(study)
  for name in names:
    if not FIGURES[name].fits(skeleton, configs):
      raise StudyError(f'figures: {name} needs {FIGURE_NEEDS[name]}; these rows do not form one')


def write_results(study, workdir: str) -> dict:
  """Writes DIR/results.json, results.md, results.png (each atomically), and the figures the study config names
  (`figures`; without the key, every figure its rows fit): phase_diagram.png / .json for a weight decay x EMA rate
  grid (byol_jax/study/phase_map.py), lr_sweep.png / .json for an lr sweep at fixed wd / lr
  (byol_jax/study/lr_sweep.py), recruitment.png / .json / .md for rows with linear-type predictors
  (byol_jax/study/recruitment.py; its table also ends results.md). Returns the results."""
  res = collect(study, workdir)
  os.makedirs(workdir, exist_ok=True)

  def atomic(name, write):
    tmp = os.path.join(workdir, f'.{name}.{os.getpid()}.tmp')  # several study processes may share DIR (--rows)
    write(tmp)
    os.replace(tmp, os.path.join(workdir, name))

  def json_writer(p):
    with open(p, 'w') as f:
      json.dump(res, f, indent=2)

  atomic('results.json', json_writer)
  atomic('results.png', lambda p: results_plot(res, p + '.png') or os.replace(p + '.png', p))
  named = figures(study)
  configs = _row_configs(study) if named is None or named else {}
  drawn = []
  for name in (FIGURES if named is None else named):
    if named is None and not FIGURES[name].fits(res, configs):
      continue
    if FIGURES[name].write(res, configs, atomic, workdir):
      drawn.append(name)
  tables = [recruitment.TABLE] if 'recruitment' in drawn else []  # results.md carries the table too

  def md_writer(p):
    with open(p, 'w') as f:
      f.write(results_markdown(res))
      for table in tables:
        with open(os.path.join(workdir, table)) as t:
          f.write('\n' + t.read())
  atomic('results.md', md_writer)
  return res
