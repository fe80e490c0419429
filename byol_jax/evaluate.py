"""Evaluation of frozen features: linear probe, kNN monitor and the online probe loss.

All functions are pure and operate on already-extracted feature arrays (numpy or jax, any float
dtype; they are cast to float32). Feature extraction from the network happens elsewhere.

Linear probe. Frozen features, standardised with the train-set mean/std (sklearn `StandardScaler`),
then a linear softmax classifier, fitted by one of two solvers (`probe_solver`):
  'lbfgs' (default): full-batch L-BFGS to the optimum of the convex L2-regularised multinomial
      logistic loss  mean CE + ||W||^2 / (2 C N_train)  (bias not penalised), stopped when the
      gradient norm is below `probe_tol`. This is sklearn's LogisticRegression(C) objective
      (0.5 ||W||^2 + C * sum CE) divided by C * N_train, so the same C gives the same classifier.
      Converged and deterministic: the number does not depend on a learning rate, epochs or a seed.
      C, not a fixed L2 coefficient, because the best coefficient falls with N, roughly as 10-30 / N
      on Fashion-MNIST features at N = 3k, 10k and 60k (docs/benchmarks.md): one C suits the full
      split and subsets of it (eval.num_train) alike.
  'adam': the paper's protocol (reference code): torch Adam (lr 3e-4, weight_decay 1e-3), batch 128,
      50 epochs. Stops where its epochs run out, short of the optimum: with the Fashion-MNIST config's
      settings (30 epochs, lr 3e-3) it read 0.4-0.7 points below the converged logistic regression on
      the same features (docs/benchmarks.md). The reference reports the BEST test accuracy over
      the epochs, which is optimistic; we report the FINAL-epoch accuracy as `top1` and the
      best-over-epochs value only as the clearly labelled extra `top1_best_over_epochs`.

Config fields read by `evaluate_features` (e.g. an ml_collections ConfigDict; all required):
  probe_solver        str    'lbfgs' or 'adam'
  probe_c             float  lbfgs: inverse regularisation strength, sklearn's C (default 0.1)
  probe_max_iter      int    lbfgs: iteration cap (a warning is logged if it stops there)
  probe_tol           float  lbfgs: stop when the gradient norm of the objective is below this
  probe_epochs        int    adam: epochs (paper: 50)
  probe_batch_size    int    adam: minibatch size (paper: 128)
  probe_lr            float  adam: learning rate (paper: 3e-4)
  probe_weight_decay  float  adam: L2 weight decay added to the gradient, torch-Adam style (paper: 1e-3)
  knn_k               int    number of neighbours (common SSL kNN monitor: 200)
  knn_temperature     float | None  vote weight exp(sim / T) (common: 0.07); None = majority vote
Optional: probe_seed (int, default 0; adam only).

As a command, the evaluation protocols on a run's checkpoint (frozen, knn, linear, finetune, semi):
  python -m byol_jax.evaluate --workdir=DIR --protocol=NAME   (byol_jax/protocols.py)
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from byol_jax.choices import PROBE_SOLVERS

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


def probe_objective(params, x, y, l2):
  """Mean softmax cross-entropy + (l2 / 2) ||W||^2, the bias not penalised (as sklearn)."""
  logits = _logits(params, x)
  # The true logit through a one-hot mask rather than a gather: XLA constant-folds the gather's
  # gradient (a scatter over all rows) for seconds at compile time.
  ce = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(logits * jax.nn.one_hot(y, logits.shape[-1]), axis=-1)
  return jnp.mean(ce) + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))


def _preconditioner(x, l2):
  """(A, A^-1) with A = (X^T X / N + l2 I)^(-1/2).

  Fitting V in W = A V is the same problem (the same minimiser W), but its Hessian is close to a
  multiple of the identity: correlated features make the problem in W ill-conditioned (4x fewer
  L-BFGS iterations on 60k x 256 Fashion-MNIST features, docs/benchmarks.md).
  """
  e, u = jnp.linalg.eigh(x.T @ x / x.shape[0])
  e = jnp.maximum(e, 0.0) + l2
  return (u * jax.lax.rsqrt(e)) @ u.T, (u * jnp.sqrt(e)) @ u.T


@jax.jit
def _fit_lbfgs(x, y, w0, b0, l2, max_iter, tol):
  """L-BFGS (zoom line search) from (w0, b0) until ||grad|| < tol or max_iter iterations.

  Returns (params, iterations, gradient norm, objective), the gradient that of `probe_objective`
  in W. All of x is one batch, so every step is deterministic; the loop runs on device (one
  compilation per feature shape).
  """
  a, a_inv = _preconditioner(x, l2)
  fn = lambda p: probe_objective({"w": a @ p["v"], "b": p["b"]}, x, y, l2)  # pylint: disable=unnecessary-lambda-assignment
  opt = optax.lbfgs()
  # Reuses the value and gradient the line search already computed at the accepted point.
  value_and_grad = optax.value_and_grad_from_state(fn)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fn)
    return optax.apply_updates(params, updates), state

  def not_done(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad = optax.tree.get(state, "grad")  # in V; in W it is A^-1 grad_V
    grad_norm = optax.tree.norm({"w": a_inv @ grad["v"], "b": grad["b"]})
    return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

  v0 = {"v": a_inv @ w0, "b": b0}
  params, state = jax.lax.while_loop(not_done, step, (v0, opt.init(v0)))
  params = {"w": a @ params["v"], "b": params["b"]}
  value, grad = jax.value_and_grad(probe_objective)(params, x, y, l2)
  return params, optax.tree.get(state, "count"), optax.tree.norm(grad), value


def _probe_lbfgs(train_x, train_y, test_x, test_y, num_classes, *, l2, max_iter, tol):
  dim = train_x.shape[1]
  # The objective is convex with one minimiser in W (l2 > 0): zero is as good a start as any and
  # leaves nothing random.
  params, iterations, grad_norm, loss = _fit_lbfgs(
      train_x, train_y, jnp.zeros((dim, num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32),
      jnp.float32(l2), jnp.int32(max_iter), jnp.float32(tol))
  iterations, grad_norm = int(iterations), float(grad_norm)
  if grad_norm >= tol:
    logging.warning("linear probe: L-BFGS stopped at eval.probe_max_iter=%d with gradient norm %.2e >= "
                    "eval.probe_tol=%.0e; raise eval.probe_max_iter (or lower eval.probe_c)",
                    max_iter, grad_norm, tol)
  top1 = float(_accuracy(params, test_x, test_y))
  return dict(
      top1=top1,
      top1_best_over_epochs=top1,  # one solution, nothing to pick from: the same number
      train_top1=float(_accuracy(params, train_x, train_y)),
      test_top1_per_epoch=[top1],
      l2=float(l2),
      loss=float(loss),
      grad_norm=grad_norm,
      iterations=iterations,
  )


def _probe_adam(train_x, train_y, test_x, test_y, num_classes, *, epochs, batch_size, learning_rate,
                weight_decay, seed):
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
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


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, *, solver: str = "lbfgs",
                 c: float = 0.1, max_iter: int = 1000, tol: float = 1e-5, epochs: int = 50,
                 batch_size: int = 128, learning_rate: float = 3e-4, weight_decay: float = 1e-3,
                 seed: int = 0) -> dict[str, Any]:
  """Standardise, then fit a linear softmax classifier on frozen features (module docstring).

  solver='lbfgs' reads c (sklearn's C), max_iter, tol; solver='adam' (the paper's protocol) reads epochs,
  batch_size, learning_rate, weight_decay, seed. Returns a dict of python floats:
    top1: test accuracy (fraction in [0, 1]) of the fitted classifier (adam: after the FINAL epoch);
    top1_best_over_epochs: adam: max test accuracy over epochs (the reference's optimistic number,
      extra); lbfgs: equal to top1 (one solution);
    train_top1: train accuracy of the fitted classifier;
    test_top1_per_epoch: adam: one test accuracy per epoch; lbfgs: [top1];
  and for lbfgs also l2 (= 1 / (c N_train)), loss (the objective at the solution), grad_norm and
  iterations.
  """
  if solver not in PROBE_SOLVERS:
    raise ValueError(f"solver={solver!r}; use one of {PROBE_SOLVERS}")
  if solver == "lbfgs" and not (c > 0 and max_iter >= 1 and tol > 0):
    raise ValueError(f"lbfgs needs c > 0, max_iter >= 1 and tol > 0; got {c}, {max_iter}, {tol}")
  train_x, test_x = standardize(train_x, test_x)
  train_y = jnp.asarray(train_y, jnp.int32)
  test_y = jnp.asarray(test_y, jnp.int32)
  if solver == "lbfgs":
    l2 = 1.0 / (c * train_x.shape[0])
    return _probe_lbfgs(train_x, train_y, test_x, test_y, num_classes, l2=l2, max_iter=max_iter, tol=tol)
  return _probe_adam(train_x, train_y, test_x, test_y, num_classes, epochs=epochs, batch_size=batch_size,
                     learning_rate=learning_rate, weight_decay=weight_decay, seed=seed)


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
  """Linear probe and kNN top-1 on frozen features.

  `config` needs the attributes listed in the module docstring. Returns python floats:
    linear_probe_top1 (the reported number; adam: FINAL epoch), linear_probe_top1_best_over_epochs
    (adam: the reference's optimistic number, extra; lbfgs: the same as linear_probe_top1),
    linear_probe_train_top1, knn_top1; lbfgs adds linear_probe_iterations (int) and
    linear_probe_grad_norm.
  """
  probe = linear_probe(
      train_x, train_y, test_x, test_y, num_classes, solver=str(config.probe_solver),
      c=float(config.probe_c), max_iter=int(config.probe_max_iter), tol=float(config.probe_tol),
      epochs=int(config.probe_epochs), batch_size=int(config.probe_batch_size),
      learning_rate=float(config.probe_lr), weight_decay=float(config.probe_weight_decay),
      seed=int(getattr(config, "probe_seed", 0)))
  temperature = config.knn_temperature
  knn = knn_top1(train_x, train_y, test_x, test_y, num_classes, k=int(config.knn_k),
                 temperature=None if temperature is None else float(temperature))
  out = dict(
      linear_probe_top1=probe["top1"],
      linear_probe_top1_best_over_epochs=probe["top1_best_over_epochs"],
      linear_probe_train_top1=probe["train_top1"],
      knn_top1=knn,
  )
  if "iterations" in probe:  # lbfgs: how the fit ended, to see it converged
    out.update(linear_probe_iterations=probe["iterations"], linear_probe_grad_norm=probe["grad_norm"])
  return out


# ----------------------------------------------------------------------------------------------------------- command

if __name__ == '__main__':  # python -m byol_jax.evaluate --workdir=DIR --protocol=NAME (byol_jax/protocols.py)
  from absl import app

  from byol_jax import cli, protocols
  protocols.define_flags()
  app.run(protocols.main, flags_parser=cli.parse_flags)
