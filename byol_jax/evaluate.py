"""Evaluation of frozen features: linear probe, kNN monitor and the online probe loss.

All functions are pure and operate on already-extracted feature arrays (numpy or jax, any float
dtype; they are cast to float32). Feature extraction from the network happens elsewhere.

Protocol (paper.md section 2 "Evaluation"): frozen 512-d backbone features, standardised with the
train-set mean/std (sklearn `StandardScaler`), then a linear layer trained with torch Adam
(lr 3e-4, weight_decay 1e-3), batch 128, 50 epochs. The reference reports the BEST test accuracy
over those epochs, which is optimistic; we report the FINAL-epoch accuracy as `top1` and the
best-over-epochs value only as the clearly labelled extra `top1_best_over_epochs`.

Config fields read by `evaluate_features` (e.g. an ml_collections ConfigDict; all required):
  probe_epochs        int    linear-probe epochs (paper: 50)
  probe_batch_size    int    linear-probe minibatch size (paper: 128)
  probe_lr            float  Adam learning rate (paper: 3e-4)
  probe_weight_decay  float  L2 weight decay added to the gradient, torch-Adam style (paper: 1e-3)
  knn_k               int    number of neighbours (common SSL kNN monitor: 200)
  knn_temperature     float | None  vote weight exp(sim / T) (common: 0.07); None = majority vote
Optional: probe_seed (int, default 0).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

STANDARDIZE_EPS = 1e-6


def standardize(train_x, test_x) -> tuple[jax.Array, jax.Array]:
  """(x - mean) / (std + 1e-6) per feature, with mean/std (ddof=0) from the train features only.

  Like sklearn's StandardScaler, a feature that is constant on the train set (e.g. a dead ReLU
  unit) gets scale 1 instead of 1/eps, so nonzero test values of it are not blown up by 1e6.
  Statistics are taken after shifting by the first train row, so constant features come out
  exactly constant in float32 (no rounding residue amplified by 1/eps).
  """
  train_x = jnp.asarray(train_x, jnp.float32)
  test_x = jnp.asarray(test_x, jnp.float32)
  shift = train_x[0]
  train_c = train_x - shift
  mean = jnp.mean(train_c, axis=0)
  std = jnp.std(train_c, axis=0)
  scale = jnp.where(std > 0, 1.0 / (std + STANDARDIZE_EPS), 1.0)
  return (train_c - mean) * scale, (test_x - shift - mean) * scale


# ----------------------------------------------------------------------------- linear probe

def _logits(params, x):
  return x @ params["w"] + params["b"]


@jax.jit
def _accuracy(params, x, y):
  return jnp.mean((jnp.argmax(_logits(params, x), axis=-1) == y).astype(jnp.float32))


@functools.lru_cache(maxsize=None)
def _probe_fns(batch_size: int, learning_rate: float, weight_decay: float):
  """Optimizer and jitted epoch function; cached so repeated evaluations do not re-trace."""
  # torch.optim.Adam(weight_decay=wd) adds wd * param to the gradient BEFORE the Adam moments
  # (coupled L2, not AdamW). add_decayed_weights followed by adam reproduces exactly that; it is
  # applied to the bias too, as torch does for all parameters of the layer.
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

  def batch_loss(params, x, y, mask):
    ce = optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  @jax.jit
  def train_epoch(params, opt_state, key, x, y):
    # One pass over a fresh permutation. Like torch's DataLoader (drop_last=False) every example is
    # seen once: the last partial batch is padded and its padding masked out of the mean loss.
    n = x.shape[0]
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    perm = jax.random.permutation(key, n)
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(num_batches, batch_size)
    mask = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32)
    mask = mask.reshape(num_batches, batch_size)

    def step(carry, inp):
      params, opt_state = carry
      b_idx, b_mask = inp
      loss, grads = jax.value_and_grad(batch_loss)(params, x[b_idx], y[b_idx], b_mask)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (idx, mask))
    return params, opt_state, jnp.mean(losses)

  return tx, train_epoch


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, *, epochs: int = 50,
                 batch_size: int = 128, learning_rate: float = 3e-4, weight_decay: float = 1e-3,
                 seed: int = 0) -> dict[str, Any]:
  """Standardise, then train a linear softmax classifier on frozen features (paper protocol).

  Returns a dict of python floats:
    top1: test accuracy (fraction in [0, 1]) after the FINAL epoch (the number we report);
    top1_best_over_epochs: max test accuracy over epochs (the reference's optimistic number, extra);
    train_top1: train accuracy after the final epoch;
    test_top1_per_epoch: list of test accuracies, one per epoch.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  train_x, test_x = standardize(train_x, test_x)
  train_y = jnp.asarray(train_y, jnp.int32)
  test_y = jnp.asarray(test_y, jnp.int32)
  dim = train_x.shape[1]
  batch_size = int(min(batch_size, train_x.shape[0]))
  tx, train_epoch = _probe_fns(batch_size, float(learning_rate), float(weight_decay))

  # torch nn.Linear default init: W, b ~ U(-1/sqrt(in), 1/sqrt(in)).
  key = jax.random.PRNGKey(seed)
  key, kw, kb = jax.random.split(key, 3)
  bound = 1.0 / np.sqrt(dim)
  params = {
      "w": jax.random.uniform(kw, (dim, num_classes), jnp.float32, -bound, bound),
      "b": jax.random.uniform(kb, (num_classes,), jnp.float32, -bound, bound),
  }
  opt_state = tx.init(params)

  per_epoch = []
  for epoch_key in jax.random.split(key, epochs):
    params, opt_state, _ = train_epoch(params, opt_state, epoch_key, train_x, train_y)
    per_epoch.append(_accuracy(params, test_x, test_y))  # async; gathered once below
  per_epoch = [float(a) for a in jax.device_get(per_epoch)]
  return dict(
      top1=per_epoch[-1],
      top1_best_over_epochs=max(per_epoch),
      train_top1=float(_accuracy(params, train_x, train_y)),
      test_top1_per_epoch=per_epoch,
  )


# ----------------------------------------------------------------------------- kNN

def _l2_normalize(x):
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "weighted"))
def _knn_chunk(query, train_n, train_y, temperature, *, k, num_classes, weighted):
  sim = query @ train_n.T                         # [chunk, N] cosine similarities
  top_sim, top_idx = jax.lax.top_k(sim, k)        # [chunk, k]
  weights = jnp.exp(top_sim / temperature) if weighted else jnp.ones_like(top_sim)
  votes = jax.nn.one_hot(train_y[top_idx], num_classes, dtype=jnp.float32) * weights[..., None]
  return jnp.argmax(jnp.sum(votes, axis=1), axis=-1)  # ties -> lowest class index


