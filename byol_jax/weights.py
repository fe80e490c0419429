"""Pretrained weights in and out: a DeepMind BYOL checkpoint or a torchvision-layout ResNet becomes a byol_jax run
directory, and a run's backbone becomes a torchvision-layout file.

  python -m byol_jax.weights import --format=dm_byol --src=pretrain_res50x1.pkl --workdir=runs/byol_r50
  python -m byol_jax.weights import --format=torchvision --src=resnet50.safetensors --workdir=runs/tv_r50 \\
      [--strip_prefix=module.encoder.] [--config=configs/stl10.py ...]
  python -m byol_jax.weights export --workdir=runs/fmnist --format=torchvision --out=backbone.safetensors

An imported run directory is a run like any other: config.json (the architecture read from the file, everything else
from --config, configs/imagenet.py by default) and one checkpoint, which `byol_jax.embed`, and `byol_jax.main
--config=configs/run.py:DIR --workdir=DIR` (to evaluate or train on) restore. `imported.json` beside them says
what came from where. docs/weights.md is the guide.

- dm_byol: the dill/pickle file DeepMind's BYOL code writes, dict(experiment_state=_ByolExperimentState(
  online_params, target_params, online_state, target_state, opt_state), step=..., rng=...), with Haiku's names
  ('res_net50/~/block_group_0/~/block_0/~/conv_0', ..., 'projector/linear', 'predictor/batch_norm', 'classifier';
  BatchNorm statistics in '.../~/mean_ema' and '.../~/var_ema', 'average'). The network is built with
  model.padding='same', as Haiku pads. Online backbone, projector, predictor, their BatchNorm statistics and the
  classifier (as the probe, where its class count is the dataset's) come from the file; the target from the file's
  target where it holds one, else a copy of the online tower.
  The file is not trusted: it is read by an unpickler that builds NumPy arrays, dicts, lists and tuples, and
  inert stand-ins for the containers of the `byol`, `haiku`, `optax` and `jax` packages; any other class or
  function the file names stops the import before it is built.
- torchvision: a ResNet `state_dict` (conv1, bn1, layer1.0.conv1, ..., downsample.0, fc) as .safetensors or .npz,
  or .pth/.pt where torch is installed (torch.load(weights_only=True)). Prefixes such as `module.encoder.` are
  stripped (--strip_prefix; found by itself when one prefix fits). The backbone (and `fc` as the probe, where it
  fits) comes from the file; projector and predictor start as --config initialises them.

A wrong, truncated or foreign file, a missing key or a shape that does not fit stops with one line naming the file
and the key, exit status 2, and nothing written.
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import io
import json
import os
import pickle
import shutil
import sys

import numpy as np
from absl import app, flags, logging

from byol_jax import cli

FORMATS = ('dm_byol', 'torchvision')
IMPORTED = 'imported.json'  # provenance of an imported run directory
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'imagenet.py')
# The fields of byol.byol_experiment._ByolExperimentState, in order (a pickled NamedTuple keeps only the values).
DM_STATE_FIELDS = ('online_params', 'target_params', 'online_state', 'target_state', 'opt_state')
# Packages whose classes a DeepMind BYOL checkpoint holds as containers (the experiment state, Haiku's mappings,
# optax/LARS optimizer states, jax arrays in `rng`): they are read as inert stand-ins, never imported.
STUB_PACKAGES = ('byol', 'haiku', 'optax', 'jax', 'jaxlib')


class WeightsError(ValueError):
  """A file or run directory that cannot be used; the message is one line naming the file and the key."""


# ----------------------------------------------------------------------------------------------------
# Reading a pickle without running it
# ----------------------------------------------------------------------------------------------------
class Stub:
  """Stands in for a class of STUB_PACKAGES that a pickle names: keeps the arguments, state and items the pickle
  gives it and runs nothing. `plain` turns it into the dict or tuple it held."""
  fields: tuple = ()

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.args, obj.kwargs, obj.state, obj.items, obj.elements = args, kwargs, None, {}, []
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.elements.append(value)

  def extend(self, values):
    self.elements.extend(values)


_stub_classes: dict = {}


def _stub_class(module: str, name: str, fields: tuple = ()) -> type:
  key = (module, name)
  if key not in _stub_classes:
    if not fields and key == ('byol.byol_experiment', '_ByolExperimentState'):
      fields = DM_STATE_FIELDS
    _stub_classes[key] = type(name, (Stub,), {'fields': tuple(fields), '__module__': f'stub:{module}'})
  return _stub_classes[key]


def _ndarray_reconstruct(subtype, shape, dtype):
  if subtype is not np.ndarray:
    raise pickle.UnpicklingError(f'an array of type {getattr(subtype, "__name__", subtype)!r}')
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def _latin1_encode(text, encoding='utf-8'):
  if encoding != 'latin1' or not isinstance(text, str):
    raise pickle.UnpicklingError(f'_codecs.encode with encoding {encoding!r}')
  return text.encode('latin1')  # how protocol-2 pickles written by Python 3 hold bytes


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise pickle.UnpicklingError('a NumPy scalar of an object dtype')
  return np.frombuffer(data, dtype, count=1)[0]


def _frombuffer(buffer, dtype, shape, order):
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise pickle.UnpicklingError('an array of an object dtype')
  return np.frombuffer(buffer, dtype).reshape(shape, order=order).copy()


def _dill_namedtuple(name, fieldnames, modulename, defaults=None):
  del defaults
  if not str(modulename).split('.')[0] in STUB_PACKAGES:
    raise pickle.UnpicklingError(f'a named tuple of module {modulename!r}')
  return _stub_class(str(modulename), str(name), tuple(fieldnames))


def _dtype(spec, align=False, copy=True):
  dtype = np.dtype(spec, align, copy)
  if dtype.hasobject:
    raise pickle.UnpicklingError('an object dtype')
  return dtype


_SAFE_GLOBALS = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): _dtype,
    ('_codecs', 'encode'): _latin1_encode,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('dill._dill', '_create_namedtuple'): _dill_namedtuple,
}
for _core in ('numpy.core', 'numpy._core'):  # NumPy 1 wrote numpy.core, NumPy 2 writes numpy._core
  _SAFE_GLOBALS[(f'{_core}.multiarray', '_reconstruct')] = _ndarray_reconstruct
  _SAFE_GLOBALS[(f'{_core}.multiarray', 'scalar')] = _numpy_scalar
  _SAFE_GLOBALS[(f'{_core}.numeric', '_frombuffer')] = _frombuffer


class RestrictedUnpickler(pickle.Unpickler):
  """pickle.Unpickler that resolves only _SAFE_GLOBALS and stand-ins (Stub) for STUB_PACKAGES' names."""

  def find_class(self, module, name):
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    if module.split('.')[0] in STUB_PACKAGES:
      return _stub_class(module, name)
    raise pickle.UnpicklingError(f'it names {module}.{name}, which a DeepMind BYOL checkpoint does not hold; '
                                 'refused without running it')

  def persistent_load(self, pid):
    raise pickle.UnpicklingError('it holds persistent references (a torch file?)')


