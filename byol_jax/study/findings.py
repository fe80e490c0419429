"""The findings tables (README, docs/study.md) and the records index's study table, from the committed records.

  python -m byol_jax.study.findings            rewrite the regions in place (README.md, docs/study.md,
                                               docs/records/README.md)
  python -m byol_jax.study.findings --check    exit 1, naming the file, where a region is not what the records give

The prose (the paper's claim, the verdict's wording, what each study found, what each record holds) is
docs/findings.toml's. Every number in it is a placeholder `{FUNCTION STUDY ...}` filled from
docs/records/study/STUDY/results.json (ROWS: one row or several, comma-separated; KEY: a metric of a row, dotted into
`real_vs_theory`; SPEC: a Python format, default .3f):

  {probe STUDY ROWS}            the linear probe, mean ± std over seeds ("0.827 ± 0.011"; one seed: "0.805")
  {mean STUDY ROWS KEY:SPEC}    a metric's mean over seeds; {seed0 ...} the same at seed 0; {max ...} the largest
  {pm STUDY ROWS KEY:SPEC}      mean ± std
  {range STUDY ROWS KEY:SPEC}   "lo-hi" of the rows' means; {seed_range STUDY ROW KEY:SPEC} of one row's seeds;
                                {collapsed_range STUDY ROW KEY:SPEC} of its collapsed seeds
  {collapsed STUDY ROW}         "2 of 3": seeds collapsed of those finished
  {seeds STUDY ROW}             seeds finished; {seed_list STUDY} every row's, grouped ("mlp, seeds 0-4; ...")
  {rows STUDY}                  rows with a finished seed; {cells STUDY} rows configured; {steps STUDY} the base's
  {seed_count STUDY}            seeds finished per row: "3 seeds", "1-3 seeds"; {study_seeds STUDY} those configured
  {paper STUDY ROW}             the paper's number of the row (STL-10 %)
  {diff STUDY ROW REF:SPEC}     the paired difference of the probe (row − reference, seed by seed) in points, the
                                study's own or, for a pair it did not compare, by its rule from the rows' seeds:
                                full (default) "−1.23 ± 1.19 points, 95% interval [−2.22, −0.23]", short
                                "+0.09, [−0.79, +0.98]", compact "−2.67 ± 1.14, [−4.08, −1.26]", interval, mean,
                                pm "+0.72 ± 1.88", gap "1.2" (|mean|), signs "ahead in every seed", n "8", verdict
                                "behind"; a digit sets the decimals (short1)
  {diff_range STUDY ROWS REF}   "+2.0 to +2.2": the rows' mean differences against one reference

A finding's `expect` pins what its verdict's wording assumes ({"diff S R REF:verdict" = "behind"}): when a new
record changes it, the check fails and asks for the wording to be reread, rather than printing a stale verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
import tomllib

from byol_jax.study import results  # paired_difference: the studies' own rule

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY_RECORDS = 'docs/records/study'
PROSE = 'docs/findings.toml'
README = 'README.md'
RECORDS_INDEX = 'docs/records/README.md'
GUIDE = 'docs/study.md'
CURRENT = '_paper_regime'  # the record folders of the studies as configured today (dated ones are history)
MINUS = '\u2212'  # the README's minus sign


class FindingsError(ValueError):
  """A placeholder, record or region that cannot be rendered; the message names it and the fix."""


def _signed(x: float, spec: str = '.2f') -> str:
  text = format(x, '+' + spec)
  return text.replace('-', MINUS)


def _plain(x: float, spec: str) -> str:
  return format(x, spec).replace('-', MINUS) if x < 0 else format(x, spec)


def _seed_text(seeds: list[int]) -> str:
  """'seed 0', 'seeds 0-7', 'seeds 0, 2'."""
  if len(seeds) == 1:
    return f'seed {seeds[0]}'
  if seeds == list(range(seeds[0], seeds[-1] + 1)):
    return f'seeds {seeds[0]}-{seeds[-1]}'
  return 'seeds ' + ', '.join(map(str, seeds))


def _and(names: list[str]) -> str:
  return names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' and ' + names[-1]


class Records:
  """The study records (results.json) of one folder, read once each."""

  def __init__(self, root: str = ROOT):
    self.root = root
    self._cache: dict[str, dict] = {}

  def study(self, name: str) -> dict:
    if name not in self._cache:
      path = os.path.join(self.root, STUDY_RECORDS, name, 'results.json')
      if not os.path.exists(path):
        raise FindingsError(f'{PROSE}: no record {STUDY_RECORDS}/{name}/results.json (a placeholder names study '
                            f'{name!r}; the folders are {", ".join(self.folders())})')
      with open(path, encoding='utf-8') as f:
        self._cache[name] = json.load(f)
    return self._cache[name]

  def folders(self) -> list[str]:
    base = os.path.join(self.root, STUDY_RECORDS)
    return sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))

  def row(self, study: str, row: str) -> dict:
    rows = self.study(study)['rows']
    if row not in rows:
      raise FindingsError(f'{PROSE}: study {study} has no row {row!r}; its rows: {", ".join(rows)}')
    if not rows[row].get('seeds_done'):
      raise FindingsError(f'{PROSE}: row {row!r} of {study} has no finished seed')
    return rows[row]

  def metric(self, study: str, row: str, key: str) -> dict:
    value = self.row(study, row)
    for part in key.split('.'):
      if not isinstance(value, dict) or part not in value:
        raise FindingsError(f'{PROSE}: row {row!r} of {study} has no metric {key!r}')
      value = value[part]
    if not isinstance(value, dict) or value.get('mean') is None:
      raise FindingsError(f'{PROSE}: {key!r} of row {row!r} of {study} is not a metric over seeds')
    return value

  def paired(self, study: str, row: str, reference: str) -> dict:
    """The study's paired difference of the probe, row − reference; for a pair its config did not compare (or a
    record from before studies wrote them), the same statistics from the rows' per-seed probes."""
    found = [p for p in self.study(study).get('paired', [])
             if p['row'] == row and p['reference'] == reference and p['metric'] == 'linear_probe_top1']
    if found:
      p = found[0]
    else:
      a, b = (self.metric(study, r, 'linear_probe_top1') for r in (row, reference))
      seeds = {r: self.row(study, r)['seeds_done'] for r in (row, reference)}
      p = results.paired_difference(dict(zip(seeds[row], a['per_seed'])), dict(zip(seeds[reference], b['per_seed'])))
    if not p['n']:
      raise FindingsError(f'{PROSE}: {study}: {row} − {reference} has no paired seeds yet')
    return p


