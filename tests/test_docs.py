"""The documentation's links resolve, no file of the project refers to a path outside it, the project's files name
only doc sections that exist, and the generated findings tables are what the records give.

No JAX; a few seconds.

- Every relative link of README.md and docs/**/*.md (`[text](path)`, `![alt](path)`, `[text][ref]` with its
  `[ref]: path`, HTML `href="path"` / `src="path"`; `path#anchor`, `#anchor`) names a file or folder that exists,
  and an anchor names a heading of the Markdown file it points to (GitHub's heading ids). Links inside code blocks
  and code spans are not links; http(s) and mailto links are not checked.
- No text file of the repository (git's tracked and untracked-but-not-ignored files) names a path outside the
  project: the design folder beside the checkout, or a machine's absolute work and home folders (OUTSIDE,
  written in pieces so that this file does not name them itself). Raw records under docs/records/ are
  exempt, except their Markdown write-ups: a log or a run's summary.json quotes the paths of the machine it was
  measured on, and records are kept as measured.
- Every project file (code, configs, scripts, tests, notebooks, and the Markdown of README, the guides and the
  records' write-ups; not the raw records) names only docs that exist, and the sections it names exist in them:
  `docs/x.md#anchor`, and `docs/x.md "Section"`, `docs/x.md, "Section"`, `docs/x.md ("Section")`,
  `docs/x.md's "Section"`, `docs/x.md, section "Section"` (a heading that starts with those words, markup
  dropped; straight or curly quotes; the quote may run over comment lines).
- README's findings tables, docs/study.md's findings at a glance and the records index's study table are what
  `python -m byol_jax.study.findings` makes of docs/findings.toml and the committed records
  (docs/records/study/*/results.json).
"""
import json
import os
import re
import subprocess
import unicodedata

import pytest

from byol_jax.study import findings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = 'docs/records/'
OUTSIDE = tuple(p.replace('|', '/') for p in ('..|shared', 'shared|design', '|work|', '|root|', '|home|'))

FENCE = re.compile(r'^(```|~~~).*?^\1[^\n]*$', re.M | re.S)
CODE_SPAN = re.compile(r'(`+)(?!`).*?(?<!`)\1(?!`)', re.S)
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
REF_DEFINITION = re.compile(r'^ {0,3}\[[^\]]+\]:[ \t]*<?([^\s>]+)>?', re.M)  # [ref]: target "title"
HTML_LINK = re.compile(r'<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["\']([^"\']+)["\']', re.I)
HEADING = re.compile(r'^(#{1,6})[ \t]+(.+?)[ \t#]*$', re.M)


def markdown_files() -> list[str]:
  files = [os.path.join(ROOT, 'README.md')]
  for folder, dirs, names in os.walk(os.path.join(ROOT, 'docs')):
    dirs.sort()
    files += [os.path.join(folder, n) for n in sorted(names) if n.endswith('.md')]
  return files


def _strip_code(text: str) -> str:
  text = FENCE.sub('', text)
  return CODE_SPAN.sub('', text)


def links(text: str) -> list[str]:
  """Targets of the Markdown links and images of a document, code excluded."""
  text = _strip_code(text)
  return [m.group(1) for pattern in (LINK, REF_DEFINITION, HTML_LINK) for m in pattern.finditer(text)]


def slug(heading: str) -> str:
  """GitHub's id of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
  heading = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link's text stays
  heading = heading.replace('`', '').replace('*', '').strip().lower()
  kept = []
  for ch in heading:
    if ch == ' ':
      kept.append('-')
    elif ch in '-_' or ch.isalnum() or unicodedata.category(ch).startswith('M'):
      kept.append(ch)
  return ''.join(kept)


def anchors(path: str) -> set[str]:
  with open(path, encoding='utf-8') as f:
    text = FENCE.sub('', f.read())
  seen, out = {}, set()
  for m in HEADING.finditer(text):
    base = slug(m.group(2))
    n = seen.get(base, 0)
    seen[base] = n + 1
    out.add(base if n == 0 else f'{base}-{n}')
  return out


def broken_links(path: str, root: str = ROOT) -> list[str]:
  """'target: why' for every relative link of the Markdown file `path` that does not resolve inside `root`."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  problems = []
  for target in links(text):
    if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition('#')
    dest = path if not file_part else os.path.normpath(os.path.join(os.path.dirname(path), file_part))
    if not os.path.exists(dest):
      problems.append(f'{target}: no such file or folder')
    elif not os.path.realpath(dest).startswith(os.path.realpath(root) + os.sep):
      problems.append(f'{target}: outside the project')
    elif anchor and dest.endswith('.md') and anchor not in anchors(dest):
      problems.append(f'{target}: no heading #{anchor} in {os.path.relpath(dest, root)}')
  return problems