def _mapping_in_state(state):
  """The one mapping a stand-in's pickled state holds (__dict__ or __slots__ of a mapping class), or None."""
  if isinstance(state, tuple) and len(state) == 2:
    state = {**(state[0] or {}), **(state[1] or {})} if all(
        s is None or isinstance(s, dict) for s in state) else None
  if not isinstance(state, dict):
    return None
  mappings = [v for v in state.values() if isinstance(v, (dict, Stub))]
  return plain(mappings[0]) if len(mappings) == 1 else None


def plain(obj):
  """The unpickled object with every stand-in replaced by what it held: a dict (Haiku's mappings, named tuples of
  known fields), the array it wraps, or a tuple."""
  if isinstance(obj, Stub):
    if obj.items:
      return {k: plain(v) for k, v in obj.items.items()}
    args = [plain(a) for a in obj.args]
    if obj.fields and len(args) == len(obj.fields):
      return dict(zip(obj.fields, args))
    if len(args) == 1 and isinstance(args[0], (dict, np.ndarray)):
      return args[0]  # frozendict(mapping), FlatMapping(mapping), a device array of a NumPy array
    held = _mapping_in_state(obj.state)
    if held is not None:
      return held
    return tuple(args)
  if isinstance(obj, dict):
    return {k: plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(plain(v) for v in obj)
  return obj


def unpickle(path: str):
  """The content of a pickle file, read by RestrictedUnpickler; WeightsError (one line) for anything else."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise WeightsError(f'{path}: cannot be read ({e.strerror})') from None
  if not data:
    raise WeightsError(f'{path}: empty file; give a DeepMind BYOL checkpoint (.pkl)')
  if data[:1] != b'\x80':
    raise WeightsError(f'{path}: not a pickle (it starts with {data[:8]!r}); give a DeepMind BYOL checkpoint (.pkl)')
  try:
    return plain(RestrictedUnpickler(io.BytesIO(data)).load())
  except EOFError:
    raise WeightsError(f'{path}: truncated ({len(data)} bytes end inside the pickle); download it again') from None
  except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
    reason = ' '.join(str(e).split()) or type(e).__name__
    raise WeightsError(f'{path}: not a DeepMind BYOL checkpoint: {reason}') from None


# ----------------------------------------------------------------------------------------------------
# DeepMind BYOL checkpoints
# ----------------------------------------------------------------------------------------------------
def read_dm_byol(path: str) -> dict:
  """{'online_params', 'online_state', 'target_params' (or None), 'target_state' (or None), 'step'} of a DeepMind
  BYOL checkpoint, as plain dicts {module name: {leaf: array}}."""
  content = unpickle(path)
  if not isinstance(content, dict) or 'experiment_state' not in content:
    got = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
    raise WeightsError(f'{path}: key experiment_state missing (found {got}); a DeepMind BYOL checkpoint is '
                       'dict(experiment_state=..., step=..., rng=...)')
  state = content['experiment_state']
  if isinstance(state, (tuple, list)) and len(state) == len(DM_STATE_FIELDS):
    state = dict(zip(DM_STATE_FIELDS, state))
  if not isinstance(state, dict):
    raise WeightsError(f'{path}: experiment_state is a {type(state).__name__}, not the experiment state '
                       f'({", ".join(DM_STATE_FIELDS)})')
  for key in ('online_params', 'online_state'):
    if not isinstance(state.get(key), dict):
      raise WeightsError(f'{path}: key experiment_state.{key} missing or not a mapping of Haiku modules')
  step = content.get('step', 0)
  try:
    step = int(np.asarray(step).reshape(-1)[0])
  except (TypeError, ValueError, IndexError):
    raise WeightsError(f'{path}: key step is {step!r}, not a step count') from None
  target = state.get('target_params')
  return dict(online_params=state['online_params'], online_state=state['online_state'],
              target_params=target if isinstance(target, dict) and target else None,
              target_state=state.get('target_state') if isinstance(target, dict) and target else None, step=step)


_DM_BLOCK = {'conv1': 'conv_0', 'bn1': 'batchnorm_0', 'conv2': 'conv_1', 'bn2': 'batchnorm_1', 'conv3': 'conv_2',
             'bn3': 'batchnorm_2', 'shortcut': 'shortcut_conv', 'shortcut_bn': 'shortcut_batchnorm'}
_DM_MLP = {'fc1': 'linear', 'bn': 'batch_norm', 'fc2': 'linear_1'}


def _dm_prefix(params: dict, path: str) -> str:
  prefixes = sorted(k[:-len('/~/initial_conv')] for k in params if k.endswith('/~/initial_conv'))
  if len(prefixes) != 1:
    raise WeightsError(f"{path}: key online_params['res_net50/~/initial_conv'] missing (no ResNet encoder's "
                       f"initial convolution among {len(params)} modules); not a DeepMind BYOL checkpoint")
  return prefixes[0]


def _stages(has_block) -> tuple:
  stages = []
  for g in range(4):
    b = 0
    while has_block(g, b):
      b += 1
    stages.append(b)
  return tuple(stages)


def _backbone_name(kind: str, stages: tuple, path: str, what: str) -> str:
  from byol_jax.models.resnet import ARCHITECTURES
  for name, arch in ARCHITECTURES.items():
    if arch == (kind, stages):
      return name
  known = ', '.join(f'{n} {a[1]}' for n, a in ARCHITECTURES.items() if a[0] == kind)
  raise WeightsError(f'{path}: {what} has {kind} blocks {stages} per stage, which no byol_jax backbone has '
                     f'({kind}: {known})')


def dm_architecture(ckpt: dict, path: str) -> dict:
  """The config keys ({'model.backbone': ...}) of the network a DeepMind BYOL checkpoint holds."""
  params = ckpt['online_params']
  prefix = _dm_prefix(params, path)
  if f'{prefix}/~/final_batchnorm' in params:
    raise WeightsError(f"{path}: key online_params['{prefix}/~/final_batchnorm']: a ResNet v2 (pre-activation), "
                       'which byol_jax does not build (its ResNets are v1, as BYOL\'s published ones)')
  block = lambda g, b: f'{prefix}/~/block_group_{g}/~/block_{b}/~/'
  stages = _stages(lambda g, b: block(g, b) + 'conv_0' in params)
  kind = 'bottleneck' if block(0, 0) + 'conv_2' in params else 'basic'
  if kind == 'basic':
    raise WeightsError(f"{path}: key online_params['{block(0, 0)}conv_2'] missing: basic blocks (ResNet-18/34), "
                       'whose first block DeepMind projects (use_projection) where byol_jax does not; only the '
                       'bottleneck ResNets (50, 101, 152, 200) import')
  arch = {'model.backbone': _backbone_name(kind, stages, path, f'the encoder {prefix}'),
          'model.width': int(_leaf(params, f'{prefix}/~/initial_conv', 'w', path, 'online_params').shape[-1]),
          'model.stem': 'imagenet', 'model.padding': 'same', 'predictor.kind': 'mlp'}
  for head, hidden_key, dim_key in (('projector', 'model.projector_hidden', 'model.projector_dim'),
                                    ('predictor', 'predictor.hidden', None)):
    w1 = _leaf(params, f'{head}/linear', 'w', path, 'online_params')
    w2 = _leaf(params, f'{head}/linear_1', 'w', path, 'online_params')
    arch[hidden_key] = int(w1.shape[-1])
    if dim_key:
      arch[dim_key] = int(w2.shape[-1])
    affine = 'scale' in params.get(f'{head}/batch_norm', {})
    arch['model.projector_bn_affine' if head == 'projector' else 'predictor.bn_affine'] = affine
    arch['model.projector_output_bias' if head == 'projector' else 'predictor.output_bias'] = (
        'b' in params[f'{head}/linear_1'])
  arch['model.zero_init_last_bn_scale'] = True  # as Haiku's bottleneck blocks start (matters only for a new run)
  return arch


def check_dm_encoder(ckpt: dict, prefix: str, stages: tuple, path: str) -> None:
  """WeightsError naming the first encoder key a bottleneck ResNet of `stages` needs that the file lacks: found
  before any network is built (fill checks the shapes, and the heads)."""
  params, state = ckpt['online_params'], ckpt['online_state']
  bns = [f'{prefix}/~/initial_batchnorm']
  _leaf(params, f'{prefix}/~/initial_conv', 'w', path, 'online_params')
  for g, n in enumerate(stages):
    for b in range(n):
      block = f'{prefix}/~/block_group_{g}/~/block_{b}/~/'
      convs = [f'conv_{i}' for i in range(3)] + (['shortcut_conv'] if b == 0 else [])
      for conv in convs:
        _leaf(params, block + conv, 'w', path, 'online_params')
      bns += [block + c.replace('conv', 'batchnorm') for c in convs]
  for bn in bns:
    for leaf in ('scale', 'offset'):
      _leaf(params, bn, leaf, path, 'online_params')
    for ema in ('mean_ema', 'var_ema'):
      _leaf(state, f'{bn}/~/{ema}', 'average', path, 'online_state')


def _leaf(tree: dict, module: str, leaf: str, path: str, collection: str):
  node = tree.get(module)
  if not isinstance(node, dict) or leaf not in node:
    raise WeightsError(f"{path}: key {collection}['{module}']['{leaf}'] missing")
  return node[leaf]


def _group_block(index: int, stages: tuple) -> tuple:
  for g, n in enumerate(stages):
    if index < n:
      return g, index
    index -= n
  raise IndexError(index)


def dm_source(module_path: tuple, leaf: str, prefix: str, stages: tuple):
  """(collection 'params' or 'state', Haiku module name, leaf name) of a byol_jax leaf: module_path is its place
  in the online or target tree, ('tower', 'encoder', 'blocks', 3, 'conv2') or ('predictor', 'bn')."""
  part = module_path[1:] if module_path[0] == 'tower' else module_path
  if part[0] == 'encoder':
    if part[1] in ('stem_conv', 'stem_bn'):
      module = f"{prefix}/~/{'initial_conv' if part[1] == 'stem_conv' else 'initial_batchnorm'}"
    else:
      g, b = _group_block(int(part[2]), stages)
      module = f'{prefix}/~/block_group_{g}/~/block_{b}/~/{_DM_BLOCK[part[3]]}'
  elif part[0] in ('projector', 'predictor'):
    module = f'{part[0]}/{_DM_MLP[part[1]]}'
  elif part[0] == 'probe':
    module = 'classifier'
  else:
    raise KeyError(module_path)
  is_bn = 'batchnorm' in module or 'batch_norm' in module
  if leaf in ('mean', 'var'):
    return 'state', f'{module}/~/{leaf}_ema', 'average'
  return 'params', module, {'kernel': 'w', 'scale': 'scale', 'bias': 'offset' if is_bn else 'b'}[leaf]


# ----------------------------------------------------------------------------------------------------
# torchvision-layout state_dicts
# ----------------------------------------------------------------------------------------------------
_TV_BLOCK = {'conv1': 'conv1', 'bn1': 'bn1', 'conv2': 'conv2', 'bn2': 'bn2', 'conv3': 'conv3', 'bn3': 'bn3',
             'shortcut': 'downsample.0', 'shortcut_bn': 'downsample.1'}
_TV_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def tv_source(module_path: tuple, leaf: str, stages: tuple) -> str:
  """The torchvision state_dict key of a byol_jax leaf (module_path as in dm_source)."""
  part = module_path[1:] if module_path[0] == 'tower' else module_path
  if part[0] == 'probe':
    return f'fc.{_TV_LEAF[leaf]}'
  if part[0] != 'encoder':
    raise KeyError(module_path)
  if part[1] in ('stem_conv', 'stem_bn'):
    return f"{'conv1' if part[1] == 'stem_conv' else 'bn1'}.{_TV_LEAF[leaf]}"
  g, b = _group_block(int(part[2]), stages)
  return f'layer{g + 1}.{b}.{_TV_BLOCK[part[3]]}.{_TV_LEAF[leaf]}'


def read_state_dict(path: str) -> dict:
  """{key: float32/int64 array} of a .safetensors, .npz or (where torch is installed) .pth/.pt file."""
  ext = os.path.splitext(path)[1].lower()
  if not os.path.isfile(path):
    raise WeightsError(f'{path}: no such file')
  try:
    if ext == '.safetensors':
      from safetensors.numpy import load_file
      return dict(load_file(path))
    if ext == '.npz':
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    if ext in ('.pth', '.pt', '.tar'):
      return _read_torch(path)
  except WeightsError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (each library has its own errors for a bad file)
    reason = ' '.join(str(e).split())[:200] or type(e).__name__
    raise WeightsError(f'{path}: not a readable {ext} state_dict: {reason}') from None
  raise WeightsError(f'{path}: unknown extension {ext!r}; give a .safetensors, .npz or .pth state_dict')


def _read_torch(path: str) -> dict:
  try:
    import torch
  except ImportError:
    raise WeightsError(f'{path}: reading .pth needs torch (pip install torch), or save the state_dict as '
                       '.safetensors (safetensors.torch.save_file) or .npz elsewhere') from None
  content = torch.load(path, map_location='cpu', weights_only=True)  # tensors and containers only, no code
  if isinstance(content, dict) and isinstance(content.get('state_dict'), dict):
    content = content['state_dict']  # a training checkpoint (SimSiam, MoCo): {'epoch', 'state_dict', ...}
  if not isinstance(content, dict):
    raise WeightsError(f'{path}: holds a {type(content).__name__}, not a state_dict')
  return {k: v.detach().cpu().numpy() for k, v in content.items() if hasattr(v, 'detach')}


def strip(state_dict: dict, prefix: str | None, path: str) -> tuple[dict, str]:
  """(the keys under `prefix`, without it; the prefix). prefix None: the one prefix P with P + 'conv1.weight' and
  P + 'layer1.0.conv1.weight' both keys."""
  if prefix is None:
    found = sorted(k[:-len('conv1.weight')] for k in state_dict
                   if k.endswith('conv1.weight') and k[:-len('conv1.weight')] + 'layer1.0.conv1.weight' in state_dict)
    if len(found) != 1:
      what = 'none holds' if not found else f'{len(found)} prefixes hold ({", ".join(map(repr, found))})'
      raise WeightsError(f'{path}: key conv1.weight: {what} a ResNet (conv1.weight and layer1.0.conv1.weight); '
                         'name one with --strip_prefix')
    prefix = found[0]
  kept = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if 'conv1.weight' not in kept:
    raise WeightsError(f'{path}: key {prefix}conv1.weight missing; check --strip_prefix={prefix!r}')
  return kept, prefix


def tv_architecture(state_dict: dict, path: str) -> dict:
  stages = _stages(lambda g, b: f'layer{g + 1}.{b}.conv1.weight' in state_dict)
  kind = 'bottleneck' if 'layer1.0.conv3.weight' in state_dict else 'basic'
  conv1 = np.asarray(state_dict['conv1.weight'])
  if conv1.ndim != 4 or conv1.shape[2] not in (3, 7):
    raise WeightsError(f'{path}: key conv1.weight has shape {conv1.shape}; a ResNet stem is [out, in, 7, 7] '
                       '(ImageNet) or [out, in, 3, 3] (CIFAR)')
  return {'model.backbone': _backbone_name(kind, stages, path, 'the state_dict'), 'model.width': int(conv1.shape[0]),
          'model.stem': 'imagenet' if conv1.shape[2] == 7 else 'cifar', 'model.padding': 'symmetric'}


def _tv_value(value, leaf: str):
  """A torchvision array in byol_jax's layout: convolutions OIHW -> HWIO, linear [out, in] -> [in, out]."""
  value = np.asarray(value)
  if leaf == 'kernel' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if leaf == 'kernel' and value.ndim == 2:
    return value.T
  return value


# ----------------------------------------------------------------------------------------------------
# Filling byol_jax's trees
# ----------------------------------------------------------------------------------------------------
def _leaves(tree, prefix=()):
  """(module path, leaf name, array) of every leaf of a nested dict of arrays."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix, key, value


def _set(tree, module_path, leaf, value):
  node = tree
  for key in module_path:
    node = node[key]
  node[leaf] = value


def _copy_tree(tree):
  return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}


def fill(tree: dict, root: tuple, lookup, path: str, describe) -> dict:
  """A copy of `tree` (byol_jax arrays, the subtree at `root` of the online or target tree) with every leaf
  replaced by lookup(module path, leaf) -> source array, checked for its shape. WeightsError names the source key."""
  out = _copy_tree(tree)
  for module_path, leaf, target in _leaves(tree):
    value = lookup(root + module_path, leaf)
    where = describe(root + module_path, leaf)
    value = np.asarray(value)
    if value.dtype.kind not in 'fiu':
      raise WeightsError(f'{path}: key {where} holds {value.dtype}, not numbers')
    if value.shape != tuple(target.shape):
      if target.ndim == 1 and value.size == target.shape[0] and max(value.shape, default=1) == value.size:
        value = value.reshape(target.shape)  # Haiku keeps BatchNorm's per-channel arrays as [1, 1, 1, C]
      else:
        raise WeightsError(f'{path}: key {where} has shape {tuple(value.shape)}; the network read from the file '
                           f'needs {tuple(target.shape)} there')
    _set(out, module_path, leaf, np.asarray(value, dtype=target.dtype))
  return out


# ----------------------------------------------------------------------------------------------------
# Run directories
# ----------------------------------------------------------------------------------------------------
def data_shape(config) -> tuple[int, int]:
  """(input channels, classes) of the config's dataset, without loading it where its info says them."""
  from byol_jax import config as config_lib
  from byol_jax.data import sources
  name = config.data.name
  if name in config_lib.TFDS_DATASETS:
    from byol_jax.data import tfds_source
    info = tfds_source.dataset_info(name)
  elif name == 'image_folder':
    from byol_jax import train
    data, info = train.load_data(config)
    return int(data['train'][0].shape[-1]), int(info['num_classes'])
  else:
    info = sources.dataset_info(name)
  channels = 3 if name == 'synthetic' else info['image_shape'][-1]  # (train.load_data makes synthetic RGB)
  return int(channels), int(info['num_classes'])


def _build(config, compute):
  import jax
  from byol_jax import optim, state as state_lib
  in_channels, num_classes = data_shape(config)
  built = {}

  def build():
    built['networks'], state = state_lib.build(config, in_channels=in_channels, num_classes=num_classes,
                                               tx=optim.make_optimizer(config))
    return state
  state = compute(build)()
  return built['networks'], state


def initial_state(config):
  """(networks, state) as a new run of `config` starts, computed under one jit (run op by op, a ResNet-50's
  initialisers compile one small program per shape: slower still)."""
  import jax
  return _build(config, jax.jit)


def abstract_state(config):
  """(networks, the shapes and dtypes of a new run's state): traced, nothing computed (a ResNet-50's
  initialisers take ~30 s to compile on 2 CPU cores; a restore or a full import needs only the shapes)."""
  import jax
  return _build(config, lambda f: lambda: jax.eval_shape(f))


def completed_state(config, abstract, *, params, batch_stats, target_params, target_batch_stats, step: int):
  """A training state from the arrays of an import: the optimizer's state as a new run's (tx.init), DirectPred's
  statistics empty, as state.build makes them."""
  import jax
  from byol_jax import optim
  zeros = lambda s: np.zeros(s.shape, s.dtype)
  return abstract.replace(step=np.asarray(step, np.int32), params=params, batch_stats=batch_stats,
                          target_params=target_params, target_batch_stats=target_batch_stats,
                          opt_state=jax.jit(optim.make_optimizer(config).init)(params),
                          corr=zeros(abstract.corr), corr_count=zeros(abstract.corr_count),
                          corr_mean=zeros(abstract.corr_mean))


def load_run(workdir: str):
  """(config, networks, state) of a run directory's latest checkpoint; WeightsError when it has none."""
  import jax
  from byol_jax import checkpoint, config as config_lib, rundir
  try:
    config = config_lib.finalize(rundir.load_config(workdir))
  except rundir.RunDirError as e:
    raise WeightsError(str(e)) from None
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, rundir.CHECKPOINTS))
  try:
    if ckpt.latest_step() is None:
      raise WeightsError(f'{workdir}: no checkpoint in {ckpt.directory}; give a run directory that has trained')
    networks, abstract = abstract_state(config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = ckpt.restore(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract))
  finally:
    ckpt.close()
  return config, networks, jax.device_get(state)