class _Formatter(string.Formatter):
  """str.format with fields `{FUNCTION STUDY ARGS...:SPEC}` read from the records."""

  def __init__(self, records: Records):
    self.records = records

  def get_field(self, field_name, args, kwargs):
    return field_name.split(), field_name

  def format_field(self, value, format_spec):
    function, *args = value
    render = getattr(self, '_' + function, None)
    if render is None:
      raise FindingsError(f'{PROSE}: unknown placeholder function {function!r} in {{{" ".join(value)}}} '
                          f'(byol_jax/study/findings.py lists them)')
    try:
      return render(*args, spec=format_spec)
    except TypeError as e:
      raise FindingsError(f'{PROSE}: {{{" ".join(value)}}}: wrong arguments ({e})') from None

  @staticmethod
  def _each(rows, fn):
    """fn of each comma-separated row, joined: '0.800, 0.807'."""
    return ', '.join(fn(row) for row in rows.split(','))

  def _probe(self, study, rows, spec=''):
    def one(row):
      m = self.records.metric(study, row, 'linear_probe_top1')
      spec_ = spec or '.3f'
      return format(m['mean'], spec_) + ('' if m['std'] is None else ' ± ' + format(m['std'], spec_))
    return self._each(rows, one)

  def _mean(self, study, rows, key, spec=''):
    return self._each(rows, lambda r: _plain(self.records.metric(study, r, key)['mean'], spec or '.3f'))

  def _max(self, study, rows, key, spec=''):
    return _plain(max(self.records.metric(study, r, key)['mean'] for r in rows.split(',')), spec or '.3f')

  def _seed0(self, study, rows, key, spec=''):
    def one(row):
      m, done = self.records.metric(study, row, key), self.records.row(study, row)['seeds_done']
      if 0 not in done:
        raise FindingsError(f'{PROSE}: row {row!r} of {study} has no seed 0')
      return _plain(m['per_seed'][done.index(0)], spec or '.3f')
    return self._each(rows, one)

  def _pm(self, study, rows, key, spec=''):
    def one(row):
      m = self.records.metric(study, row, key)
      return _plain(m['mean'], spec or '.3f') + ('' if m['std'] is None else ' ± ' + format(m['std'], spec or '.3f'))
    return self._each(rows, one)

  def _range(self, study, rows, key, spec=''):
    values = [self.records.metric(study, r, key)['mean'] for r in rows.split(',')]
    lo, hi = _plain(min(values), spec or '.3f'), _plain(max(values), spec or '.3f')
    return lo if lo == hi else f'{lo}-{hi}'

  def _seed_range(self, study, row, key, spec=''):
    values = self.records.metric(study, row, key)['per_seed']
    lo, hi = _plain(min(values), spec or '.3f'), _plain(max(values), spec or '.3f')
    return lo if lo == hi else f'{lo}-{hi}'

  def _collapsed_range(self, study, row, key, spec=''):
    r, m = self.records.row(study, row), self.records.metric(study, row, key)
    values = [v for v, why in zip(m['per_seed'], r['collapse_reasons']) if why.startswith('collapsed')]
    if not values:
      raise FindingsError(f'{PROSE}: no seed of row {row!r} of {study} collapsed')
    lo, hi = format(min(values), spec or '.3f'), format(max(values), spec or '.3f')
    return lo if lo == hi else f'{lo}-{hi}'

  def _collapsed(self, study, row, spec=''):
    r = self.records.row(study, row)
    return f'{r["collapsed_seeds"]} of {len(r["seeds_done"])}'

  def _seeds(self, study, row, spec=''):
    return str(len(self.records.row(study, row)['seeds_done']))

  def _study_seeds(self, study, spec=''):
    return str(self.records.study(study)['seeds'])

  def _rows(self, study, spec=''):
    return str(sum(1 for r in self.records.study(study)['rows'].values() if r.get('seeds_done')))

  def _cells(self, study, spec=''):
    return str(len(self.records.study(study)['rows']))

  def _steps(self, study, spec=''):
    return str(self.records.study(study)['base']['steps'])

  def _seed_count(self, study, spec=''):
    counts = sorted({len(r['seeds_done']) for r in self.records.study(study)['rows'].values() if r.get('seeds_done')})
    text = str(counts[0]) if len(counts) == 1 else f'{counts[0]}-{counts[-1]}'
    return f'{text} seed' + ('' if text == '1' else 's')

  def _seed_list(self, study, spec=''):
    groups: dict[tuple, list[str]] = {}
    for name, r in self.records.study(study)['rows'].items():
      if r.get('seeds_done'):
        groups.setdefault(tuple(r['seeds_done']), []).append(name)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[0]))  # stable: ties keep the config's row order
    parts = []
    for i, (seeds, names) in enumerate(ordered):
      if len(names) <= 3:
        who = _and(names)
      else:  # a long list of row names says less than their count
        who = f'{len(names)} rows' if i == 0 else f'the {len(names)} others'
      parts.append(f'{who}, {_seed_text(list(seeds))}')
    return '; '.join(parts)

  def _paper(self, study, row, spec=''):
    paper = self.records.study(study)['rows'].get(row, {}).get('paper')
    if paper is None:
      raise FindingsError(f'{PROSE}: row {row!r} of {study} has no paper number')
    return format(paper, spec or '.2f')

  def _diff(self, study, row, reference, spec=''):
    p = self.records.paired(study, row, reference)
    parsed = re.fullmatch(r'([a-z]*)(\d?)', spec)
    kind, digits = parsed.groups() if parsed else (spec, '')
    kind, f = kind or 'full', f'.{digits or 2}f'
    mean, std, ci, per_seed = p['mean'] * 100, p['std'], p['ci95'], p['per_seed']
    if kind == 'n':
      return str(p['n'])
    if kind == 'verdict':
      return p['verdict']
    if kind == 'mean':
      return _signed(mean, f)
    if kind == 'pm':
      return _signed(mean, f) + ('' if std is None else f' ± {std * 100:{f}}')
    if kind == 'gap':
      return format(abs(mean), f'.{digits or 1}f')
    if kind == 'signs':
      ahead = sum(d > 0 for d in per_seed)
      if ahead in (0, len(per_seed)):
        return f'{"ahead" if ahead else "behind"} in every seed'
      return f'ahead in {ahead} of {len(per_seed)} seeds'
    if ci is None:
      raise FindingsError(f'{PROSE}: {study}: {row} − {reference} has one paired seed: no interval to print '
                          f'(use :mean)')
    interval = f'[{_signed(ci[0] * 100, f)}, {_signed(ci[1] * 100, f)}]'
    if kind == 'interval':
      return interval
    if kind == 'short':
      return f'{_signed(mean, f)}, {interval}'
    if kind == 'compact':
      return f'{_signed(mean, f)} ± {std * 100:{f}}, {interval}'
    if kind == 'full':
      return f'{_signed(mean, f)} ± {std * 100:{f}} points, 95% interval {interval}'
    raise FindingsError(f'{PROSE}: {{diff {study} {row} {reference}:{spec}}}: spec is one of full, short, compact, '
                        f'interval, mean, pm, gap, signs, n, verdict, with an optional digit of decimals (short1)')

  def _diff_range(self, study, rows, reference, spec=''):
    """'+2.0 to +2.2': the rows' paired differences against one reference, in points."""
    means = [self.records.paired(study, r, reference)['mean'] * 100 for r in rows.split(',')]
    f = spec or '.1f'
    lo, hi = _signed(min(means), f), _signed(max(means), f)
    return lo if lo == hi else f'{lo} to {hi}'


