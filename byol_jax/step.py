"""The training step: one pure per-device function with explicit collectives over the axis 'data'.

`train_step(state, batch)` sees this device's shard of the global batch. Gradients, metrics, BatchNorm
statistics and DirectPred's batch correlation are averaged over 'data', so the update equals the update
of the whole global batch on one device. `shard_map_step` runs it with jax.jit(jax.shard_map(...)) over
a 1-D mesh; `pmap_step` runs the very same function under jax.pmap (kept to show they agree).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from byol_jax import evaluate, losses, schedules, spectral
from byol_jax.data import augment
from byol_jax.state import Networks, TrainState

AXIS = 'data'


def _apply(graphdef, params, stats, fn):
  """Runs fn(module) on a module rebuilt from pure pytrees; returns (out, new batch statistics)."""
  module = nnx.merge(graphdef, params, stats)
  out = fn(module)
  return out, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


def normalize(images, mean, std):
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def predictor_input(corr, corr_mean, config):
  """The F that sets W_p and whose spectrum is logged (see spectral.predictor_input_matrix)."""
  p = config.predictor
  return spectral.predictor_input_matrix(corr, corr_mean, p.centre and p.centre_with == 'ema_mean')


def predictor_from_corr(corr, config, current):
  """(W_p from F, root ok): DirectPred (eigenvalue transform) or DirectCopy (F / lambda_max + eps I).

  With the Newton-Schulz solver a failed root (F with a clearly negative eigenvalue from round-off)
  keeps `current` for this step instead of falling back to eigh under lax.cond, which would make the
  GPU wait for the host every step; metrics['predictor_root_ok'] reports it.
  """
  p = config.predictor
  if p.kind == 'directcopy':
    if p.solver == 'eigh':
      return spectral.directcopy_predictor(corr, p.eps), jnp.array(True)
    return spectral.predictor_weights_and_ok(corr, p.eps, 1.0, False, solver=p.solver, fallback=current)
  return spectral.predictor_weights_and_ok(corr, p.eps, p.power, p.eps_inside, solver=p.solver, fallback=current,
                                          projection=p.projection_threshold)


def make_views(batch, step, config, mean, std):
  """The two normalised views of a batch, augmented on device from its images, or from crops made on the host
  (ImageNet: 'view1_u8' and 'view2_u8'; the rest of the augmentation runs here). Each example's randomness
  depends on (seed, step, example index) only."""
  if 'view1_u8' in batch:
    v1, v2 = augment.two_views_from_crops(batch['view1_u8'], batch['view2_u8'], batch['index'], step,
                                          config.seed, config.data.augment, config.data.image_size)
  else:
    v1, v2 = augment.two_views(batch['image'], batch['index'], step, config.seed, config.data.augment,
                               config.data.image_size)
  return normalize(v1, mean, std), normalize(v2, mean, std)


def train_step(state: TrainState, batch, *, config, networks: Networks, tx: optax.GradientTransformation,
               mean, std, axis_name: str = AXIS):
  """One optimizer step on this device's shard of the global batch. Pure; collectives over axis_name."""
  kind = config.predictor.kind
  sets_predictor = kind in ('directpred', 'directcopy')
  # F is also tracked for the SGD-trained linear predictors, so their spectra can be logged (paper Fig. 2).
  tracks_corr = kind in ('linear', 'linear_symmetric', 'directpred', 'directcopy')
  step = state.step
  v1, v2 = make_views(batch, step, config, mean, std)
  labels = batch['label']
  n = v1.shape[0]
  # Both views in one pass ([view 1; view 2], 2n examples): BatchNorm keeps per-view statistics
  # (models/norm.py), so this is the reference's two separate passes, with half the kernel launches.
  compute_dtype = jnp.bfloat16 if config.train.compute_dtype == 'bfloat16' else jnp.float32
  views = jnp.concatenate([v1.astype(compute_dtype), v2.astype(compute_dtype)], axis=0)  # the stem casts anyway

  isotropic = config.loss.isoloss  # IsoLoss: z gets dL/dp, not W_p^T dL/dp (losses.isotropic_term)

  def online_forward(params, stats):
    def fn(m):
      features, z = m.tower(views)
      return features, z, m.predictor(jax.lax.stop_gradient(z) if isotropic else z)
    (features, z, p), stats = _apply(networks.online_train, params, stats, fn)
    return features, z, p, stats

  def loss_fn(params):
    features, z, p, stats = online_forward(params, state.batch_stats)
    z1, z2, p1, p2 = z[:n], z[n:], p[:n], p[n:]
    if config.method == 'byol':
      (_, t), tstats = _apply(networks.tower_train, state.target_params, state.target_batch_stats,
                              lambda m: m(views))
      t = jax.lax.stop_gradient(t)  # the EMA target never receives gradients
      t1, t2 = t[:n], t[n:]
    else:  # SimSiam: the target is the online projection itself
      tstats = state.target_batch_stats
      t1, t2 = z1, z2
      if config.stop_gradient:
        t1, t2 = jax.lax.stop_gradient((t1, t2))
    ssl_loss = losses.ssl_loss(p1, p2, t1, t2, z, config.method, config.loss.symmetric, isotropic)
    # Online probe on stop-gradient features of view 1 (unlabelled examples have label < 0).
    logits = nnx.merge(networks.online_train, params, state.batch_stats).probe(
        jax.lax.stop_gradient(features[:n]))
    probe_sum, correct, count = evaluate.online_probe_sums(logits, labels)
    sums = jax.lax.psum(jnp.stack([probe_sum, correct, count]), axis_name)
    # Normalise by the global count of labelled examples, divided back to a per-device share so that the
    # cross-device mean of gradients (pmean below) gives the gradient of the global mean.
    n_devices = jax.lax.psum(1, axis_name)
    probe_loss = probe_sum * n_devices / jnp.maximum(sums[2], 1.0)
    aux = dict(stats=stats, target_stats=tstats, z=z, ssl_loss=ssl_loss,
               probe_loss=sums[0] / jnp.maximum(sums[2], 1.0), probe_top1=sums[1] / jnp.maximum(sums[2], 1.0))
    return ssl_loss + probe_loss, aux

  grads, aux = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name)

  corr, corr_count, corr_mean = state.corr, state.corr_count, state.corr_mean
  if tracks_corr:
    # F from the online projector outputs (the predictor inputs) of both views, global batch, no grad.
    z = jax.lax.stop_gradient(aux['z'])
    batch_corr, batch_mean = spectral.batch_moments(z, axis_name)
    if config.predictor.centre and config.predictor.centre_with == 'batch_mean':
      batch_corr = batch_corr - jnp.outer(batch_mean, batch_mean)
    rho = None if config.predictor.cumulative_mean else config.predictor.rho
    corr = spectral.update_correlation(corr, batch_corr, corr_count, rho)
    corr_mean = spectral.update_correlation(corr_mean, batch_mean, corr_count, rho)
    corr_count = corr_count + 1

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  if kind == 'linear_symmetric':
    params['predictor']['kernel'] = spectral.symmetrize(params['predictor']['kernel'])
  elif sets_predictor:
    # Overwrite W_p from F every `freq` steps (that step's SGD update is discarded, momentum is kept).
    current = params['predictor']['kernel']

    def reset():
      w, ok = predictor_from_corr(predictor_input(corr, corr_mean, config), config, current)
      return w.astype(current.dtype), ok
    if config.predictor.freq == 1:  # no lax.cond: on GPUs a conditional waits for its predicate on the host
      params['predictor']['kernel'], root_ok = reset()
    else:  # here the cond pays: W_p is computed only every freq steps
      params['predictor']['kernel'], root_ok = jax.lax.cond(step % config.predictor.freq == 0, reset,
                                                            lambda: (current, jnp.array(True)))

  tau = schedules.tau(step, config)
  if config.method == 'byol':
    target_params = schedules.ema(state.target_params, params['tower'], tau)
  else:
    target_params = state.target_params
  metrics = dict(loss=aux['ssl_loss'], probe_loss=aux['probe_loss'], probe_top1=aux['probe_top1'],
                 tau=tau, lr=schedules.learning_rate(config)(step))
  if sets_predictor:
    metrics['predictor_root_ok'] = root_ok.astype(jnp.float32)
  metrics['loss'] = jax.lax.pmean(metrics['loss'], axis_name)
  # 1 while the loss and the updated parameters are finite: the loop never checkpoints a state without it.
  metrics['finite'] = jnp.isfinite(metrics['loss']) & jnp.all(
      jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
  new_state = state.replace(step=step + 1, params=params, batch_stats=aux['stats'], target_params=target_params,
                            target_batch_stats=aux['target_stats'], opt_state=opt_state, corr=corr,
                            corr_count=corr_count, corr_mean=corr_mean)
  return new_state, metrics


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over `num_devices` devices (0: every device of every process), axis 'data'."""
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return jax.sharding.Mesh(devices, (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def shard_map_step(step_fn, mesh, donate: bool = True):
  """jit(shard_map(step)): state replicated, batch split over 'data', state buffers donated."""
  # check_vma=False: collectives have pmap's semantics (a replicated value's gradient is not summed
  # implicitly), so the same per-device function is correct under both shard_map and pmap.
  mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if donate else ())


def pmap_step(step_fn):
  return jax.pmap(step_fn, axis_name=AXIS)


def make_step(config, networks, tx, mean, std):
  return functools.partial(train_step, config=config, networks=networks, tx=tx, mean=mean, std=std)
