"""Tests for byol_jax.evaluate (small synthetic data; runs in a few seconds on CPU)."""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol_jax import evaluate as ev


def _clusters(n_train, n_test, dim=32, num_classes=5, spread=0.3, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_classes, dim)).astype(np.float32) * 3.0
  ytr = rng.integers(0, num_classes, n_train)
  yte = rng.integers(0, num_classes, n_test)
  xtr = centers[ytr] + spread * rng.normal(size=(n_train, dim)).astype(np.float32)
  xte = centers[yte] + spread * rng.normal(size=(n_test, dim)).astype(np.float32)
  return xtr, ytr, xte, yte


def test_standardize_uses_train_statistics():
  rng = np.random.default_rng(0)
  tr = rng.normal(3.0, 2.0, size=(500, 8)).astype(np.float32)
  te = rng.normal(-1.0, 5.0, size=(100, 8)).astype(np.float32)
  a, b = ev.standardize(tr, te)
  np.testing.assert_allclose(np.mean(a, 0), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.std(a, 0), 1.0, atol=1e-4)
  mean, std = tr.mean(0), tr.std(0)
  np.testing.assert_allclose(b, (te - mean) / (std + 1e-6), rtol=1e-4, atol=1e-4)
  # constant (e.g. dead-ReLU) train features: exactly 0 on train, scale 1 (as sklearn) on test
  tr[:, 0] = 7.1
  tr[:, 1] = 0.0
  a, b = ev.standardize(tr, te)
  assert np.all(np.asarray(a)[:, :2] == 0.0)
  np.testing.assert_allclose(b[:, 0], te[:, 0] - 7.1, atol=1e-5)
  np.testing.assert_allclose(b[:, 1], te[:, 1], atol=1e-6)


# All Adam probe tests share train shape (1000, 32), 5 classes, batch 128 and lr 1e-2, so the jitted
# epoch function is compiled once (keeps this file fast). 1000 % 128 != 0: the padded last batch
# is exercised everywhere.
PROBE = dict(solver="adam", batch_size=128, learning_rate=1e-2)


def test_linear_probe_separable_clusters():
  xtr, ytr, xte, yte = _clusters(1000, 300, num_classes=5, spread=1.0)
  r = ev.linear_probe(xtr, ytr, xte, yte, 5, epochs=10, **PROBE)
  assert r["top1"] > 0.95
  assert r["train_top1"] > 0.95
  assert len(r["test_top1_per_epoch"]) == 10
  assert r["top1"] == r["test_top1_per_epoch"][-1]
  assert r["top1_best_over_epochs"] == max(r["test_top1_per_epoch"])
  assert r["top1_best_over_epochs"] >= r["top1"]
  assert all(0.0 <= a <= 1.0 for a in r["test_top1_per_epoch"])


def test_linear_probe_random_labels_near_chance():
  rng = np.random.default_rng(1)
  num_classes = 5
  xtr = rng.normal(size=(1000, 32)).astype(np.float32)
  xte = rng.normal(size=(2000, 32)).astype(np.float32)
  ytr = rng.integers(0, num_classes, 1000)
  yte = rng.integers(0, num_classes, 2000)
  r = ev.linear_probe(xtr, ytr, xte, yte, num_classes, epochs=10, **PROBE)
  # chance = 0.2, std of the estimate ~ 0.009 for 2000 test examples
  assert abs(r["top1"] - 0.2) < 0.04
  assert r["top1_best_over_epochs"] >= r["top1"]
  assert r["top1_best_over_epochs"] < 0.25


def test_linear_probe_deterministic_and_partial_batches():
  xtr, ytr, xte, yte = _clusters(1000, 200, num_classes=5, spread=4.0)
  r1 = ev.linear_probe(xtr, ytr, xte, yte, 5, epochs=3, seed=4, **PROBE)
  r2 = ev.linear_probe(xtr, ytr, xte, yte, 5, epochs=3, seed=4, **PROBE)
  r3 = ev.linear_probe(xtr, ytr, xte, yte, 5, epochs=3, seed=5, **PROBE)
  assert r1 == r2
  assert r1["test_top1_per_epoch"] != r3["test_top1_per_epoch"]