def project_files() -> list[str]:
  """The repository's files: git's tracked and untracked-but-not-ignored ones (what a commit would hold)."""
  try:
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                         capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout')
  return sorted({p for p in out.decode().split('\0') if p and os.path.isfile(os.path.join(ROOT, p))})


def read_text(path: str) -> str | None:
  """The file's text, or None for a binary file."""
  with open(path, 'rb') as f:
    data = f.read()
  if b'\0' in data[:8192]:
    return None
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError:
    return None


def outside_references(rel: str, text: str) -> list[str]:
  return [f'{rel}:{n}: {line.strip()[:120]}' for n, line in enumerate(text.splitlines(), 1)
          if any(p in line for p in OUTSIDE)]


def test_links_resolve():
  problems = [f'{os.path.relpath(p, ROOT)}: {b}' for p in markdown_files() for b in broken_links(p)]
  assert not problems, 'broken links:\n' + '\n'.join(problems)


def checked_texts():
  """(path, text) of every project text file the reference checks read: not this file, and of the records only
  their write-ups (.md), not the runs' data."""
  this = os.path.relpath(os.path.abspath(__file__), ROOT)
  for rel in project_files():
    if rel == this or (rel.startswith(RECORDS) and not rel.endswith('.md')):
      continue
    text = read_text(os.path.join(ROOT, rel))
    if text is not None:
      yield rel, text


def test_no_file_refers_outside_the_project():
  found = [problem for rel, text in checked_texts() for problem in outside_references(rel, text)]
  assert not found, 'paths outside the project:\n' + '\n'.join(found)


def test_the_checks_catch_what_they_should(tmp_path):
  doc = tmp_path / 'a.md'
  (tmp_path / 'b.md').write_text('# Title: one\n\n## Two `x` (y)\n\n## Two `x` (y)\n')
  doc.write_text('[ok](b.md) [ok](b.md#title-one) [ok](b.md#two-x-y-1) ![img](missing.png) [bad](b.md#nope)\n'
                 '`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n[web](https://example.org/x)\n'
                 '[ref][r1] [ref][r2]\n\n[r1]: b.md#two-x-y "title"\n[r2]: <b.md#gone>\n'
                 '<a href="#title-one">x</a> <img src="gone.png"> <a href="b.md#title-one">y</a>\n# Title: one\n')
  assert broken_links(str(doc), str(tmp_path)) == ['missing.png: no such file or folder',
                                                   'b.md#nope: no heading #nope in b.md',
                                                   'b.md#gone: no heading #gone in b.md',
                                                   'gone.png: no such file or folder']
  assert broken_links(str(tmp_path / 'b.md'), str(tmp_path)) == []
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'c.md').write_text('[up](../b.md)\n')
  assert broken_links(str(tmp_path / 'sub' / 'c.md'), str(tmp_path / 'sub')) == ['../b.md: outside the project']
  for outside in OUTSIDE:
    assert outside_references('x.py', f'a = 1\nsee {outside}peer.py\n') == [f'x.py:2: see {outside}peer.py']
  assert outside_references('x.py', 'shared = 1\nos.path.join(root, "runs")\n') == []
  binary = tmp_path / 'x.png'
  binary.write_bytes(b'\x89PNG\0\0')
  assert read_text(str(binary)) is None and read_text(__file__) is not None


DOC_REF = re.compile(r'\bdocs/[\w./-]+?\.md\b')
DOC_ANCHOR = re.compile(r'\b(docs/[\w./-]+?\.md)#([\w-]+)')
DOC_SECTION = re.compile(r'\b(docs/[\w./-]+?\.md)(?:,|\'s)?'    # docs/x.md, docs/x.md, docs/x.md's
                         r'(?:\s+(?:(?:#|//)\s+)?\(?|\()\s*'        # then a space (a wrap's comment marker) or "("
                         r'(?:(?:section|under)\s+)?'                # docs/x.md, section "..."
                         r'["\u201c]([^"\u201d]+)["\u201d]')


