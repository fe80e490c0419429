"""The layering: loading a config needs ml_collections only, and no module imports one above it."""
import ast
import glob
import json
import os
import subprocess
import sys

from byol_jax import choices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ('jax', 'flax', 'optax')
# Config arguments worth loading too (each takes well under a second); every config is also loaded without one.
ARGS = {'configs/stl10.py': ['linear_sym,no_ema,wd4e-3', 'mlp,simsiam,no_stop_grad,epochs300'],
        'configs/cifar10.py': ['freq5,epochs300'], 'configs/imagenet.py': ['linear'],
        'configs/imagenet_60ep.py': ['directpred']}
STUDY_ARGS = ['short', 'stl10', 'cifar10']
# Configs that need their argument: configs/run.py reads a run directory (here a committed record's run).
RUN_DIR = 'docs/records/study/table3_paper_regime/linear_no_ema/seed0'
NEEDS_ARG = {'configs/run.py': [RUN_DIR]}

# In a fresh interpreter: each config loaded as `--config=FILE[:ARG]` is (ml_collections' config_flags, as every
# entry point), then the modules JAX, flax or optax loaded so far; also the CPU core count set_cpu_devices reads.
_LOAD = """
import json, sys
from absl import flags
from ml_collections import config_flags
from byol_jax import cli  # the entry points' flag helpers
from byol_jax.models import native
native.cpu_cores()
out = {}
for i, spec in enumerate(json.loads(sys.argv[1])):
  holder = config_flags.DEFINE_config_file(f'config{i}', spec, lock_config=True)
  flags.FLAGS(['prog'])
  holder.value.to_json_best_effort()
  out[spec] = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax'))[:3]
print(json.dumps(out))
"""


def _config_files() -> list[str]:
  files = []
  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)):
    tree = ast.parse(open(path).read())
    if any(isinstance(n, ast.FunctionDef) and n.name == 'get_config' for n in tree.body):
      files.append(os.path.relpath(path, ROOT))
  return files


def _takes_arg(path: str) -> bool:
  tree = ast.parse(open(os.path.join(ROOT, path)).read())
  get_config = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'get_config')
  return bool(get_config.args.args)


def test_loading_any_config_leaves_jax_flax_and_optax_unimported():
  files = _config_files()
  assert {'configs/fashion_mnist.py', 'configs/stl10.py', 'configs/study/predictors.py',
          'configs/theory/default.py'} <= set(files)
  specs = []
  for f in files:
    if f in NEEDS_ARG:
      specs += [f'{f}:{a}' for a in NEEDS_ARG[f]]
      continue
    specs.append(f)
    specs += [f'{f}:{a}' for a in ARGS.get(f, STUDY_ARGS if f.startswith('configs/study/') and _takes_arg(f) else [])]
  proc = subprocess.run([sys.executable, '-c', _LOAD, json.dumps(specs)], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(loaded) == set(specs)
  assert {spec: mods for spec, mods in loaded.items() if mods} == {}, 'a config load imported these'


def _all_imports(path: str) -> list[str]:
  """Every module a file imports, at its top level or inside a function."""
  out = []
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      out += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      out += [node.module] + [f'{node.module}.{a.name}' for a in node.names]
  return out


def _module_imports(path: str) -> list[str]:
  """The modules a file imports when it is imported (its top level; not the imports inside functions)."""
  out = []
  for node in ast.parse(open(path).read()).body:
    if isinstance(node, ast.Import):
      out += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      out += [node.module] + [f'{node.module}.{a.name}' for a in node.names]
  return out


def _imports_of(pattern: str) -> dict[str, list[str]]:
  return {os.path.relpath(p, ROOT): _module_imports(p) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)}


def _outside(imports: dict, allowed: tuple) -> dict:
  """{file: the byol_jax / theory modules it imports that are not under an allowed prefix}."""
  bad = {}
  for f, mods in imports.items():
    wrong = [m for m in mods if m.split('.')[0] in ('byol_jax', 'theory') and not m.startswith(allowed)]
    if wrong:
      bad[f] = wrong
  return bad


def test_no_module_imports_one_above_it():
  # The models import only the models and the choice lists: not the config, the step or the training loop.
  models = _imports_of('byol_jax/models/**/*.py')
  assert 'byol_jax/models/heads.py' in models
  assert _outside(models, ('byol_jax.models', 'byol_jax.choices')) == {}
  assert not any('byol_jax.config' in m for mods in models.values() for m in mods)
  # The schema and the switch language sit below everything that uses them.
  assert _outside(_imports_of('byol_jax/config.py'), ('byol_jax.choices',)) == {}
  assert _outside(_imports_of('byol_jax/choices.py'), ()) == {}
  assert _outside(_imports_of('byol_jax/switches.py'), ()) == {}
  # The math shared with theory/ knows nothing of training.
  assert _outside(_imports_of('byol_jax/spectral.py'), ('byol_jax.choices',)) == {}
  # Nothing loads a config file to borrow its code: byol_jax imports no configs/ module.
  for f, mods in _imports_of('byol_jax/**/*.py').items():
    assert not any(m.startswith('configs') for m in mods), f
    assert 'load_config_module' not in open(os.path.join(ROOT, f)).read() or f == 'byol_jax/config.py', f


def test_the_choice_lists_are_what_the_implementations_dispatch_on():
  from byol_jax.models import resnet
  assert tuple(resnet.ARCHITECTURES) == choices.BACKBONES
  assert set(resnet.CONV_FUNCTIONS) | {'auto'} == set(choices.CONV_IMPLS)


def test_the_library_never_imports_the_studies():
  """byol_jax/study/ sits above the library: a run, its measurements and its run directory know nothing of
  studies; a study drives runs through their run directories (byol_jax/rundir.py)."""
  files = glob.glob(os.path.join(ROOT, 'byol_jax', '**', '*.py'), recursive=True)
  outside = [f for f in files if not os.path.relpath(f, ROOT).startswith('byol_jax/study/')]
  assert os.path.join(ROOT, 'byol_jax', 'train.py') in outside and len(outside) > 20
  bad = {os.path.relpath(f, ROOT): [m for m in _all_imports(f) if m.startswith('byol_jax.study')] for f in outside}
  assert {f: mods for f, mods in bad.items() if mods} == {}
  # Reading a run directory needs no JAX and nothing above it: its top level imports no byol_jax module.
  assert _outside(_imports_of('byol_jax/rundir.py'), ()) == {}
  assert not [m for m in _module_imports(os.path.join(ROOT, 'byol_jax', 'rundir.py')) if m.split('.')[0] in HEAVY]
  # What a run measures of itself is the library's: the collapse indicators and the spectra beside the theory.
  for f in ('byol_jax/collapse.py', 'byol_jax/real_vs_theory.py', 'byol_jax/features.py'):
    assert not any(m.startswith('byol_jax.study') for m in _all_imports(os.path.join(ROOT, f))), f