def write_run(workdir: str, config, state, provenance: dict) -> None:
  """Writes config.json, the checkpoint of `state` and imported.json into a new run directory, atomically: into a
  temporary folder beside it, renamed when complete. `workdir` must not exist, or be empty."""
  import jax
  from byol_jax import checkpoint, rundir
  workdir = os.path.abspath(workdir)
  tmp = f'{workdir}.importing.{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    rundir.write_config(tmp, config)
    ckpt = checkpoint.Checkpointer(os.path.join(tmp, rundir.CHECKPOINTS), keep=config.train.keep_checkpoints)
    ckpt.save(jax.tree.map(jax.numpy.asarray, state))
    ckpt.close()
    with open(os.path.join(tmp, IMPORTED), 'w') as f:
      json.dump(provenance, f, indent=2)
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty (checked before); a non-empty one raises, and nothing is replaced
    os.rename(tmp, workdir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _check_new_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise WeightsError(f'{workdir}: exists and is not empty; import into a new --workdir')


def configure(config, arch: dict):
  """`config` with the architecture keys read from a file set (keys the schema lacks are skipped: none today)."""
  from byol_jax import config as config_lib
  with config.unlocked():
    for key, value in arch.items():
      group, leaf = key.split('.')
      if leaf in config[group]:
        config[group][leaf] = value
  config = config_lib.finalize(config)
  config_lib.validate(config)
  return config


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def import_dm_byol(src: str, workdir: str, config) -> dict:
  """A DeepMind BYOL checkpoint -> a new run directory. Returns imported.json's content."""
  _check_new_workdir(workdir)
  ckpt = read_dm_byol(src)
  arch = dm_architecture(ckpt, src)
  config = configure(config, arch)
  prefix = _dm_prefix(ckpt['online_params'], src)
  stages = _stages_of(config)
  check_dm_encoder(ckpt, prefix, stages, src)
  _, state = abstract_state(config)  # every array but the optimizer's comes from the file

  def lookup_in(params, stats, name):
    def lookup(module_path, leaf):
      collection, module, key = dm_source(module_path, leaf, prefix, stages)
      tree, label = (params, f'{name}_params') if collection == 'params' else (stats, f'{name}_state')
      if module_path[-1] == 'fc2' and leaf == 'bias' and module in params and 'b' not in params[module]:
        return np.zeros(state_leaf(module_path, leaf).shape, np.float32)  # BYOL's output Linear has no bias
      return _leaf(tree, module, key, src, label)
    return lookup

  def describe_in(name):
    def describe(module_path, leaf):
      collection, module, key = dm_source(module_path, leaf, prefix, stages)
      return f"{name}_{collection}['{module}']['{key}']"
    return describe

  def state_leaf(module_path, leaf):
    node = state.params if leaf in ('kernel', 'bias', 'scale') else state.batch_stats
    for k in module_path:
      node = node[k]
    return node[leaf]

  online = lookup_in(ckpt['online_params'], ckpt['online_state'], 'online')
  params = {name: fill(state.params[name], (name,), online, src, describe_in('online'))
            for name in ('tower', 'predictor')}
  stats = {name: fill(state.batch_stats[name], (name,), online, src, describe_in('online'))
           for name in state.batch_stats}
  probe = {k: np.zeros(v.shape, v.dtype) for k, v in state.params['probe'].items()}
  classifier = ckpt['online_params'].get('classifier', {})
  probe_note = 'zeros (the file has no classifier)'
  if 'w' in classifier:
    if np.shape(classifier['w']) == tuple(probe['kernel'].shape):
      probe = fill(probe, ('probe',), online, src, describe_in('online'))
      probe_note = "the file's classifier"
    else:
      probe_note = (f"zeros (the file's classifier has {np.shape(classifier['w'])[-1]} classes, "
                    f"{config.data.name} {probe['kernel'].shape[-1]})")
  params['probe'] = probe
  if ckpt['target_params'] is not None:
    target = lookup_in(ckpt['target_params'], ckpt['target_state'] or {}, 'target')
    target_params = fill(state.target_params, ('tower',), target, src, describe_in('target'))
    target_stats = fill(state.target_batch_stats, ('tower',), target, src, describe_in('target'))
    target_note = "the file's target"
  else:
    target_params, target_stats = params['tower'], stats['tower']
    target_note = 'a copy of the online tower (the file has no target)'
  step = max(1, ckpt['step'])  # byol_jax resumes from checkpoints at steps >= 1
  state = completed_state(config, state, params=params, batch_stats=stats, target_params=target_params,
                          target_batch_stats=target_stats, step=step)
  provenance = _provenance('dm_byol', src, step, arch, {
      'online': 'backbone, projector, predictor and their BatchNorm statistics from the file',
      'probe': probe_note, 'target': target_note, 'file_step': ckpt['step']})
  write_run(workdir, config, state, provenance)
  return provenance


def _stages_of(config) -> tuple:
  from byol_jax.models.resnet import ARCHITECTURES
  return ARCHITECTURES[config.model.backbone][1]


def _provenance(fmt: str, src: str, step: int, arch: dict, parts: dict) -> dict:
  return {'format': fmt, 'src': os.path.abspath(src), 'sha256': _sha256(src), 'step': step,
          'architecture': arch, **parts,
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}


def import_torchvision(src: str, workdir: str, config, strip_prefix: str | None = None) -> dict:
  """A torchvision-layout ResNet state_dict -> a new run directory. Returns imported.json's content."""
  _check_new_workdir(workdir)
  state_dict, prefix = strip(read_state_dict(src), strip_prefix, src)
  arch = tv_architecture(state_dict, src)
  config = configure(config, arch)
  stages = _stages_of(config)
  _, shapes = abstract_state(config)  # every key and shape is checked before anything is computed
  used = set()

  def lookup(module_path, leaf):
    key = tv_source(module_path, leaf, stages)
    if key not in state_dict:
      raise WeightsError(f'{src}: key {prefix}{key} missing')
    used.add(key)
    return _tv_value(state_dict[key], leaf)

  describe = lambda module_path, leaf: prefix + tv_source(module_path, leaf, stages)
  encoder = fill(shapes.params['tower']['encoder'], ('tower', 'encoder'), lookup, src, describe)
  encoder_stats = fill(shapes.batch_stats['tower']['encoder'], ('tower', 'encoder'), lookup, src, describe)
  probe, probe_note = None, 'initialised (the file has no fc)'
  if 'fc.weight' in state_dict:
    if np.shape(state_dict['fc.weight'])[::-1] == tuple(shapes.params['probe']['kernel'].shape):
      probe, probe_note = fill(shapes.params['probe'], ('probe',), lookup, src, describe), "the file's fc"
    else:
      probe_note = (f"initialised (the file's fc is {np.shape(state_dict['fc.weight'])}, {config.data.name} needs "
                    f"{shapes.params['probe']['kernel'].shape[::-1]})")
  _, state = initial_state(config)  # the heads start as a new run's
  params = {**state.params, 'tower': {**state.params['tower'], 'encoder': encoder}}
  stats = {**state.batch_stats, 'tower': {**state.batch_stats['tower'], 'encoder': encoder_stats}}
  if probe is not None:
    params['probe'] = probe
  target_params = {**state.target_params, 'encoder': params['tower']['encoder']}
  target_stats = {**state.target_batch_stats, 'encoder': stats['tower']['encoder']}
  if config.ema.target_init == 'copy':  # a new run's target starts as the online tower: the projector too
    target_params, target_stats = params['tower'], stats['tower']
  ignored = sorted(k for k in state_dict if k not in used and not k.endswith('num_batches_tracked'))
  step = 1  # the file has no step; byol_jax resumes from checkpoints at steps >= 1
  state = state.replace(params=params, batch_stats=stats, target_params=target_params,
                        target_batch_stats=target_stats, step=np.asarray(step, np.int32))
  provenance = _provenance('torchvision', src, step, arch, {
      'online': 'backbone and its BatchNorm statistics from the file; projector and predictor initialised',
      'probe': probe_note, 'target': "the file's backbone, and the projector as ema.target_init starts it",
      'strip_prefix': prefix,
      'keys_ignored': ignored[:50], 'keys_ignored_count': len(ignored)})
  write_run(workdir, config, state, provenance)
  return provenance


def export_torchvision(workdir: str, out: str) -> dict:
  """A run's online backbone (and probe, as fc) -> a torchvision-layout .safetensors (or .npz) file. Returns
  {'keys', 'notes'}."""
  config, _, state = load_run(workdir)
  stages = _stages_of(config)
  tensors = {}
  for root, params, stats in ((('tower', 'encoder'), state.params['tower']['encoder'],
                               state.batch_stats['tower']['encoder']), (('probe',), state.params['probe'], {})):
    for tree in (params, stats):
      for module_path, leaf, value in _leaves(tree):
        value = np.asarray(value, np.float32)
        if leaf == 'kernel':
          value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        tensors[tv_source(root + module_path, leaf, stages)] = np.ascontiguousarray(value)
  for key in [k for k in tensors if k.endswith('.running_var')]:  # torch's BatchNorm buffers, for strict loading
    tensors[key[:-len('running_var')] + 'num_batches_tracked'] = np.zeros((), np.int64)
  notes = []
  if config.model.padding != 'symmetric':
    notes.append(f"model.padding='{config.model.padding}': torchvision pads symmetrically, so loaded there this "
                 'network computes another function at its stride-2 layers')
  if config.model.stem != 'imagenet':
    notes.append(f"model.stem='{config.model.stem}': torchvision's resnet has the ImageNet stem; give conv1 a "
                 f"{3}x3 kernel{' at stride 1' if config.model.stem == 'cifar' else ' at stride 2'} and no max-pool")
  metadata = {'format': 'pt', 'producer': 'byol_jax', 'backbone': config.model.backbone,
              'width': str(config.model.width), 'stem': config.model.stem, 'padding': config.model.padding,
              'step': str(int(state.step)), 'dataset': config.data.name}
  ext = os.path.splitext(out)[1].lower()
  if ext not in ('.safetensors', '.npz'):
    raise WeightsError(f'{out}: unknown extension {ext!r}; export to .safetensors or .npz')
  tmp = f'{out}.{os.getpid()}.tmp{ext}'
  try:
    if ext == '.safetensors':
      from safetensors.numpy import save_file
      save_file(tensors, tmp, metadata=metadata)
    else:
      np.savez(tmp, **tensors)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return {'keys': len(tensors), 'notes': notes, 'step': int(state.step)}


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def command(action: str, *, fmt: str, src: str | None = None, workdir: str | None = None, out: str | None = None,
            config=None, strip_prefix: str | None = None, stdout=None, stderr=None) -> int:
  """Runs one command and prints its one-line result (or `error: ...` on stderr); returns the exit status."""
  stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
  from byol_jax import config as config_lib
  try:
    if action not in ('import', 'export'):
      raise WeightsError(f'unknown command {action!r}: python -m byol_jax.weights import|export --format=...')
    if fmt not in FORMATS or (action == 'export' and fmt != 'torchvision'):
      raise WeightsError(f'--format={fmt!r}: {action} takes ' + (', '.join(FORMATS) if action == 'import'
                                                                 else 'torchvision'))
    if action == 'import':
      if not src or not workdir:
        raise WeightsError('import needs --src=FILE and --workdir=DIR (a new run directory)')
      if fmt == 'dm_byol':
        result = import_dm_byol(src, workdir, config)
      else:
        result = import_torchvision(src, workdir, config, strip_prefix)
      a = result['architecture']
      print(f"imported {src} ({fmt}, step {result['step']}): {a['model.backbone']} width {a['model.width']}, "
            f"padding {a['model.padding']}; {result['online']}; probe: {result['probe']}; target: "
            f"{result['target']} -> {workdir} (python -m byol_jax.embed --workdir={workdir} --out=features.npz; "
            f"python -m byol_jax.main --config=configs/run.py:{workdir} --workdir={workdir})", file=stdout)
    else:
      if not workdir or not out:
        raise WeightsError('export needs --workdir=DIR (a run directory) and --out=FILE.safetensors')
      result = export_torchvision(workdir, out)
      notes = ''.join(f'; note: {n}' for n in result['notes'])
      print(f"exported {workdir} (step {result['step']}) -> {out}: {result['keys']} torchvision keys{notes}",
            file=stdout)
  except (WeightsError, config_lib.ConfigError) as e:
    print('error: ' + ' '.join(str(e).split()), file=stderr)
    return 2
  return 0


def define_flags() -> None:
  """The command's flags, defined only when it runs as a program (byol_jax.embed and .main define --workdir and
  --out too: a test process imports them all)."""
  cli.define_config_file(DEFAULT_CONFIG, 'import: the config the imported run gets (its architecture keys are set '
                         'from the file); default configs/imagenet.py in float32.')
  flags.DEFINE_enum('format', None, list(FORMATS), 'dm_byol (a DeepMind BYOL .pkl) or torchvision (a ResNet '
                    'state_dict).')
  flags.DEFINE_string('src', None, 'import: the file to read.')
  flags.DEFINE_string('workdir', None, 'import: the new run directory; export: the run directory to read.')
  flags.DEFINE_string('out', None, 'export: the .safetensors (or .npz) file to write.')
  flags.DEFINE_string('strip_prefix', None, "import --format=torchvision: the key prefix to strip, e.g. "
                      "'module.encoder.' (default: the one prefix under which a ResNet's keys are)")


def main(argv):
  FLAGS = flags.FLAGS
  if not FLAGS['verbosity'].present:  # orbax logs every checkpoint step at INFO; keep the one line readable
    logging.set_verbosity(logging.WARNING)
  if len(argv) != 2:
    cli.fail('give one command: python -m byol_jax.weights import|export --format=... (see the module doc)')
  config = FLAGS.config
  if cli.config_file_arg(sys.argv) is None:  # the default config: float32, as the published networks compute
    with config.unlocked():
      config.train.compute_dtype = 'float32'
  sys.exit(command(argv[1], fmt=FLAGS.format, src=FLAGS.src, workdir=FLAGS.workdir, out=FLAGS.out, config=config,
                   strip_prefix=FLAGS.strip_prefix))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
