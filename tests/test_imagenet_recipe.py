"""configs/imagenet.py builds BYOL's network and update (DeepMind's code, byol/ in deepmind-research), and the
switches it uses leave the other recipes as they were.

- The online network's parameters, name by name and shape by shape, against the list DeepMind's Haiku modules
  create (ResNet-50, projector and predictor 4096-256 without output biases, the classifier): built with
  nnx.eval_shape, so nothing is allocated.
- The last BatchNorm scale of each residual block starts at 0 with model.zero_init_last_bn_scale, and only it.
- The warmup is 10 * 1281167 // 4096 = 3127 steps and the lr follows DeepMind's schedule at every step.
- LARS with the lr after momentum is DeepMind's update; it equals optax.lars's order at a constant lr.
No compilation beyond a few small jitted updates; ~5 s.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from byol_jax import optim, schedules
from byol_jax.config import ConfigError, base_config, load_config_module, override, validate
from byol_jax.models.heads import Online
from byol_jax.models.resnet import Bottleneck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, BATCH = 1_281_167, 4096


def config(name, arg=None):
  c = load_config_module(os.path.join(ROOT, 'configs', name), name).get_config(*([arg] if arg else []))
  c.model.conv_impl = 'xla'  # the same network; the CPU kernels' build is not needed to list parameters
  return c


def imagenet_config():
  return config('imagenet.py')


def flat_params(module) -> dict:
  """{path tuple: shape} of a module's nnx.Param leaves."""
  params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  return {tuple(str(k.key) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


# ---------------------------------------------------------------------------------------------------------------
# DeepMind's parameter list, written from their code (byol/utils/networks.py, byol_experiment.py's _forward and
# Haiku's ResNet BlockV1), not from ours: Haiku module names, conv kernels HWIO, Linear weights [in, out].
# Haiku keeps BatchNorm's scale and offset as [1, ..., 1, C]; they are listed as (C,).
# ---------------------------------------------------------------------------------------------------------------
def byol_parameters(blocks=(3, 4, 6, 3), channels=(256, 512, 1024, 2048), hidden=4096, out=256, classes=1000):
  p = {}

  def batchnorm(name, c):
    p[f'{name}/scale'], p[f'{name}/offset'] = (c,), (c,)

  enc = 'res_net50/~/'
  p[enc + 'initial_conv/w'] = (7, 7, 3, 64)
  batchnorm(enc + 'initial_batchnorm', 64)
  cin = 64
  for g, (n, c) in enumerate(zip(blocks, channels)):
    for b in range(n):
      pre = f'{enc}block_group_{g}/~/block_{b}/~/'
      if b == 0:  # use_projection: the first block of every group
        p[pre + 'shortcut_conv/w'] = (1, 1, cin, c)
        batchnorm(pre + 'shortcut_batchnorm', c)
      w = c // 4
      p[pre + 'conv_0/w'] = (1, 1, cin, w)
      batchnorm(pre + 'batchnorm_0', w)
      p[pre + 'conv_1/w'] = (3, 3, w, w)
      batchnorm(pre + 'batchnorm_1', w)
      p[pre + 'conv_2/w'] = (1, 1, w, c)
      batchnorm(pre + 'batchnorm_2', c)  # scale_init=jnp.zeros
      cin = c
  for head, din in (('projector', channels[-1]), ('predictor', out)):
    p[f'{head}/~/linear/w'], p[f'{head}/~/linear/b'] = (din, hidden), (hidden,)  # Linear(with_bias=True)
    batchnorm(f'{head}/~/batch_norm', hidden)
    p[f'{head}/~/linear_1/w'] = (hidden, out)  # Linear(with_bias=False)
  p['classifier/w'], p['classifier/b'] = (channels[-1], classes), (classes,)
  return p


MODULES = {'stem_conv': 'initial_conv', 'stem_bn': 'initial_batchnorm', 'conv1': 'conv_0', 'conv2': 'conv_1',
           'conv3': 'conv_2', 'bn1': 'batchnorm_0', 'bn2': 'batchnorm_1', 'bn3': 'batchnorm_2',
           'shortcut': 'shortcut_conv', 'shortcut_bn': 'shortcut_batchnorm', 'fc1': 'linear', 'bn': 'batch_norm',
           'fc2': 'linear_1'}


def haiku_name(path, blocks=(3, 4, 6, 3)) -> str:
  """Our parameter path -> the Haiku name of the same parameter in DeepMind's network."""
  *mods, leaf = path
  is_norm = 'bn' in mods[-1]
  leaf = {'kernel': 'w', 'bias': 'offset' if is_norm else 'b', 'scale': 'scale'}[leaf]
  if mods[0] == 'probe':
    return f'classifier/{leaf}'
  if mods[:2] == ['tower', 'encoder']:
    if mods[2] == 'blocks':
      k = int(mods[3])
      g = int(np.searchsorted(np.cumsum(blocks), k, side='right'))
      b = k - int(np.sum(blocks[:g]))
      return f'res_net50/~/block_group_{g}/~/block_{b}/~/{MODULES[mods[4]]}/{leaf}'
    return f'res_net50/~/{MODULES[mods[2]]}/{leaf}'
  head = mods[-2]  # 'projector' (tower.projector) or 'predictor'
  return f'{head}/~/{MODULES[mods[-1]]}/{leaf}'


def online_shapes(config, num_classes=1000):
  model = nnx.eval_shape(lambda: Online(config, in_channels=3, num_classes=num_classes, dtype=jnp.float32,
                                        rngs=nnx.Rngs(0)))
  return flat_params(model)


def test_imagenet_recipe_has_byols_parameters_name_by_name():
  ours = {haiku_name(list(path)): shape for path, shape in online_shapes(imagenet_config()).items()}
  theirs = byol_parameters()
  assert len(ours) == len(online_shapes(imagenet_config()))  # the translation is one to one
  assert sorted(set(ours) - set(theirs)) == [] and sorted(set(theirs) - set(ours)) == []
  assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
  # The counts a reader can check: ResNet-50 25.56M with its 1000-way head, the heads as in docs/scaling.md.
  count = lambda prefix: sum(int(np.prod(s)) for k, s in theirs.items() if k.startswith(prefix))
  assert count('res_net50') + count('classifier') == 25_557_032
  assert (count('projector'), count('predictor')) == (9_449_472, 2_109_440)


def test_the_default_and_the_papers_recipes_keep_their_output_biases_and_unit_scales():
  """The switches' defaults are the networks of before: the reference code's nn.Linear output biases."""
  for c in (config('fashion_mnist.py'), config('stl10.py', 'mlp')):
    names = {'/'.join(p) for p in online_shapes(c, num_classes=10)}
    assert {'tower/projector/fc2/bias', 'predictor/fc2/bias'} <= names
    assert not c.model.zero_init_last_bn_scale
  ours = {'/'.join(p) for p in online_shapes(imagenet_config(), num_classes=10)}
  assert not {'tower/projector/fc2/bias', 'predictor/fc2/bias'} & ours


# The two zero-init tests build networks op by op (each initialiser a small program of its own) and compare draws made
# the same way, or constants: unoptimized XLA compiles them 4x faster (~10 s -> 2.6 s of CPU, 2026-12-06).
@pytest.mark.usefixtures('xla_unoptimized')
def test_zero_init_sets_the_last_batchnorm_scale_of_each_block_to_0_and_nothing_else():
  """Through the config (basic blocks: bn2 is the last), with the rest of the draw unchanged."""
  c = imagenet_config()
  c.model.backbone, c.model.width = 'resnet_tiny', 4
  c.model.projector_hidden, c.predictor.hidden = 32, 32
  zeroed = Online(c, in_channels=3, num_classes=10, dtype=jnp.float32, rngs=nnx.Rngs(0))
  c.model.zero_init_last_bn_scale = False
  unit = Online(c, in_channels=3, num_classes=10, dtype=jnp.float32, rngs=nnx.Rngs(0))
  z = nnx.to_pure_dict(nnx.state(zeroed, nnx.Param))['tower']['encoder']
  u = nnx.to_pure_dict(nnx.state(unit, nnx.Param))['tower']['encoder']
  assert len(z['blocks']) == 4
  for i, block in z['blocks'].items():
    for name, module in block.items():
      if 'scale' in module:
        np.testing.assert_array_equal(np.asarray(module['scale']), 0.0 if name == 'bn2' else 1.0,
                                      err_msg=f'block {i} {name}')
  np.testing.assert_array_equal(np.asarray(z['stem_bn']['scale']), 1.0)
  # Everything else is the same draw: the same keys give the same convolutions.
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  for (path, a), (_, b) in zip(flat(z), flat(u)):
    if not (path[-1].key == 'scale' and path[-2].key == 'bn2'):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


@pytest.mark.usefixtures('xla_unoptimized')
def test_zero_init_in_a_bottleneck_block_is_its_third_batchnorm_as_in_haiku():
  block = Bottleneck(8, 4, 2, axis_name=None, dtype=jnp.float32, rngs=nnx.Rngs(0), zero_init_last_bn_scale=True)
  scales = {name: np.asarray(getattr(block, name).scale[...]) for name in ('bn1', 'bn2', 'bn3', 'shortcut_bn')}
  assert {name: float(np.max(np.abs(v - (name != 'bn3')))) for name, v in scales.items()} == dict.fromkeys(scales, 0.0)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 8))
  shortcut = block.shortcut_bn(block.shortcut(x))
  np.testing.assert_allclose(np.asarray(block(x)), np.asarray(nnx.relu(shortcut)), atol=1e-6)  # starts as its shortcut