def _mixture(n_train=2000, n_test=1000, dim=32, num_classes=10, seed=0):
  """Overlapping Gaussian classes: no separating hyperplane, so the logistic optimum is finite."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_classes, dim)) * 0.6

  def sample(n):
    y = rng.integers(0, num_classes, n)
    x = centers[y] + rng.normal(size=(n, dim)) * np.linspace(0.5, 2.0, dim)  # unequal scales
    x[:, 1] = x[:, 0] + 0.05 * x[:, 1]  # two nearly collinear features: an ill-conditioned problem
    return x.astype(np.float32), y

  return (*sample(n_train), *sample(n_test))


def _objective64(theta, x, y, num_classes, l2):
  """The probe objective and its gradient in float64 numpy (theta = [W.ravel(), b])."""
  n, d = x.shape
  w, b = theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
  z = x @ w + b
  z = z - z.max(axis=1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  onehot = np.eye(num_classes)[y]
  loss = -np.mean(np.sum(onehot * np.log(p), axis=1)) + 0.5 * l2 * np.sum(w ** 2)
  gz = (p - onehot) / n
  return loss, np.concatenate([(x.T @ gz + l2 * w).ravel(), gz.sum(axis=0)])


@pytest.mark.parametrize("c", [0.05, pytest.param(5.0, marks=pytest.mark.slow)])  # weak l2: ~10 s of iterations
def test_lbfgs_probe_reaches_the_optimum(c):
  import scipy.optimize
  xtr, ytr, xte, yte = _mixture()
  r = ev.linear_probe(xtr, ytr, xte, yte, 10, solver="lbfgs", c=c, max_iter=1000, tol=1e-5)
  assert r["grad_norm"] < 1e-5 and r["iterations"] < 1000
  l2 = 1 / (c * len(xtr))  # sklearn's C on 2000 examples
  assert r["l2"] == pytest.approx(l2)

  # The same objective on the same standardised features, solved by scipy in float64.
  str_, ste = (np.asarray(a, np.float64) for a in ev.standardize(xtr, xte))
  ref = scipy.optimize.minimize(_objective64, np.zeros(33 * 10), args=(str_, ytr, 10, l2), jac=True,
                                method="L-BFGS-B", options=dict(maxiter=10_000, ftol=1e-15, gtol=1e-9))
  assert ref.success, ref.message
  assert r["loss"] == pytest.approx(ref.fun, rel=1e-6, abs=1e-6)
  w, b = ref.x[:320].reshape(32, 10), ref.x[320:]
  assert r["top1"] == pytest.approx(np.mean(np.argmax(ste @ w + b, 1) == yte), abs=2e-3)  # <= 2 of 1000
  assert r["train_top1"] == pytest.approx(np.mean(np.argmax(str_ @ w + b, 1) == ytr), abs=1e-3)
  assert 0.4 < r["top1"] < 0.95  # a problem where the probe matters, not a separable one
  assert r["top1_best_over_epochs"] == r["top1"] and r["test_top1_per_epoch"] == [r["top1"]]


def test_lbfgs_probe_deterministic_and_capped():
  xtr, ytr, xte, yte = _mixture()
  r1 = ev.linear_probe(xtr, ytr, xte, yte, 10, solver="lbfgs", c=0.5)
  r2 = ev.linear_probe(xtr, ytr, xte, yte, 10, solver="lbfgs", c=0.5)
  assert r1 == r2
  capped = ev.linear_probe(xtr, ytr, xte, yte, 10, solver="lbfgs", c=0.5, max_iter=3)
  assert capped["iterations"] == 3 and capped["grad_norm"] > 1e-5 and capped["loss"] > r1["loss"]
  with pytest.raises(ValueError, match="c > 0"):
    ev.linear_probe(xtr, ytr, xte, yte, 10, solver="lbfgs", c=0.0)
  with pytest.raises(ValueError, match="solver"):
    ev.linear_probe(xtr, ytr, xte, yte, 10, solver="sgd")


def test_knn_clustered_data_high_accuracy():
  xtr, ytr, xte, yte = _clusters(1000, 333, num_classes=5)
  acc = ev.knn_top1(xtr, ytr, xte, yte, 5, k=20, chunk=64)
  assert acc > 0.98
  acc_majority = ev.knn_top1(xtr, ytr, xte, yte, 5, k=20, temperature=None, chunk=64)
  assert acc_majority > 0.98


@pytest.mark.parametrize("temperature", [0.07, None])
def test_knn_chunking_matches_single_chunk(temperature):
  # noisy data so predictions are not trivially all-correct
  xtr, ytr, xte, yte = _clusters(500, 257, num_classes=4, spread=6.0, seed=3)
  full = ev.knn_predict(xtr, ytr, xte, 4, k=15, temperature=temperature, chunk=10_000)
  chunked = ev.knn_predict(xtr, ytr, xte, 4, k=15, temperature=temperature, chunk=50)
  chex.assert_shape(chunked, (257,))
  chex.assert_trees_all_equal(full, chunked)
  assert ev.knn_top1(xtr, ytr, xte, yte, 4, k=15, temperature=temperature, chunk=50) == \
      ev.knn_top1(xtr, ytr, xte, yte, 4, k=15, temperature=temperature, chunk=257)


def test_knn_k1_majority_equals_brute_force_nearest_neighbour():
  rng = np.random.default_rng(5)
  xtr = rng.normal(size=(300, 16)).astype(np.float32)
  xte = rng.normal(size=(77, 16)).astype(np.float32)
  ytr = rng.integers(0, 7, 300)
  yte = rng.integers(0, 7, 77)
  ntr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
  nte = xte / np.linalg.norm(xte, axis=1, keepdims=True)
  expected = ytr[np.argmax(nte.astype(np.float64) @ ntr.T.astype(np.float64), axis=1)]
  pred = ev.knn_predict(xtr, ytr, xte, 7, k=1, temperature=None, chunk=32)
  np.testing.assert_array_equal(np.asarray(pred), expected)
  assert ev.knn_top1(xtr, ytr, xte, yte, 7, k=1, temperature=None, chunk=32) == \
      pytest.approx(np.mean(expected == yte))


def test_knn_weighted_vote_matches_numpy():
  rng = np.random.default_rng(6)
  xtr = rng.normal(size=(200, 8)).astype(np.float32)
  xte = rng.normal(size=(50, 8)).astype(np.float32)
  ytr = rng.integers(0, 3, 200)
  k, t = 9, 0.1
  ntr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
  nte = xte / np.linalg.norm(xte, axis=1, keepdims=True)
  sim = nte.astype(np.float64) @ ntr.T.astype(np.float64)
  idx = np.argsort(-sim, axis=1)[:, :k]
  votes = np.zeros((50, 3))
  for i in range(50):
    for j in idx[i]:
      votes[i, ytr[j]] += np.exp(sim[i, j] / t)
  pred = ev.knn_predict(xtr, ytr, xte, 3, k=k, temperature=t, chunk=16)
  np.testing.assert_array_equal(np.asarray(pred), np.argmax(votes, axis=1))


def test_online_probe_loss_ignores_unlabelled():
  rng = np.random.default_rng(7)
  logits = jnp.asarray(rng.normal(size=(12, 5)).astype(np.float32))
  labels = jnp.asarray([0, -1, 3, 4, -1, 2, 1, -1, 0, 4, 2, -1])
  keep = np.asarray(labels) >= 0
  loss, acc = jax.jit(ev.online_probe_loss)(logits, labels)
  chex.assert_shape((loss, acc), ())
  ref_loss = np.mean(optax.softmax_cross_entropy_with_integer_labels(
      np.asarray(logits)[keep], np.asarray(labels)[keep]))
  ref_acc = np.mean(np.argmax(np.asarray(logits)[keep], -1) == np.asarray(labels)[keep])
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(acc, ref_acc, rtol=1e-6)

  loss_sum, correct, count = jax.jit(ev.online_probe_sums)(logits, labels)
  assert float(count) == keep.sum()
  np.testing.assert_allclose(loss_sum, ref_loss * keep.sum(), rtol=1e-5)
  np.testing.assert_allclose(correct, ref_acc * keep.sum(), rtol=1e-6)

  # gradient does not flow to unlabelled rows
  g = jax.jit(jax.grad(lambda l: ev.online_probe_loss(l, labels)[0]))(logits)
  chex.assert_tree_all_finite(g)
  assert np.all(np.asarray(g)[~keep] == 0.0)


def test_online_probe_all_unlabelled_is_zero():
  logits = jnp.ones((4, 3))
  labels = -jnp.ones((4,), jnp.int32)
  loss, acc = jax.jit(ev.online_probe_loss)(logits, labels)
  assert float(loss) == 0.0 and float(acc) == 0.0
  g = jax.jit(jax.grad(lambda l: ev.online_probe_loss(l, labels)[0]))(logits)
  chex.assert_tree_all_finite(g)
  assert np.all(np.asarray(g) == 0.0)


def test_online_probe_sums_under_vmap_psum():
  # emulate devices with vmap + a named axis: weighted cross-device mean equals the global mean.
  rng = np.random.default_rng(8)
  logits = jnp.asarray(rng.normal(size=(2, 6, 4)).astype(np.float32))
  labels = jnp.asarray([[0, -1, -1, -1, -1, 1], [2, 3, 1, 0, -1, 2]])

  def per_device(l, y):
    s, c, n = ev.online_probe_sums(l, y)
    s, c, n = jax.lax.psum((s, c, n), "d")
    return s / jnp.maximum(n, 1.0)

  dist = jax.jit(jax.vmap(per_device, axis_name="d"))(logits, labels)
  glob, _ = jax.jit(ev.online_probe_loss)(logits.reshape(12, 4), labels.reshape(12))
  np.testing.assert_allclose(dist, jnp.full((2,), glob), rtol=1e-6)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_evaluate_features_reads_config(solver):
  xtr, ytr, xte, yte = _clusters(1000, 200, num_classes=5)
  config = types.SimpleNamespace(probe_solver=solver, probe_c=1.0, probe_max_iter=500, probe_tol=1e-5,
                                 probe_epochs=5, probe_batch_size=128, probe_lr=1e-2,
                                 probe_weight_decay=1e-3, knn_k=10, knn_temperature=None)
  out = ev.evaluate_features(xtr, ytr, xte, yte, 5, config)
  assert {"linear_probe_top1", "linear_probe_top1_best_over_epochs", "linear_probe_train_top1",
          "knn_top1"} <= set(out)
  assert ("linear_probe_iterations" in out) == (solver == "lbfgs")
  assert out["linear_probe_top1"] > 0.95 and out["knn_top1"] > 0.95
  assert out["linear_probe_top1_best_over_epochs"] >= out["linear_probe_top1"]
  assert out["knn_top1"] == ev.knn_top1(xtr, ytr, xte, yte, 5, k=10, temperature=None)