def render(text: str, records: Records) -> str:
  return _Formatter(records).format(text)


def load_prose(root: str = ROOT) -> dict:
  path = os.path.join(root, PROSE)
  with open(path, 'rb') as f:
    try:
      return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
      raise FindingsError(f'{PROSE}: {e}') from None


def _expectations(item: dict, records: Records, what: str) -> None:
  for field, expected in item.get('expect', {}).items():
    got = render('{' + field + '}', records)
    if got != expected:
      raise FindingsError(f'{PROSE}: {what}: the records now give {{{field}}} = {got!r}, its wording assumes '
                          f'{expected!r}: reread the row and update its words and `expect`')


def findings_table(table: dict, records: Records) -> str:
  """One README region: a [[table]] of docs/findings.toml, one row per [[table.finding]]."""
  out = [f'| the paper\'s finding | {table["here"]} | verdict |', '|---|---|---|']
  for finding in table['finding']:
    _expectations(finding, records, f'finding {finding["claim"][:50]!r}')
    cells = [render(finding[k].strip(), records) for k in ('claim', 'here', 'verdict')]
    out.append('| ' + ' | '.join(' '.join(c.split()) for c in cells) + ' |')
  return '\n'.join(out)


def records_table(prose: dict, records: Records) -> str:
  """The records index's study table: one [[record]] per folder of docs/records/study/, none missing."""
  listed = [r['folder'] for r in prose['record']]
  missing = sorted(set(records.folders()) - set(listed))
  extra = sorted(set(listed) - set(records.folders()))
  if missing or extra:
    raise FindingsError(f'{PROSE}: ' + '; '.join(
        ([f'no [[record]] for {STUDY_RECORDS}/{", ".join(missing)} (add one: folder, date, what, guide)'] if missing
         else []) + ([f'[[record]] folder {", ".join(extra)} is not in {STUDY_RECORDS}/'] if extra else [])))
  out = ['| date | record | what | guide |', '|---|---|---|---|']
  for r in prose['record']:
    what = ' '.join(render(r['what'].strip(), records).split())
    out.append(f'| {r["date"]} | [{r["folder"]}/](study/{r["folder"]}/) | {what} | {r.get("guide", "")} |')
  return '\n'.join(out)