def deepmind_lr(step, warmup, total, peak):
  """byol/utils/schedules.py learning_schedule, in numpy."""
  if step < warmup:
    return step / warmup * peak
  s = min(step - warmup, total - warmup)
  return peak * 0.5 * (1 + np.cos(np.pi * s / (total - warmup)))


def test_warmup_is_deepminds_3127_steps_and_the_lr_follows_their_schedule():
  c = imagenet_config()
  assert c.optim.warmup_steps == 10 * NUM_TRAIN // BATCH == 3127  # not 10 * (NUM_TRAIN // BATCH) = 3120
  assert c.train.steps == 300 * NUM_TRAIN // BATCH == 93_835
  lr = schedules.learning_rate(c)
  steps = np.array([0, 1, 1000, 3119, 3120, 3126, 3127, 3128, 50_000, 93_834, 93_835])
  ours = np.asarray(jax.vmap(lr)(jnp.asarray(steps)))
  theirs = np.array([deepmind_lr(s, 3127, 93_835, 0.3 * BATCH / 256) for s in steps])
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
  assert ours[3] < ours[5] < ours[6] == pytest.approx(4.8)


# ---------------------------------------------------------------------------------------------------------------
# LARS: both orders from byol_jax.optim.lars, against DeepMind's update written out in numpy.
# ---------------------------------------------------------------------------------------------------------------
def _problem():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {'w': jax.random.normal(k1, (6, 4)), 'b': jnp.full((4,), 0.1)}
  grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1)) + 0.1 * i, params) for i in range(6)]
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  return params, grads, mask


