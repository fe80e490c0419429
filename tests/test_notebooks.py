"""Execute every notebook in notebooks/ headless (nbclient) and check it produced its figures.

Needs a 'python3' Jupyter kernel spec: CI runs `python -m ipykernel install --sys-prefix` once. jupyter_client
replaces the spec's `python` with the running interpreter (sys.executable), so the kernel uses this venv.
"""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb')))


def test_notebooks_exist():
  names = [os.path.basename(p) for p in NOTEBOOKS]
  for prefix in ('01_', '02_', '03_', '04_', '05_', '06_'):
    assert any(n.startswith(prefix) for n in names), names


@pytest.mark.slow  # a Jupyter kernel each, 6-40 s; the theory they plot is tested in test_theory_*.py
@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
@pytest.mark.usefixtures('xla_unoptimized')  # the kernel too: the notebooks check stories, not speed
def test_notebook_runs_and_plots(path, tmp_path, monkeypatch):
  monkeypatch.setenv('THEORY_FIG_DIR', str(tmp_path))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:  # run from a clean slate, not the stored outputs
    if cell.cell_type == 'code':
      cell.outputs = []
  client = NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(path)}})
  client.execute()  # raises CellExecutionError on any failing cell (the notebooks assert their story)
  images = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if 'image/png' in o.get('data', {})]
  assert images, 'no figure displayed'
  pngs = list(tmp_path.glob('*.png'))
  assert pngs and all(p.stat().st_size > 5000 for p in pngs), pngs
