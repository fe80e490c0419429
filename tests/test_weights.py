"""byol_jax.weights against the real thing: Haiku's own ResNet-50 (hk.nets.ResNet50, whose module names, v1
bottleneck blocks and 'SAME' padding DeepMind's BYOL network shares) with BYOL's projector and predictor, random
weights and random BatchNorm statistics, saved as DeepMind's checkpointing saves them; a torchvision-layout round
trip; torch's own forward where torch is installed; and the wrong files, each one line, exit status 2, nothing
written.

Small images (32 px) and a batch of 2. The quick tier (`-m "not slow"`) refuses wrong files and compares one pair
of CPU implementations; the tests that run a network (Haiku's ResNet-50 and ours, an embedding, a training run) or
write a ResNet-50's checkpoint are `slow`.
"""
import collections
import io
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

from byol_jax import config as config_lib, weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = dict(projector_hidden=64, projector_dim=32, predictor_hidden=48, classes=10)  # small heads: any size reads


def tiny_config(**model):
  """configs/tiny.py (synthetic 32-px RGB images, 10 classes): the imported run's data, training and evaluation."""
  config = config_lib.load_config_module(os.path.join(ROOT, 'configs', 'x'), 'tiny.py').get_config()
  for key, value in model.items():
    config.model[key] = value
  return config


# ----------------------------------------------------------------------------------------------------
# A DeepMind BYOL checkpoint made by Haiku
# ----------------------------------------------------------------------------------------------------
def _byol_forward(images, is_training):
  """BYOL's network as byol/byol_experiment.py builds it, on Haiku's ResNet-50: the encoder's pooled features (the
  input of hk.nets.ResNet50's own logits layer, which BYOL's torso does not have), projection, prediction, and
  the classifier on the features."""
  import haiku as hk
  import jax

  class MLP(hk.Module):  # byol/utils/networks.py: Linear -> BatchNorm -> ReLU -> Linear without bias
    def __init__(self, name, hidden, out):
      super().__init__(name=name)
      self.hidden, self.out = hidden, out

    def __call__(self, x, is_training):
      x = hk.Linear(self.hidden)(x)
      x = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.9, eps=1e-5)(x, is_training)
      return hk.Linear(self.out, with_bias=False)(jax.nn.relu(x))

  captured = {}

  def keep_features(next_f, args, kwargs, context):
    if context.method_name == '__call__' and context.module.module_name == 'res_net50/~/logits':
      captured['features'] = args[0]
    return next_f(*args, **kwargs)

  with hk.intercept_methods(keep_features):
    hk.nets.ResNet50(num_classes=1)(images, is_training=is_training)
  features = captured['features']
  z = MLP('projector', HEADS['projector_hidden'], HEADS['projector_dim'])(features, is_training)
  p = MLP('predictor', HEADS['predictor_hidden'], HEADS['projector_dim'])(z, is_training)
  logits = hk.Linear(HEADS['classes'], name='classifier')(features)
  return features, z, p, logits


def _randomise(shapes, rng, *, state=False):
  """Random weights (He-scaled), BatchNorm affine parameters and statistics (numpy) for Haiku's tree of shapes."""
  out = {}
  for module, leaves in shapes.items():
    out[module] = {}
    for name, leaf in leaves.items():
      shape = leaf.shape
      if state and name == 'average':  # mean_ema / var_ema: what BatchNorm's inference mode reads
        value = rng.uniform(0.5, 2.0, shape) if module.endswith('var_ema') else rng.normal(0, 0.3, shape)
      elif state:  # the moving averages' 'counter' and 'hidden'
        value = np.zeros(shape, leaf.dtype)
      elif name == 'w':
        value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
      elif name == 'scale':
        value = rng.uniform(0.5, 1.5, shape)
      else:  # offset, b
        value = rng.normal(0, 0.2, shape)
      out[module][name] = value if state and name != 'average' else value.astype(np.float32)
  return out


@pytest.fixture(scope='module')
def haiku_weights():
  """(forward, params, state, images): a random BYOL network on Haiku's ResNet-50 (numpy arrays; nothing run)."""
  hk = pytest.importorskip('haiku', reason='dm-haiku (requirements.txt) is not installed')
  import jax
  forward = hk.transform_with_state(_byol_forward)
  rng = np.random.default_rng(0)
  images = rng.normal(0, 1, (2, 32, 32, 3)).astype(np.float32)  # as the network sees them (normalised)
  # The shapes only (Haiku's initialisers, run op by op, would compile one program per shape: ~50 s).
  params, state = jax.eval_shape(lambda key, x: forward.init(key, x, True), jax.random.PRNGKey(0), images)
  params = _randomise({k: v for k, v in params.items() if k != 'res_net50/~/logits'}, rng)
  state = _randomise(state, rng, state=True)
  return forward, params, state, images


