"""Several runs trained together: `jax.vmap` over a leading run axis of the whole TrainState.

A study's runs that share one program (architecture, predictor kind, solver, batch size, step count) and differ
only in their seed and in continuous hyperparameters (BATCHABLE_KEYS: learning rate, weight decay, the EMA rate
tau, alpha_p, eta_p, eps, rho) can train as one compiled program: the state of R runs is one TrainState whose every
leaf has a leading axis of R, the batch is R batches stacked (each run's own data order), and each run's values of
the keys that differ become per-run arrays traced into the step. On a GPU a small network leaves most of the chip
idle, so R runs together may cost little more than one (PureJaxRL); on XLA:CPU the convolutions become grouped
convolutions and run slower (docs/records/benchmarks_log_2026-11.md, "Runs batched with vmap"), so use this on a
GPU only, where scripts/gpu/batched_runs_bench.py measures it.

Nothing of the training step changes: the per-run function is byol_jax.step.train_step, with a copy of the
config in which the differing keys hold the run's traced values, and the optimizer built from that copy by
byol_jax.optim.make_optimizer (so the optimizer state has the structure it has when the run trains alone). Keys
that are the same for every run stay Python constants, exactly as alone. Each run therefore computes its own
update: the same function as the run trained alone, up to float round-off (vmap batches the convolutions and
reductions differently).

  configs = [... ordinary run configs, finalized ...]
  networks, states, values = batched.build(configs, in_channels=1, num_classes=10)
  step = batched.shard_map_step(batched.make_step(configs[0], networks, mean, std), mesh)
  for k in range(steps):
    states, metrics = step(states, batched.shard_batch(mesh, batched.stack_batches(sources, k)), values)
  batched.unstack(states, r)   # run r's TrainState, as train.run would hold it
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from byol_jax import optim, state as state_lib, step as step_lib
from byol_jax.data import sources

# Config keys that may differ between the runs of one batch (per-run values traced into the step). Every one is
# read by the step or the optimizer only in arithmetic, never in Python control flow, so a traced value works
# (optim.lr under the constant schedule only: run_values).
BATCHABLE_KEYS = ('seed', 'optim.lr', 'optim.weight_decay', 'ema.tau_base', 'predictor.lr_mult',
                  'predictor.weight_decay', 'predictor.eps', 'predictor.rho')


def _flat(tree, prefix: str = '') -> dict:
  """{'a.b': leaf} of a nested dict (ConfigDict.to_dict())."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def run_values(configs) -> dict[str, np.ndarray]:
  """The BATCHABLE_KEYS whose values differ between the runs, each an array of one value per run (seed int32,
  the others float32). Raises ValueError, naming the key, if the runs differ in any other key."""
  if not configs:
    raise ValueError('batched runs: no run configs')
  flats = [_flat(c.to_dict()) for c in configs]
  keys = set().union(*flats)
  differing = sorted(k for k in keys if any(f.get(k) != flats[0].get(k) for f in flats[1:]))
  other = [k for k in differing if k not in BATCHABLE_KEYS]
  if other:
    raise ValueError(f'batched runs must share every setting but {", ".join(BATCHABLE_KEYS)}; they differ in '
                     f'{", ".join(other)}: train those apart')
  values = {}
  for k in differing:
    column = [f[k] for f in flats]
    if any(v is None for v in column):  # predictor.weight_decay None means "optim.weight_decay": name it
      raise ValueError(f'batched runs: {k} is None for some runs and set for others; set it for every run')
    values[k] = np.asarray(column, np.int32 if k == 'seed' else np.float32)
  if 'optim.lr' in values and configs[0].optim.schedule != 'constant':
    # optax.warmup_cosine_decay_schedule tests its peak in Python; scaling a unit schedule instead would change the
    # unbatched runs' rounding, so the lr is batched under the constant schedule only (the studies' bases).
    raise ValueError(f'batched runs: optim.lr differs between the runs, which needs optim.schedule=\'constant\' '
                     f'(here {configs[0].optim.schedule!r}); train runs of different lr apart')
  return values


def with_values(config, values: dict) -> ml_collections.ConfigDict:
  """A copy of `config` holding values[key] (traced arrays allowed: the copy is not type-safe) at each key."""
  c = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = c
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def make_step(config, networks, mean, std, axis_name: str = step_lib.AXIS):
  """The per-device step of R runs: (states, batches, values) -> (states, metrics), each with a leading run axis
  of R; `values` is run_values(configs). `config` is any of the runs' configs (they share everything else)."""
  def one_run(state, batch, values):
    c = with_values(config, values)
    return step_lib.train_step(state, batch, config=c, networks=networks, tx=optim.make_optimizer(c), mean=mean,
                               std=std, axis_name=axis_name)
  return jax.vmap(one_run)


def shard_map_step(step_fn, mesh, donate: bool = True):
  """jit(shard_map(batched step)): states and values replicated, each run's batch split over 'data' (axis 1)."""
  mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(None, step_lib.AXIS), P()), out_specs=(P(), P()),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if donate else ())


def stack(trees):
  """One pytree with a leading run axis from R pytrees of the same structure."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree, run: int):
  """Run `run`'s slice of a pytree with a leading run axis."""
  return jax.tree.map(lambda x: x[run], tree)


def build(configs, *, in_channels: int, num_classes: int):
  """(networks, initial states stacked on a leading run axis, run_values(configs)). Run r's initial state is
  the one it starts from when trained alone (state.build with its own seed)."""
  values = run_values(configs)
  networks, states = None, []
  for c in configs:
    nets, state = state_lib.build(c, in_channels=in_channels, num_classes=num_classes,
                                  tx=optim.make_optimizer(c))
    networks = networks or nets
    states.append(state)
  return networks, stack(states), values


def make_sources(configs, images, labels):
  """Each run's own training data order: an InMemorySource seeded by the run's seed (as train.train_batches)."""
  return [sources.InMemorySource(images, labels, global_batch_size=c.train.batch_size, seed=c.seed,
                                 process_index=jax.process_index(), process_count=jax.process_count())
          for c in configs]


def stack_batches(run_sources, step: int) -> dict:
  """The process-local batches of `step` of every run, stacked: {'image': [R, B_local, ...], ...}."""
  return stack([s.batch(step) for s in run_sources])


def shard_batch(mesh, local_batch):
  """Process-local stacked batches [R, B_local, ...] -> global arrays split over 'data' along axis 1."""
  sharding = NamedSharding(mesh, P(None, step_lib.AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def replicate(mesh, tree):
  """States or values on every device of the mesh (each device holds all runs)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def as_arrays(values: dict) -> dict:
  """run_values' numpy columns as JAX arrays (the step's third argument)."""
  return {k: jnp.asarray(v) for k, v in values.items()}