def heading_texts(path: str) -> list[str]:
  """A Markdown file's headings as plain text: markup dropped, whitespace collapsed, lower case."""
  with open(path, encoding='utf-8') as f:
    text = FENCE.sub('', f.read())
  out = []
  for m in HEADING.finditer(text):
    heading = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', m.group(2)).replace('`', '').replace('*', '')
    out.append(' '.join(heading.split()).lower())
  return out


def dangling_doc_references(rel: str, text: str, root: str = ROOT) -> list[str]:
  """'file: reference: why' for each doc or section named in a project file that does not exist."""
  problems = []
  for ref in sorted(set(DOC_REF.findall(text))):
    if not os.path.exists(os.path.join(root, ref)):
      problems.append(f'{rel}: {ref}: no such file')
  for ref, anchor in DOC_ANCHOR.findall(text):
    if os.path.exists(os.path.join(root, ref)) and anchor not in anchors(os.path.join(root, ref)):
      problems.append(f'{rel}: {ref}#{anchor}: no such heading')
  for ref, quoted in DOC_SECTION.findall(text):
    shown = ' '.join(re.sub(r'^\s*(#|//)', ' ', quoted, flags=re.M).split())  # a wrap's comment markers dropped
    section = shown.lower()
    if os.path.exists(os.path.join(root, ref)) and not any(
        h == section or h.startswith(section + ' ') or h.startswith(section + ':') or h.startswith(section + ',')
        for h in heading_texts(os.path.join(root, ref))):
      problems.append(f'{rel}: {ref} "{shown}": no heading starts with it')
  return problems


def test_files_name_only_doc_sections_that_exist():
  found = [problem for rel, text in checked_texts() for problem in dangling_doc_references(rel, text)]
  assert not found, 'files name doc sections that do not exist (fix the reference or the heading):\n' + '\n'.join(found)


def test_doc_reference_check_catches_what_it_should(tmp_path):
  (tmp_path / 'docs').mkdir()
  (tmp_path / 'docs' / 'g.md').write_text('# Guide\n\n## The short-run transient (400 steps)\n\n## Build\n')
  code = ('# see docs/g.md#build and docs/g.md, "The short-run\n#   transient" and docs/g.md "Build"\n'
          'x = 1  # docs/g.md#gone, docs/g.md "Run", docs/missing.md\n')
  assert dangling_doc_references('x.py', code, str(tmp_path)) == [
      'x.py: docs/missing.md: no such file', 'x.py: docs/g.md#gone: no such heading',
      'x.py: docs/g.md "Run": no heading starts with it']
  forms = ('"""in docs/g.md\n("The short-run transient") and docs/g.md\'s "Build";\n'
           'docs/g.md, section \u201cBuild\u201d"""\n'
           '# docs/g.md ("Gone"), docs/g.md\'s "Lost", docs/g.md, under "Away" and docs/g.md \u201cMissing\u201d\n')
  assert dangling_doc_references('x.py', forms, str(tmp_path)) == [
      'x.py: docs/g.md "Gone": no heading starts with it', 'x.py: docs/g.md "Lost": no heading starts with it',
      'x.py: docs/g.md "Away": no heading starts with it', 'x.py: docs/g.md "Missing": no heading starts with it']
  paths = 'PAGES = ("docs/g.md", "docs/g.md")  # two paths, no section between them\n'
  assert dangling_doc_references('x.py', paths, str(tmp_path)) == []


def test_findings_and_records_index_match_the_records():
  problems = findings.stale()
  assert not problems, (f'{", ".join(problems)}: a generated table differs from docs/findings.toml and the records; '
                        'run python -m byol_jax.study.findings and review the diff')


def _fake_study(root, name, per_seed, collapsed=0):
  folder = root / findings.STUDY_RECORDS / name
  folder.mkdir(parents=True)
  probe = {'mean': sum(per_seed) / len(per_seed), 'std': 0.01, 'per_seed': per_seed, 'n': len(per_seed)}
  rows = {'a': {'seeds_done': list(range(len(per_seed))), 'linear_probe_top1': probe, 'collapsed_seeds': collapsed,
                'collapse_reasons': ['not collapsed'] * len(per_seed), 'paper': 77.86},
          'b': {'seeds_done': list(range(len(per_seed))), 'collapsed_seeds': 0, 'collapse_reasons': [],
                'linear_probe_top1': dict(probe, mean=probe['mean'] - 0.02, per_seed=[v - 0.02 for v in per_seed])}}
  (folder / 'results.json').write_text(json.dumps({'study': name, 'seeds': 3, 'base': {'steps': 400}, 'rows': rows}))


def test_findings_generator_follows_the_records_and_its_expectations(tmp_path):
  _fake_study(tmp_path, 's', [0.80, 0.81, 0.83])
  (tmp_path / 'docs' / 'records').mkdir(exist_ok=True)
  (tmp_path / findings.PROSE).write_text(
      '[[table]]\nregion = "findings"\nhere = "here"\n[[table.finding]]\nclaim = "A beats B (Tbl 3: {paper s a})"\n'
      'here = "probe {probe s a}; A − B {diff s a b:pm1} points over {seeds s a} seeds"\nverdict = "**yes**"\n'
      'expect = { "diff s a b:verdict" = "ahead" }\n'
      '[[record]]\nfolder = "s"\ndate = "2026-12-06"\nwhat = "{rows s} rows, {seed_count s}"\n'
      '[[glance]]\nstudy = "s"\nsection = "#the-s-study"\nrecord = "s"\n'
      'found = "probe {probe s a}; A ahead of B ({diff s a b:short1})"\n'
      'expect = { "diff s a b:verdict" = "ahead" }\n')
  begin, end = findings._markers('findings')
  (tmp_path / findings.README).write_text(f'# R\n\n{begin}\nstale\n{end}\n\nafter\n')
  begin, end = findings._markers('study records')
  (tmp_path / findings.RECORDS_INDEX).write_text(f'# Records\n{begin}\n{end}\n')
  (tmp_path / findings.GUIDE).write_text('# Studies\n\n## Findings at a glance\n{}\n{}\n\n## The s study\n'.format(
      *findings._markers('study findings')))
  for path, text in findings.regenerated(str(tmp_path)).items():
    (tmp_path / path).write_text(text)
  readme = (tmp_path / findings.README).read_text()
  assert ('| A beats B (Tbl 3: 77.86) | probe 0.813 ± 0.010; A − B +2.0 ± 0.0 points over 3 seeds | **yes** |'
          in readme) and readme.endswith(f'{end.replace("study records", "findings")}\n\nafter\n')
  assert '| 2026-12-06 | [s/](study/s/) | 2 rows, 3 seeds |  |' in (tmp_path / findings.RECORDS_INDEX).read_text()
  guide = (tmp_path / findings.GUIDE).read_text()
  assert ('| [`s`](#the-s-study) | probe 0.813 ± 0.010; A ahead of B (+2.0, [+2.0, +2.0]) | [s/](records/study/s/) |'
          in guide)
  assert broken_links(str(tmp_path / findings.GUIDE), str(tmp_path)) == []  # its links reach the section and record
  assert findings.stale(str(tmp_path)) == []

  (tmp_path / findings.STUDY_RECORDS / 's' / 'results.json').unlink()  # a new seed changes the numbers
  (tmp_path / findings.STUDY_RECORDS / 's').rmdir()
  _fake_study(tmp_path, 's', [0.80, 0.81, 0.83, 0.84])
  assert findings.stale(str(tmp_path)) == [findings.README, findings.GUIDE, findings.RECORDS_INDEX]

  _fake_study(tmp_path, 'new_study', [0.8])  # a record without its line in the index
  with pytest.raises(findings.FindingsError, match='no \\[\\[record\\]\\] for docs/records/study/new_study'):
    findings.regenerated(str(tmp_path))


def test_the_glance_table_names_existing_records_and_holds_its_wording(tmp_path):
  _fake_study(tmp_path, 's', [0.80, 0.81, 0.83])
  records = findings.Records(str(tmp_path))
  line = {'study': 's', 'section': '#s', 'found': 'A − B {diff s a b:mean1}', 'record': ['s', 'gone']}
  with pytest.raises(findings.FindingsError, match='no record docs/records/study/gone/results.json'):
    findings.glance_table({'glance': [line]}, records)
  with pytest.raises(findings.FindingsError, match="now give .*'ahead', its wording assumes 'behind'"):
    findings.glance_table({'glance': [dict(line, record='s', expect={'diff s a b:verdict': 'behind'})]}, records)
  with pytest.raises(findings.FindingsError, match="glance 's' has no found"):
    findings.glance_table({'glance': [{'study': 's', 'section': '#s', 'record': 's'}]}, records)
  with pytest.raises(findings.FindingsError, match='no \\[\\[glance\\]\\]'):
    findings.glance_table({}, records)
  assert findings.glance_table({'glance': [dict(line, record='s')]}, records).splitlines()[-1] == (
      '| [`s`](#s) | A − B +2.0 | [s/](records/study/s/) |')
  _fake_study(tmp_path, 't_paper_regime', [0.8])  # a study of today's regime without its line
  with pytest.raises(findings.FindingsError, match='no \\[\\[glance\\]\\] names docs/records/study/t_paper_regime'):
    findings.glance_table({'glance': [dict(line, record='s')]}, findings.Records(str(tmp_path)))


def test_findings_stop_when_the_wording_no_longer_fits(tmp_path):
  _fake_study(tmp_path, 's', [0.80, 0.81, 0.83])
  records = findings.Records(str(tmp_path))
  with pytest.raises(findings.FindingsError, match="now give .*'ahead', its wording assumes 'behind'"):
    findings._expectations({'expect': {'diff s a b:verdict': 'behind'}}, records, 'finding x')
  with pytest.raises(findings.FindingsError, match="study s has no row 'c'"):
    findings.render('{probe s c}', records)
  with pytest.raises(findings.FindingsError, match="unknown placeholder function 'median'"):
    findings.render('{median s a linear_probe_top1}', records)
  assert findings.render('{diff s a b:full}', records) == '+2.00 ± 0.00 points, 95% interval [+2.00, +2.00]'