@pytest.fixture(scope='module')
def haiku_byol(haiku_weights):
  """(params, state, images, outputs): haiku_weights and Haiku's eval-mode outputs (compiles its ResNet-50)."""
  import jax
  forward, params, state, images = haiku_weights
  logits = {'w': np.zeros((2048, 1), np.float32), 'b': np.zeros((1,), np.float32)}  # Haiku's, which BYOL drops
  outputs, _ = jax.jit(forward.apply, static_argnums=4)({**params, 'res_net50/~/logits': logits}, state, None, images,
                                                        False)
  return params, state, images, [np.asarray(o) for o in outputs]


@pytest.fixture(scope='module')
def byol_package():
  """The classes DeepMind's checkpoints name (byol.byol_experiment._ByolExperimentState, an optimizer state), so a
  pickle written here names them as theirs does."""
  experiment = types.ModuleType('byol.byol_experiment')
  optimizers = types.ModuleType('byol.utils.optimizers')
  experiment._ByolExperimentState = collections.namedtuple('_ByolExperimentState', weights.DM_STATE_FIELDS)
  experiment._ByolExperimentState.__module__ = 'byol.byol_experiment'
  optimizers.LarsState = collections.namedtuple('LarsState', ['mu'])
  optimizers.LarsState.__module__ = 'byol.utils.optimizers'
  with pytest.MonkeyPatch.context() as patch:
    for name, module in (('byol', types.ModuleType('byol')), ('byol.utils', types.ModuleType('byol.utils')),
                         ('byol.byol_experiment', experiment), ('byol.utils.optimizers', optimizers)):
      patch.setitem(sys.modules, name, module)
    yield experiment, optimizers


def dm_checkpoint_bytes(params, state, byol_package, target=True) -> bytes:
  """The file byol/utils/checkpointing.py writes: dill.dump(dict(experiment_state=..., step=..., rng=...),
  protocol=2) of numpy arrays (dill pickles these containers as pickle does)."""
  experiment, optimizers = byol_package
  target_params = {k: {n: v + 0.5 for n, v in leaves.items()} for k, leaves in params.items()} if target else {}
  experiment_state = experiment._ByolExperimentState(
      online_params=params, target_params=target_params, online_state=state, target_state=state if target else {},
      opt_state=(optimizers.LarsState(mu={'classifier': {'b': np.zeros(HEADS['classes'], np.float32)}}),))
  return pickle.dumps(dict(experiment_state=experiment_state, step=np.int64(1234),
                           rng=np.array([0, 42], np.uint32)), protocol=2)


def run_outputs(run, images, **model):
  """byol_jax's eval-mode (features, z, prediction, probe logits) of a loaded run (weights.load_run), run eagerly;
  `model`: config.model keys to build the network with instead of the run's."""
  from flax import nnx
  config, networks, state = run
  if model:
    config = config.copy_and_resolve_references()
    config.model.update(model)
    networks, _ = weights.abstract_state(config)
  import jax

  @jax.jit  # one program (cached across runs), not one per operation and shape
  def outputs(params, stats, x):
    network = nnx.merge(networks.online_eval, params, stats)
    features, z = network.tower(x)
    return features, z, network.predictor(z), network.probe(features)
  return [np.asarray(a) for a in outputs(state.params, state.batch_stats, images)]


def rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


@pytest.fixture(scope='module')
def dm_run(tmp_path_factory, haiku_weights, byol_package):
  """(weights.load_run of the imported run, the import's line): the Haiku network's checkpoint imported into
  configs/tiny.py's setting."""
  _, params, state, _ = haiku_weights
  tmp = tmp_path_factory.mktemp('dm')
  src = tmp / 'pretrain_res50x1.pkl'
  src.write_bytes(dm_checkpoint_bytes(params, state, byol_package))
  out = io.StringIO()
  assert weights.command('import', fmt='dm_byol', src=str(src), workdir=str(tmp / 'run'), config=tiny_config(),
                         stdout=out) == 0
  return weights.load_run(str(tmp / 'run')), out.getvalue().strip()


