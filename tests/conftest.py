"""Test setup: 8 fake CPU devices (for the multi-device tests), a persistent compilation cache, what keeps the
suite's compilation small (the fixture `xla_unoptimized`) and the order in which two processes share the files.

The XLA flag must be set before jax is imported anywhere, hence here.
"""
import os
import sys

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(os.path.expanduser('~'), '.cache', 'byol_jax_jit'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('MPLBACKEND', 'Agg')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


@pytest.fixture
def xla_unoptimized(monkeypatch):
  """XLA with most of its optimizations off (jax_disable_most_optimizations) for one test, in this process and in
  the subprocesses it starts (`pytestmark = pytest.mark.usefixtures('xla_unoptimized')` for a whole module).
  Compiling is most of a test that runs a few steps, and this halves it (tests/test_batched.py: 44 s -> 23 s of CPU,
  2026-12-06); the programs run slower. For tests that compare numbers with numbers computed the same way, never
  for speed, compiled HLO or numbers recorded elsewhere, and opt-in: XLA:CPU unoptimized computes the colour jitter
  differently from tests/test_data.py's reference (docs/records/ci/suite_2026-12-06.md)."""
  yield from _unoptimized(monkeypatch)


@pytest.fixture(scope='module')
def xla_unoptimized_module():
  """xla_unoptimized for a whole module, its module-scoped fixtures too (a training run the module's tests share:
  name it as an argument of that fixture, so that it comes first)."""
  with pytest.MonkeyPatch.context() as monkeypatch:
    yield from _unoptimized(monkeypatch)


def _unoptimized(monkeypatch):
  import jax
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  before = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', True)
  # The flag is not part of jit's in-memory cache key: a function compiled before (or inside) would be reused
  # across the switch, and a later test in this process would run an unoptimized program where a subprocess runs
  # the optimized one (tests/test_slurm.py's exact comparison differed by 5e-6 after test_study.py). The
  # persistent cache keys on the compile options, so it needs nothing.
  jax.clear_caches()
  yield
  jax.config.update('jax_disable_most_optimizations', before)
  jax.clear_caches()


# The files that take longest, first, so that two processes end together: with `--dist loadfile
# --no-loadscope-reorder` (the README's command) pytest-xdist hands out whole files in this order, one to each
# process and the next to whichever is free (by default it orders them by their number of tests, and a file of one
# two-minute test would start last). The slowest files of docs/records/ci/ (suite_2026-12-04.md, -06.md); the rest
# follow in pytest's order, and a stale entry costs balance, nothing else. (`--dist loadgroup` would let a file's tests
# spread, but pytest-xdist 3.8 cannot group tests under pytest 9.2: every test runs alone, as with `--dist load`,
# and module fixtures are built in both processes.)
LONGEST_FIRST = ('test_study.py', 'test_train.py', 'test_slurm.py', 'test_multihost.py', 'test_faults.py',
                 'test_weights.py', 'test_step.py', 'test_notebooks.py', 'test_tfds.py', 'test_image_folder.py',
                 'test_models.py', 'test_bench.py')


def pytest_collection_modifyitems(config, items):
  """In pytest-xdist's processes, the longest files first (LONGEST_FIRST)."""
  if not hasattr(config, 'workerinput'):  # not a pytest-xdist process: pytest's order
    return
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
