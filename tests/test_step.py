"""The per-device training step: device-count and pmap equivalence, stop-gradient, predictor rules."""
import functools

import chex
import jax
import numpy as np
import pytest

from byol_jax import config as config_lib, optim, spectral, state as state_lib, step as step_lib
from configs import tiny

pytestmark = pytest.mark.usefixtures('xla_unoptimized')  # numbers against numbers: compile little

GLOBAL_BATCH = 16


def make(**overrides):
  c = config_lib.finalize(config_lib.override(tiny.get_config(), overrides))
  config_lib.validate(c)
  tx = optim.make_optimizer(c)
  networks, state = state_lib.build(c, in_channels=3, num_classes=10, tx=tx)
  fn = step_lib.make_step(c, networks, tx, mean=0.5, std=0.25)
  return c, state, fn


def batches(n_steps, size=GLOBAL_BATCH):
  rng = np.random.default_rng(0)
  return [dict(image=rng.integers(0, 256, (size, 16, 16, 3), dtype=np.uint8),
               label=rng.integers(-1, 10, (size,)).astype(np.int32),
               index=np.arange(k * size, (k + 1) * size, dtype=np.int32)) for k in range(n_steps)]


def run_shard_map(state, fn, data, num_devices):
  mesh = step_lib.make_mesh(num_devices)
  step = step_lib.shard_map_step(fn, mesh)
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  losses = []
  for b in data:
    state, m = step(state, jax.device_put(b, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))))
    losses.append(float(m['loss']))
  return jax.device_get(state), losses


def run_pmap(state, fn, data, n):
  step = step_lib.pmap_step(fn)
  state = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), state)
  losses = []
  for b in data:
    state, m = step(state, jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), b))
    losses.append(float(m['loss'][0]))
  return jax.tree.map(lambda x: np.asarray(x)[0], state), losses


@functools.lru_cache(maxsize=None)
def _reference(kind):
  c, state, fn = make(**{'predictor.kind': kind})
  return run_shard_map(state, fn, batches(3), 1)


# DirectPred exercises every collective: gradients, BatchNorm statistics (backbone and projector) and F.
@pytest.mark.parametrize('kind', ['directpred'])
@pytest.mark.parametrize('devices', [2, pytest.param(8, marks=pytest.mark.slow)])
def test_same_update_on_1_2_and_8_devices(kind, devices):
  ref_state, ref_losses = _reference(kind)
  _, state, fn = make(**{'predictor.kind': kind})
  got_state, got_losses = run_shard_map(state, fn, batches(3), devices)
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-4)
  chex.assert_trees_all_close(got_state.params, ref_state.params, atol=2e-4, rtol=1e-3)
  chex.assert_trees_all_close(got_state.target_params, ref_state.target_params, atol=2e-4, rtol=1e-3)
  chex.assert_trees_all_close(got_state.batch_stats, ref_state.batch_stats, atol=2e-4, rtol=1e-3)
  chex.assert_trees_all_close(got_state.corr, ref_state.corr, atol=1e-4, rtol=1e-3)


@pytest.mark.slow  # two compilations of the step on 4 devices
def test_pmap_gives_the_same_numbers_as_shard_map():
  _, state, fn = make(**{'predictor.kind': 'directpred'})
  sm_state, sm_losses = run_shard_map(state, fn, batches(2), 4)
  _, state, fn = make(**{'predictor.kind': 'directpred'})
  pm_state, pm_losses = run_pmap(state, fn, batches(2), 4)
  np.testing.assert_allclose(pm_losses, sm_losses, rtol=1e-5)
  chex.assert_trees_all_close(pm_state.params, sm_state.params, atol=1e-5, rtol=1e-5)


def test_directpred_sets_wp_from_the_eigen_formula_of_f():
  c, state, fn = make(**{'predictor.kind': 'directpred', 'predictor.eps': 0.1})
  state, _ = run_shard_map(state, fn, batches(2), 2)
  f = np.asarray(state.corr, np.float64)
  s, u = np.linalg.eigh(f)
  p = np.sqrt(np.maximum(s, 0) / s.max()) + 0.1
  np.testing.assert_allclose(state.params['predictor']['kernel'], u @ np.diag(p) @ u.T, atol=5e-4)
  assert int(state.corr_count) == 2


@pytest.mark.slow  # a program of its own (freq is a constant of it)
def test_directpred_freq_keeps_sgd_updates_between_resets():
  c, state, fn = make(**{'predictor.kind': 'directpred', 'predictor.freq': 2})
  step = step_lib.shard_map_step(fn, step_lib.make_mesh(1), donate=False)
  data = batches(2)
  s1, _ = step(state, data[0])  # step 0: reset from F
  w_reset = np.asarray(s1.params['predictor']['kernel'])
  np.testing.assert_allclose(w_reset, spectral.directpred_predictor(s1.corr, c.predictor.eps), atol=1e-5)
  s2, _ = step(s1, data[1])  # step 1: plain SGD update, not a reset
  w_sgd = np.asarray(s2.params['predictor']['kernel'])
  assert np.abs(w_sgd - w_reset).max() > 1e-6
  assert np.abs(w_sgd - np.asarray(spectral.directpred_predictor(s2.corr, c.predictor.eps))).max() > 1e-5


@functools.lru_cache(maxsize=None)
def _symmetric_ema_steps():
  """Two steps of one program that two tests read (a symmetric linear predictor, a constant EMA rate of 0.9): the
  states before and after each step and the metrics of each."""
  _, state, fn = make(**{'predictor.kind': 'linear_symmetric', 'ema.tau_base': 0.9, 'ema.schedule': 'constant'})
  step = step_lib.shard_map_step(fn, step_lib.make_mesh(1), donate=False)
  states, metrics = [state], []
  for b in batches(2):
    state, m = step(state, b)
    states.append(state)
    metrics.append(m)
  return states, metrics


def test_symmetric_predictor_stays_symmetric():
  w = np.asarray(_symmetric_ema_steps()[0][-1].params['predictor']['kernel'])
  np.testing.assert_allclose(w, w.T, atol=1e-7)


def _grad_through_target(stop_gradient):
  """Gradient of the SimSiam loss when only the target branch may carry it."""
  c, state, fn = make(**{'method': 'simsiam', 'stop_gradient': stop_gradient, 'predictor.kind': 'none',
                         'optim.lr': 1.0, 'optim.momentum': 0.0, 'optim.weight_decay': 0.0})
  new, _ = step_lib.shard_map_step(fn, step_lib.make_mesh(1), donate=False)(state, batches(1)[0])
  return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params['tower'], state.params['tower'])


@pytest.mark.slow  # two programs of their own
def test_stop_gradient_switch_really_changes_the_gradient():
  with_sg = _grad_through_target(True)
  without_sg = _grad_through_target(False)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(with_sg), jax.tree.leaves(without_sg)))
  assert diff > 1e-4, 'stop_gradient=False must add the gradient through the target branch'


def test_byol_target_is_an_ema_of_the_online_tower():
  (state, new, _), (m, _) = _symmetric_ema_steps()
  expected = jax.tree.map(lambda t, o: 0.9 * t + 0.1 * o, state.target_params, new.params['tower'])
  chex.assert_trees_all_close(new.target_params, expected, atol=1e-6)
  assert float(m['tau']) == pytest.approx(0.9)