@pytest.mark.slow  # writes, verifies and restores a ResNet-50's checkpoint (~14 s)
def test_dm_byol_import_reads_the_step_the_network_and_the_files_target(dm_run, haiku_weights):
  run, line = dm_run
  _, params, _, _ = haiku_weights
  assert 'step 1234' in line and 'resnet50 width 64, padding same' in line and "the file's target" in line
  config, _, state = run
  assert config.model.padding == 'same' and config.model.projector_dim == HEADS['projector_dim']
  assert int(state.step) == 1234
  # The target is the file's target (here the online weights + 0.5), not a copy of the online network.
  np.testing.assert_allclose(state.target_params['encoder']['stem_conv']['kernel'],
                             params['res_net50/~/initial_conv']['w'] + 0.5, rtol=1e-6)


@pytest.mark.slow  # compiles Haiku's ResNet-50 and ours
def test_dm_byol_import_computes_what_haiku_computes(dm_run, haiku_byol):
  run, _ = dm_run
  _, _, images, expected = haiku_byol
  got = run_outputs(run, images)
  for name, g, e in zip(('features', 'z', 'prediction', 'probe logits'), got, expected):
    assert g.shape == e.shape, name
    assert rel(g, e) <= 1e-4, (name, rel(g, e))


@pytest.mark.slow  # compiles Haiku's ResNet-50 and ours
def test_symmetric_padding_would_not_compute_haikus_network(dm_run, haiku_byol):
  """model.padding='same' is what makes the import right: the same weights padded as torchvision pads are off."""
  _, _, images, expected = haiku_byol
  assert rel(run_outputs(dm_run[0], images, padding='symmetric')[0], expected[0]) > 1e-2


@pytest.mark.parametrize('conv_impl,max_pool_impl', [  # quick: one pair; the CPU kernel's is in test_models.py
    pytest.param('native', 'phases', marks=pytest.mark.slow), ('matmul_small', 'taps')])
@pytest.mark.usefixtures('xla_unoptimized')  # one network computed two ways, compared: not a speed test
def test_same_padding_is_one_function_whatever_the_cpu_implementations(conv_impl, max_pool_impl):
  """With padding='same' the strided layers leave the CPU kernels and the taps/phases pools (they pad
  symmetrically) for XLA's: every conv_impl and max_pool_impl computes the same network."""
  import jax
  from flax import nnx
  from byol_jax.models.resnet import ResNet
  x = np.random.default_rng(0).normal(0, 1, (2, 20, 20, 3)).astype(np.float32)  # even sides: (0, 1) padding
  features = {}
  for impls in (('xla', 'xla'), (conv_impl, max_pool_impl)):
    net = ResNet('resnet_tiny', in_channels=3, width=32, stem='imagenet', conv_impl=impls[0],
                 max_pool_impl=impls[1], padding='same', axis_name=None, rngs=nnx.Rngs(0))
    net.eval()
    features[impls] = np.asarray(jax.jit(lambda m, x: m(x))(net, x))
  a, b = features.values()
  assert rel(b, a) <= 1e-5


# ----------------------------------------------------------------------------------------------------
# torchvision layout
# ----------------------------------------------------------------------------------------------------
def _random_run(tmp_path, config):
  """A run directory of `config` whose weights and BatchNorm statistics are all random (none at their init)."""
  import jax
  config = config_lib.finalize(config)
  _, shapes = weights.abstract_state(config)
  rng = np.random.default_rng(1)
  noise = lambda tree, low: jax.tree.map(lambda s: rng.uniform(low, 1.0, s.shape).astype(s.dtype), tree)
  state = weights.completed_state(
      config, shapes, params=noise(shapes.params, -1.0), batch_stats=noise(shapes.batch_stats, 0.1),
      target_params=noise(shapes.target_params, -1.0), target_batch_stats=noise(shapes.target_batch_stats, 0.1),
      step=7)
  workdir = tmp_path / 'trained'
  weights.write_run(str(workdir), config, state, {})
  return str(workdir)