def knn_predict(train_x, train_y, test_x, num_classes: int, *, k: int = 200,
                temperature: float | None = 0.07, chunk: int = 1024) -> jax.Array:
  """kNN class predictions for test_x (see `knn_top1`); returns int32 [N_test]."""
  train_n = _l2_normalize(train_x)
  test_n = _l2_normalize(test_x)
  train_y = jnp.asarray(train_y, jnp.int32)
  k = int(min(k, train_n.shape[0]))
  n_test = test_n.shape[0]
  chunk = int(max(1, min(chunk, n_test)))
  pad = -n_test % chunk  # pad the last chunk so every call has one static shape (one compile)
  if pad:
    test_n = jnp.concatenate([test_n, jnp.zeros((pad, test_n.shape[1]), test_n.dtype)])
  weighted = temperature is not None
  temp = jnp.float32(temperature if weighted else 1.0)
  preds = [
      _knn_chunk(test_n[i:i + chunk], train_n, train_y, temp, k=k, num_classes=num_classes,
                 weighted=weighted)
      for i in range(0, test_n.shape[0], chunk)
  ]
  return jnp.concatenate(preds)[:n_test]


def knn_top1(train_x, train_y, test_x, test_y, num_classes: int, *, k: int = 200,
             temperature: float | None = 0.07, chunk: int = 1024) -> float:
  """kNN top-1 accuracy (fraction) with cosine similarity on L2-normalised features.

  Vote: each of the k nearest train neighbours votes for its label with weight exp(sim / T), as in
  InstDisc (Wu et al. 2018) and the kNN monitor commonly used in SSL code (k=200, T=0.07).
  `temperature=None` gives a plain (unweighted) majority vote; ties go to the lowest class index.
  The test set is processed in chunks of `chunk` rows (one jitted function, last chunk padded).
  """
  preds = knn_predict(train_x, train_y, test_x, num_classes, k=k, temperature=temperature,
                      chunk=chunk)
  return float(jnp.mean((preds == jnp.asarray(test_y, jnp.int32)).astype(jnp.float32)))


# ----------------------------------------------------------------------------- online probe

def online_probe_sums(logits: jax.Array, labels: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(loss_sum, correct_sum, count) over examples with label >= 0; labels < 0 are unlabelled.

  All float32 scalars, so a cross-device mean is psum(loss_sum) / max(psum(count), 1). No python
  control flow on values: safe under jit / shard_map. Feed stop-gradient features to the probe.
  """
  logits = logits.astype(jnp.float32)
  labels = jnp.asarray(labels)
  mask = labels >= 0
  safe = jnp.where(mask, labels, 0).astype(jnp.int32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  maskf = mask.astype(jnp.float32)
  loss_sum = jnp.sum(jnp.where(mask, ce, 0.0))
  correct = jnp.sum(maskf * (jnp.argmax(logits, axis=-1) == safe).astype(jnp.float32))
  return loss_sum, correct, jnp.sum(maskf)


def online_probe_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, accuracy) over labelled examples (label >= 0); both 0 if none."""
  loss_sum, correct, count = online_probe_sums(logits, labels)
  denom = jnp.maximum(count, 1.0)
  return loss_sum / denom, correct / denom


# ----------------------------------------------------------------------------- all together

def evaluate_features(train_x, train_y, test_x, test_y, num_classes: int, config
                      ) -> dict[str, Any]:
  """Linear probe (final and best-over-epochs) and kNN top-1 on frozen features.

  `config` needs the attributes listed in the module docstring. Returns python floats:
    linear_probe_top1 (FINAL epoch; the reported number), linear_probe_top1_best_over_epochs
    (reference's optimistic number, extra), linear_probe_train_top1, knn_top1.
  """
  probe = linear_probe(
      train_x, train_y, test_x, test_y, num_classes,
      epochs=int(config.probe_epochs), batch_size=int(config.probe_batch_size),
      learning_rate=float(config.probe_lr), weight_decay=float(config.probe_weight_decay),
      seed=int(getattr(config, "probe_seed", 0)))
  temperature = config.knn_temperature
  knn = knn_top1(train_x, train_y, test_x, test_y, num_classes, k=int(config.knn_k),
                 temperature=None if temperature is None else float(temperature))
  return dict(
      linear_probe_top1=probe["top1"],
      linear_probe_top1_best_over_epochs=probe["top1_best_over_epochs"],
      linear_probe_train_top1=probe["train_top1"],
      knn_top1=knn,
  )
