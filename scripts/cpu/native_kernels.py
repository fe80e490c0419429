"""The compiled CPU convolution kernels (byol_jax/models/native) against XLA's, one jitted function each.

  python scripts/cpu/native_kernels.py            # prints one markdown table (weight gradients, then forwards)

For each layer shape of the default Fashion-MNIST network (batch 256: two views of 128 on one device) and of
ResNet-18 at 64 px (batch 32), the same function by XLA and by the kernel, timed alternately (3 rounds x
median of 7 calls), the input coming from a ReLU as in the step. XLA's weight gradient includes the
transposes it makes of x and dy. One JAX device: XLA and the kernels both use the intra-op threads.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from byol_jax.models.native import kernels as native

DN = ('NHWC', 'HWIO', 'NHWC')
# (batch, size, input channels, output channels, kernel, stride): the default network's 3x3 layers and ResNet-18's.
LAYERS = [(256, 14, 32, 32, 3, 1), (256, 14, 32, 64, 3, 2), (256, 7, 64, 64, 3, 1), (256, 7, 64, 128, 3, 2),
          (256, 4, 128, 128, 3, 1), (32, 64, 3, 64, 7, 2), (32, 16, 64, 64, 3, 1), (32, 16, 64, 128, 3, 2),
          (32, 8, 128, 128, 3, 1), (32, 4, 256, 256, 3, 1)]


def timed(f, *args, calls=7):
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def main():
  assert native.available(), 'the kernels did not build (see the warning)'
  rng = np.random.default_rng(0)
  print('| layer (batch, size, in, out, kernel, stride) | part | XLA ms | kernel ms | speed-up | kernel GFLOP/s |')
  print('|---|---|---|---|---|---|')
  for n, size, cin, cout, k, s in LAYERS:
    pads = ((k // 2, k // 2),) * 2
    x = jnp.asarray(rng.normal(size=(n, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
    y = lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=DN)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    gflop = 2 * n * y.shape[1] * y.shape[2] * k * k * cin * cout / 1e9
    parts = {
        'weight gradient': (
            jax.jit(lambda x, dy: jax.vjp(lambda w_: lax.conv_general_dilated(
                jax.nn.relu(x), w_, (s, s), pads, dimension_numbers=DN), w)[1](dy)[0]),
            jax.jit(lambda x, dy: native.conv_weight_grad(jax.nn.relu(x), dy, (k, k), (s, s), pads)), (x, dy)),
        'forward': (
            jax.jit(lambda x, w: lax.conv_general_dilated(jax.nn.relu(x), w, (s, s), pads, dimension_numbers=DN)),
            jax.jit(lambda x, w: native.conv(jax.nn.relu(x), w, (s, s), pads)), (x, w)),
    }
    for part, (xla, kernel, args) in parts.items():
      if part == 'forward' and not native.conv_supports(x, w):
        continue
      a, b = [], []
      for _ in range(3):
        a.append(timed(xla, *args))
        b.append(timed(kernel, *args))
      a, b = np.median(a), np.median(b)
      print(f'| {(n, size, cin, cout, k, s)} | {part} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {gflop / b * 1e3:.0f} |',
            flush=True)


if __name__ == '__main__':
  main()