def _run(tx, params, grads):
  state, out = tx.init(params), []
  for g in grads:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out


def _deepmind_lars(params, grads, lrs, wd, eta, momentum):
  """byol/utils/optimizers.py lars: decay -> trust ratio -> momentum, then -lr (mask: weights, not biases)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for g, lr in zip(grads, lrs):
    for k in p:
      u = np.asarray(g[k], np.float64)
      if k == 'w':
        u = u + wd * p[k]
        pn, un = np.linalg.norm(p[k]), np.linalg.norm(u)
        u = u * (eta * pn / un if pn > 0 and un > 0 else 1.0)
      mu[k] = momentum * mu[k] + u
    p = {k: p[k] - lr * mu[k] for k in p}
    out.append(p)
  return out


def test_lars_with_the_lr_after_momentum_is_deepminds_update_under_warmup():
  params, grads, mask = _problem()
  lr = optax.linear_schedule(0.0, 4.8, 5)  # a warmup: where the orders differ
  kw = dict(weight_decay=1e-2, mask=mask, trust_coefficient=1e-3, momentum=0.9)
  after = _run(optim.lars(lr, lr_applied='after_momentum', **kw), params, grads)
  before = _run(optim.lars(lr, lr_applied='before_momentum', **kw), params, grads)
  theirs = _deepmind_lars(params, grads, [float(lr(t)) for t in range(len(grads))], 1e-2, 1e-3, 0.9)
  for a, b, t in zip(after, before, theirs):
    for k in t:
      np.testing.assert_allclose(np.asarray(a[k]), t[k], rtol=1e-6, atol=1e-7)
  # optax.lars's order is another update there: its momentum remembers the smaller lrs of the earlier steps.
  assert not np.allclose(np.asarray(before[-1]['w']), theirs[-1]['w'], rtol=1e-6, atol=1e-7)


def test_the_two_lars_orders_agree_at_a_constant_lr():
  params, grads, mask = _problem()
  kw = dict(weight_decay=1e-2, mask=mask, trust_coefficient=1e-3, momentum=0.9)
  after = _run(optim.lars(0.7, lr_applied='after_momentum', **kw), params, grads)
  before = _run(optim.lars(0.7, lr_applied='before_momentum', **kw), params, grads)
  for a, b in zip(after, before):
    for k in a:
      np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-6, atol=1e-7)


def test_the_imagenet_optimizer_uses_the_lr_after_momentum_and_a_bad_order_is_refused():
  c = imagenet_config()
  assert c.optim.lars_lr_applied == 'after_momentum'
  assert base_config().optim.lars_lr_applied == 'before_momentum'  # optax.lars: the runs of before
  validate(c)
  with pytest.raises(ConfigError, match=r"optim.lars_lr_applied='after'.*--config.optim.lars_lr_applied"):
    validate(override(c, {'optim.lars_lr_applied': 'after'}))


def test_the_linear_predictors_bias_key_is_refused_on_the_2_layer_predictor():
  """predictor.use_bias never reached the 2-layer predictor's output layer; predictor.output_bias does."""
  c = config('fashion_mnist.py')
  with pytest.raises(ConfigError, match=r"predictor.use_bias=True.*--config.predictor.output_bias"):
    validate(override(c, {'predictor.use_bias': True}))
  validate(override(c, {'predictor.use_bias': True, 'predictor.kind': 'linear'}))