def glance_table(prose: dict, records: Records) -> str:
  """The study guide's findings at a glance: one [[glance]] of docs/findings.toml per study, with its records; every
  record of the paper's regime (a folder ending in CURRENT) has its line."""
  if not prose.get('glance'):
    raise FindingsError(f'{PROSE}: no [[glance]]: {GUIDE} lists one line per study (study, section, found, record)')
  to_records = os.path.relpath(STUDY_RECORDS, os.path.dirname(GUIDE)).replace(os.sep, '/')
  out, named = ['| study | what it found | record |', '|---|---|---|'], set()
  for item in prose['glance']:
    what = f'glance {item.get("study")!r}'
    missing = [k for k in ('study', 'section', 'found', 'record') if k not in item]
    if missing:
      raise FindingsError(f'{PROSE}: {what} has no {", ".join(missing)}')
    _expectations(item, records, what)
    folders = item['record'] if isinstance(item['record'], list) else [item['record']]
    for folder in folders:
      records.study(folder)  # a folder that is not a study record stops here, named
    named.update(folders)
    found = ' '.join(render(item['found'].strip(), records).split())
    links = ', '.join(f'[{f}/]({to_records}/{f}/)' for f in folders)
    out.append(f'| [`{item["study"]}`]({item["section"]}) | {found} | {links} |')
  unnamed = [f for f in records.folders() if f.endswith(CURRENT) and f not in named]
  if unnamed:
    raise FindingsError(f'{PROSE}: no [[glance]] names {STUDY_RECORDS}/{", ".join(unnamed)} (add its line: study, '
                        f'section, found, record)')
  return '\n'.join(out)


