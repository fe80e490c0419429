"""The documentation's links resolve, and no file of the project refers to a path outside it.

Pure Python (no JAX), well under a second.

- Every relative link of README.md and docs/**/*.md (`[text](path)`, `![alt](path)`, `path#anchor`, `#anchor`)
  names a file or folder that exists, and an anchor names a heading of the Markdown file it points to (GitHub's
  heading ids). Links inside code blocks and code spans are not links; http(s) and mailto links are not checked.
- No text file of the repository (git's tracked and untracked-but-not-ignored files) names a path outside the
  project: the design folder beside the checkout, or a machine's absolute work and home folders (OUTSIDE,
  written in pieces so that this file does not name them itself). Raw records under docs/records/ are
  exempt, except their Markdown write-ups: a log or a run's summary.json quotes the paths of the machine it was
  measured on, and records are kept as measured.
"""
import os
import re
import subprocess
import unicodedata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = 'docs/records/'
OUTSIDE = tuple(p.replace('|', '/') for p in ('..|shared', 'shared|design', '|work|', '|root|', '|home|'))

FENCE = re.compile(r'^(```|~~~).*?^\1[^\n]*$', re.M | re.S)
CODE_SPAN = re.compile(r'(`+)(?!`).*?(?<!`)\1(?!`)', re.S)
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
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
  return [m.group(1) for m in LINK.finditer(_strip_code(text))]


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


def test_no_file_refers_outside_the_project():
  this = os.path.relpath(os.path.abspath(__file__), ROOT)
  found = []
  for rel in project_files():
    if rel == this or (rel.startswith(RECORDS) and not rel.endswith('.md')):
      continue
    text = read_text(os.path.join(ROOT, rel))
    if text is not None:
      found += outside_references(rel, text)
  assert not found, 'paths outside the project:\n' + '\n'.join(found)


def test_the_checks_catch_what_they_should(tmp_path):
  doc = tmp_path / 'a.md'
  (tmp_path / 'b.md').write_text('# Title: one\n\n## Two `x` (y)\n\n## Two `x` (y)\n')
  doc.write_text('[ok](b.md) [ok](b.md#title-one) [ok](b.md#two-x-y-1) ![img](missing.png) [bad](b.md#nope)\n'
                 '`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n[web](https://example.org/x)\n')
  assert broken_links(str(doc), str(tmp_path)) == ['missing.png: no such file or folder',
                                                   'b.md#nope: no heading #nope in b.md']
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