@pytest.mark.slow  # two embeddings (a program each)
def test_torchvision_export_then_import_gives_identical_features(tmp_path, capsys):
  from byol_jax import embed
  from safetensors.numpy import load_file
  trained = _random_run(tmp_path, tiny_config())  # resnet_tiny (one basic block per stage), width 4
  out = tmp_path / 'backbone.safetensors'
  assert weights.command('export', fmt='torchvision', workdir=trained, out=str(out)) == 0
  tensors = load_file(str(out))
  assert tensors['conv1.weight'].shape == (4, 3, 3, 3)  # OIHW, the CIFAR stem of configs/tiny.py
  assert tensors['layer2.0.downsample.0.weight'].shape == (8, 4, 1, 1)
  assert tensors['layer4.0.bn2.running_var'].shape == (32,) and tensors['fc.weight'].shape == (10, 32)
  assert 'exported' in capsys.readouterr().out
  imported = tmp_path / 'imported'
  assert weights.command('import', fmt='torchvision', src=str(out), workdir=str(imported),
                         config=tiny_config()) == 0
  assert "probe: the file's fc" in capsys.readouterr().out
  a, b = embed.embed(trained, 'test')[0], embed.embed(str(imported), 'test')[0]  # embed takes an imported run
  np.testing.assert_array_equal(a, b)

  # A .npz with the prefix of a SimSiam / MoCo checkpoint ('module.encoder.', and heads beside it): found and
  # stripped; the other keys are ignored and counted.
  npz = tmp_path / 'simsiam.npz'
  np.savez(npz, **{f'module.encoder.{k}': v for k, v in tensors.items()},
           **{'module.predictor.0.weight': np.zeros((4, 4), np.float32)})
  again = tmp_path / 'again'
  assert weights.command('import', fmt='torchvision', src=str(npz), workdir=str(again), config=tiny_config()) == 0
  _, _, s1 = weights.load_run(trained)
  _, _, s2 = weights.load_run(str(again))
  import jax
  jax.tree.map(np.testing.assert_array_equal, s1.params['tower']['encoder'], s2.params['tower']['encoder'])
  jax.tree.map(np.testing.assert_array_equal, s1.batch_stats['tower']['encoder'],
               s2.batch_stats['tower']['encoder'])


@pytest.mark.slow  # a training run
def test_main_trains_on_from_an_imported_run(tmp_path):
  """byol_jax.main (train.run with configs/run.py's config) resumes an imported run from its checkpoint."""
  from byol_jax import rundir, train
  trained = _random_run(tmp_path, tiny_config())
  out = tmp_path / 'backbone.npz'
  assert weights.command('export', fmt='torchvision', workdir=trained, out=str(out)) == 0
  workdir = str(tmp_path / 'imported')
  config = tiny_config()
  config.train.steps = 2  # the run's length is set at import (it is part of the run's identity)
  assert weights.command('import', fmt='torchvision', src=str(out), workdir=workdir, config=config) == 0
  summary = train.run(rundir.load_config(workdir), workdir)  # what --config=configs/run.py:DIR gives main
  assert summary['steps'] == 2 and summary['final_linear_probe_top1'] is not None
  assert rundir.status(workdir) == 'done'


@pytest.mark.slow  # compiles a ResNet-18
def test_torchvision_import_matches_torchs_forward(tmp_path):
  torch = pytest.importorskip('torch', reason='torch is not installed (not in requirements.txt); this test runs '
                              'where it is')
  torchvision = pytest.importorskip('torchvision', reason='torchvision is not installed (needed for its resnet18)')
  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=10)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.3)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
  model.eval()
  src = tmp_path / 'resnet18.pth'
  torch.save({f'module.encoder.{k}': v for k, v in model.state_dict().items()}, src)
  workdir = tmp_path / 'run'
  assert weights.command('import', fmt='torchvision', src=str(src), workdir=str(workdir), config=tiny_config()) == 0
  images = np.random.default_rng(0).normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    trunk = torch.nn.Sequential(*list(model.children())[:-1])
    expected = trunk(torch.from_numpy(images.transpose(0, 3, 1, 2))).flatten(1).numpy()
    expected_logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  features, _, _, logits = run_outputs(str(workdir), images)
  assert rel(features, expected) <= 1e-4
  assert rel(logits, expected_logits) <= 1e-4


