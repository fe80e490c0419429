"""Does training R runs in one program (jax.vmap over a leading run axis, PureJaxRL-style) beat R runs one after
another on this backend? Measured on the convolution that dominates the default network's step (14x14x32, batch 256,
forward and both gradients): under vmap the R kernels become one grouped convolution (feature_group_count=R).

  python scripts/cpu/vmap_runs_conv.py     (docs/records/benchmarks_log_2026-11.md, "Runs batched with vmap")

The convolution alone, kept for that record; the whole training step of K runs batched (byol_jax/batched.py)
against the same runs one after another is scripts/gpu/batched_runs_bench.py.
"""
import time, jax, jax.numpy as jnp
R = 3
def layer(w, x):  # conv + relu, the default network's 14x14x32 stage, forward and both gradients
  y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.sin(jax.nn.relu(y)))
g = jax.grad(layer, argnums=(0, 1))
ws = jax.random.normal(jax.random.key(0), (R, 3, 3, 32, 32)) * 0.1
xs = jax.random.normal(jax.random.key(1), (R, 256, 14, 14, 32))
one = jax.jit(g)
batched = jax.jit(jax.vmap(g))
def seq():
  return [one(ws[r], xs[r]) for r in range(R)]
jax.block_until_ready(seq()); jax.block_until_ready(batched(ws, xs))
t_seq, t_vm = [], []
for _ in range(7):
  t = time.perf_counter(); jax.block_until_ready(seq()); t_seq.append(time.perf_counter() - t)
  t = time.perf_counter(); jax.block_until_ready(batched(ws, xs)); t_vm.append(time.perf_counter() - t)
ms = lambda v: sorted(v)[len(v) // 2] * 1e3
print(f'{R} runs one after another: {ms(t_seq):.1f} ms; vmapped: {ms(t_vm):.1f} ms; vmapped/sequential speed {ms(t_seq)/ms(t_vm):.2f}x')
