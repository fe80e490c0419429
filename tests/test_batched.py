"""Runs trained together (byol_jax/batched.py): each run's losses are those of the same run trained alone."""
import jax
import numpy as np
import pytest

from byol_jax import batched, config as config_lib, optim, state as state_lib, step as step_lib
from byol_jax.data import sources
from configs import tiny

pytestmark = pytest.mark.usefixtures('xla_unoptimized')  # numbers against numbers: compile little

STEPS = 3
MEAN, STD = (0.5,) * 3, (0.25,) * 3
# Two runs of one program that differ in their seed and in every batchable hyperparameter (each compilation of a
# run alone costs ~20 s on 2 cores, so two runs, not three).
RUNS = [
    {'seed': 0},
    {'seed': 7, 'optim.lr': 0.05, 'optim.weight_decay': 1e-3, 'ema.tau_base': 0.9, 'predictor.lr_mult': 2.0,
     'predictor.weight_decay': 2e-3, 'predictor.eps': 0.3, 'predictor.rho': 0.5},
]


def run_config(overrides):
  # eta_p set for both runs: None (the trunk's) in one and a number in the other cannot batch (run_values).
  c = config_lib.override(tiny.get_config(), {'predictor.kind': 'directpred', 'train.num_devices': 2,
                                              'predictor.weight_decay': 4e-4})
  c = config_lib.finalize(config_lib.override(c, overrides))
  config_lib.validate(c)
  return c


def data():
  d = sources.load_dataset('synthetic', seed=0, num_train=64, num_test=8, image_size=16, channels=3,
                           num_classes=10)
  return d['train']['images'], d['train']['labels']


def alone(c, images, labels, mesh):
  """Losses of run c trained alone: the ordinary step (byol_jax.step) on its own data order."""
  tx = optim.make_optimizer(c)
  networks, state = state_lib.build(c, in_channels=3, num_classes=10, tx=tx)
  step = step_lib.shard_map_step(step_lib.make_step(c, networks, tx, MEAN, STD), mesh)
  state = batched.replicate(mesh, state)
  src = batched.make_sources([c], images, labels)[0]
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(step_lib.AXIS))
  losses = []
  for k in range(STEPS):
    state, m = step(state, jax.device_put(src.batch(k), split))
    losses.append(float(m['loss']))
  return losses


def together(configs, images, labels, mesh):
  networks, states, values = batched.build(configs, in_channels=3, num_classes=10)
  step = batched.shard_map_step(batched.make_step(configs[0], networks, MEAN, STD), mesh)
  states, values = batched.replicate(mesh, states), batched.replicate(mesh, batched.as_arrays(values))
  run_sources = batched.make_sources(configs, images, labels)
  losses = []
  for k in range(STEPS):
    states, m = step(states, batched.shard_batch(mesh, batched.stack_batches(run_sources, k)), values)
    losses.append(np.asarray(m['loss']))
  return np.stack(losses, axis=1), states  # [runs, steps]


@pytest.mark.slow  # three compilations of a training step (~25 s of CPU); batched.py is for GPUs
def test_each_run_equals_the_run_trained_alone():
  configs = [run_config(o) for o in RUNS]
  images, labels = data()
  mesh = step_lib.make_mesh(2)  # two devices: the collectives over 'data' run under vmap too
  batch_losses, states = together(configs, images, labels, mesh)
  assert states.step.shape == (len(RUNS),) and np.all(np.asarray(states.step) == STEPS)
  for r, c in enumerate(configs):
    np.testing.assert_allclose(batch_losses[r], alone(c, images, labels, mesh), rtol=2e-4, atol=2e-5,
                               err_msg=f'run {r} ({RUNS[r]})')
  # The runs really differ (their seeds and hyperparameters reach the step).
  assert len({round(float(x), 6) for x in batch_losses[:, -1]}) == len(RUNS)


def test_run_values_names_what_cannot_be_batched():
  a, b = run_config({'seed': 0}), run_config({'seed': 1, 'optim.lr': 0.1})
  values = batched.run_values([a, b])
  assert sorted(values) == ['optim.lr', 'seed'] and values['seed'].dtype == np.int32
  np.testing.assert_allclose(values['optim.lr'], [a.optim.lr, 0.1])
  with pytest.raises(ValueError, match='predictor.kind'):
    batched.run_values([a, run_config({'predictor.kind': 'linear'})])
  cosine = {'optim.schedule': 'warmup_cosine', 'optim.warmup_steps': 2}
  with pytest.raises(ValueError, match='constant'):
    batched.run_values([run_config(cosine), run_config({**cosine, 'optim.lr': 0.1})])
  batched.run_values([run_config(cosine), run_config({**cosine, 'seed': 1, 'optim.weight_decay': 0.0})])
  unset = config_lib.finalize(config_lib.override(tiny.get_config(), {'predictor.kind': 'directpred'}))
  with pytest.raises(ValueError, match='predictor.weight_decay'):
    batched.run_values([unset, config_lib.override(unset.copy_and_resolve_references(), {'predictor.weight_decay': 1e-3})])


def test_with_values_leaves_the_config_alone():
  c = run_config({})
  copy = batched.with_values(c, {'optim.lr': np.float32(0.5), 'seed': np.int32(3)})
  assert float(copy.optim.lr) == 0.5 and int(copy.seed) == 3
  assert c.optim.lr == 0.03 and c.seed == 0