def _markers(name: str) -> tuple[str, str]:
  return (f'<!-- generated: {name} (python -m byol_jax.study.findings, from {PROSE} and the records) -->',
          f'<!-- end generated: {name} -->')


def replace_region(text: str, name: str, body: str, path: str) -> str:
  begin, end = _markers(name)
  pattern = re.compile(re.escape(begin) + r'\n.*?' + re.escape(end), re.S)
  if not pattern.search(text):
    raise FindingsError(f'{path}: no region {name!r}: put the lines\n{begin}\n{end}\nwhere it goes')
  return pattern.sub(lambda _: f'{begin}\n{body}\n{end}', text, count=1)


def regenerated(root: str = ROOT) -> dict[str, str]:
  """{path: its text with the generated regions rewritten from the records}."""
  prose, records = load_prose(root), Records(root)
  bodies = {README: [(table['region'], findings_table(table, records)) for table in prose['table']],
            GUIDE: [('study findings', glance_table(prose, records))],
            RECORDS_INDEX: [('study records', records_table(prose, records))]}
  out = {}
  for path, regions in bodies.items():
    with open(os.path.join(root, path), encoding='utf-8') as f:
      text = f.read()
    for name, body in regions:
      text = replace_region(text, name, body, path)
    out[path] = text
  return out


def stale(root: str = ROOT) -> list[str]:
  """The files whose generated regions differ from what the records give."""
  problems = []
  for path, text in regenerated(root).items():
    with open(os.path.join(root, path), encoding='utf-8') as f:
      if f.read() != text:
        problems.append(path)
  return problems


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='change nothing; exit 1 where a region is stale')
  args = parser.parse_args(argv)
  try:
    if args.check:
      problems = stale()
      for path in problems:
        print(f'{path}: a generated region differs from the records: run python -m byol_jax.study.findings',
              file=sys.stderr)
      return 1 if problems else 0
    for path, text in regenerated().items():
      with open(os.path.join(ROOT, path), 'w', encoding='utf-8') as f:
        f.write(text)
      print(f'wrote {path}')
    return 0
  except FindingsError as e:
    print(e, file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