# ----------------------------------------------------------------------------------------------------
# Wrong files: one line naming the file and the key, exit status 2, nothing written
# ----------------------------------------------------------------------------------------------------
def _fails(capsys, *args, **kwargs):
  rc = weights.command(*args, **kwargs)
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and err.startswith('error: '), (rc, err)
  return err


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_wrong_pickles_are_refused_in_one_line(tmp_path, capsys, haiku_weights, byol_package):
  _, params, state, _ = haiku_weights
  good = dm_checkpoint_bytes(params, state, byol_package, target=False)
  workdir = tmp_path / 'run'
  marker = tmp_path / 'code_ran'
  cases = {
      'garbage.pkl': (b'PK\x03\x04 this is a zip, not a pickle', 'not a pickle'),
      'truncated.pkl': (good[:len(good) // 2], 'truncated'),
      'code.pkl': (pickle.dumps({'experiment_state': _RunsCode(marker)}, protocol=2), 'system'),
      'foreign.pkl': (pickle.dumps({'weights': [1, 2, 3]}, protocol=2), 'experiment_state'),
      'empty.pkl': (b'', 'empty'),
  }
  for name, (content, expected) in cases.items():
    src = tmp_path / name
    src.write_bytes(content)
    err = _fails(capsys, 'import', fmt='dm_byol', src=str(src), workdir=str(workdir), config=tiny_config())
    assert str(src) in err and expected in err, err
    assert not workdir.exists()
  assert not marker.exists()  # the pickle's os.system was never called
  assert not any(p.name.startswith('run.') for p in tmp_path.iterdir())  # no temporary folder left


def test_missing_key_and_wrong_shape_name_the_key(tmp_path, capsys, haiku_weights, byol_package):
  _, params, state, _ = haiku_weights
  workdir = tmp_path / 'run'
  missing = {k: v for k, v in params.items() if k != 'res_net50/~/block_group_2/~/block_3/~/conv_1'}
  src = tmp_path / 'missing.pkl'
  src.write_bytes(dm_checkpoint_bytes(missing, state, byol_package, target=False))
  err = _fails(capsys, 'import', fmt='dm_byol', src=str(src), workdir=str(workdir), config=tiny_config())
  assert "online_params['res_net50/~/block_group_2/~/block_3/~/conv_1']['w'] missing" in err and str(src) in err

  bad_shape = dict(params)
  bad_shape['res_net50/~/block_group_1/~/block_0/~/batchnorm_1'] = {
      'scale': np.ones((1, 1, 1, 100), np.float32), 'offset': np.zeros((1, 1, 1, 128), np.float32)}
  src.write_bytes(dm_checkpoint_bytes(bad_shape, state, byol_package, target=False))
  err = _fails(capsys, 'import', fmt='dm_byol', src=str(src), workdir=str(workdir), config=tiny_config())
  assert "['res_net50/~/block_group_1/~/block_0/~/batchnorm_1']['scale'] has shape (1, 1, 1, 100)" in err
  assert '(128,)' in err
  assert not workdir.exists()

  occupied = tmp_path / 'occupied'
  occupied.mkdir()
  (occupied / 'config.json').write_text('{}')
  err = _fails(capsys, 'import', fmt='dm_byol', src=str(src), workdir=str(occupied), config=tiny_config())
  assert 'not empty' in err and os.listdir(occupied) == ['config.json']


def test_wrong_state_dicts_are_refused_in_one_line(tmp_path, capsys):
  workdir = tmp_path / 'run'
  conv = lambda o, i, k: np.zeros((o, i, k, k), np.float32)
  two_prefixes = tmp_path / 'moco.npz'
  np.savez(two_prefixes, **{f'{p}.{k}': conv(8, 3, 3) for p in ('encoder_q', 'encoder_k')
                            for k in ('conv1.weight', 'layer1.0.conv1.weight')})
  err = _fails(capsys, 'import', fmt='torchvision', src=str(two_prefixes), workdir=str(workdir),
               config=tiny_config())
  assert 'encoder_k.' in err and '--strip_prefix' in err
  missing = tmp_path / 'missing.npz'
  np.savez(missing, **{'conv1.weight': conv(8, 3, 3), 'layer1.0.conv1.weight': conv(8, 8, 3),
                       'layer2.0.conv1.weight': conv(16, 8, 3), 'layer3.0.conv1.weight': conv(32, 16, 3),
                       'layer4.0.conv1.weight': conv(64, 32, 3)})
  err = _fails(capsys, 'import', fmt='torchvision', src=str(missing), workdir=str(workdir), config=tiny_config())
  assert 'key bn1.weight missing' in err or 'key layer1.0.bn1' in err, err
  for name, content in (('weights.bin', b'\0' * 8), ('broken.safetensors', b'\x10\0\0\0\0\0\0\0{"a":'),
                        ('broken.npz', b'not a zip')):
    src = tmp_path / name
    src.write_bytes(content)
    err = _fails(capsys, 'import', fmt='torchvision', src=str(src), workdir=str(workdir), config=tiny_config())
    assert str(src) in err
  assert not workdir.exists()
  err = _fails(capsys, 'export', fmt='torchvision', workdir=str(tmp_path / 'nowhere'), out=str(tmp_path / 'o.npz'))
  assert 'nowhere' in err and not (tmp_path / 'o.npz').exists()


def test_command_line_wrong_file_exit_status_2(tmp_path):
  src = tmp_path / 'pretrain_res50x1.pkl'
  src.write_bytes(b'\x80\x02}q\x00(X\x10\x00\x00\x00experiment_state')  # cut short
  workdir = tmp_path / 'run'
  proc = subprocess.run([sys.executable, '-m', 'byol_jax.weights', 'import', '--format=dm_byol', f'--src={src}',
                         f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and 'truncated' in proc.stderr
  assert str(src) in proc.stderr and not workdir.exists()
