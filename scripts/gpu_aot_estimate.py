"""XLA's program for an H100, compiled on a machine without a GPU, and the memory traffic of its kernels.

For sessions without a GPU: XLA:GPU's fusion decisions (which intermediates it writes to memory and reads
back, which it recomputes) depend only on the program and the target, so the compiled program shows how
many bytes each kernel moves. Element-wise and reduction kernels (BatchNorm, the augmentation) are bound
by memory bandwidth, so bytes / 3.35 TB/s is a lower bound of their time (for kernels heavy in arithmetic,
fused ops x elements / 60 TFLOP/s where that is larger); convolutions and matrix products are compute-bound and
reported apart. On the H100 runs of docs/benchmarks.md the fusions took ~1.5x this bound. Timings still need a
GPU (`scripts/gpu_bench.sh`).

  # once, in its own virtualenv (the CUDA wheels are ~3 GB; nothing runs on a GPU):
  python -m venv /tmp/venv-cuda && /tmp/venv-cuda/bin/pip install "jax[cuda12]==<jax version>" \
      flax optax chex ml_collections orbax-checkpoint absl-py
  /tmp/venv-cuda/bin/python scripts/gpu_aot_estimate.py augment [--preset=stl10 --batch=256 --size=96]
  /tmp/venv-cuda/bin/python scripts/gpu_aot_estimate.py step [--no_augment] [--set model.max_pool_impl=xla]
  ... [--ref=HEAD~1]   also the same for the code at a git revision (`git archive` into a temporary folder)

`step` is the benchmark's ResNet-18 step (configs/stl10.py, 96 px, batch 256, bf16, projector 512-4096-256,
DirectPred with Newton-Schulz), with the augmentation unless --no_augment; `augment` is the augmentation
as the step runs it (two views, normalised, cast to bf16 and concatenated).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # no GPU here: the CUDA plugin only compiles
os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '-1')

# What XLA needs to know of the target: an H100 SXM (the values of XLA's GPU target specs), CUDA 12.8, cuDNN 9.7.
H100_TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
# The code measured: this checkout, or (--ref) a revision extracted by the parent process.
ROOT = os.environ.get('BYOL_JAX_ROOT') or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANDWIDTH = 3.35e12  # H100 SXM HBM3, bytes/s
ELEMENTWISE_RATE = 60e12  # FP32 non-tensor-core operations/s, for kernels heavy in arithmetic
_DTYPE_BYTES = {'f32': 4, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'pred': 1, 'u8': 1, 's8': 1, 'f64': 8,
                's64': 8, 'u64': 8}
_SHAPE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')
_FREE_OPS = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast', 'opt-barrier')


def shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    total += n * _DTYPE_BYTES[dtype]
  return total


def kernels(hlo: str) -> list[dict]:
  """One row per kernel of the entry computation: bytes read + written, arithmetic ops x elements."""
  computations, body, entry = {}, None, None
  for line in hlo.splitlines():
    header = re.match(r'^(ENTRY )?%?(\S+) .*\{$', line)
    if header and ('->' in line or line.startswith('ENTRY')):
      body = computations.setdefault(header.group(2), [])
      entry = body if line.startswith('ENTRY') else entry
    elif line.startswith('}'):
      body = None
    elif body is not None and ' = ' in line:
      body.append(re.sub(r', metadata=.*', '', line.strip()))
  shapes, rows = {}, []
  for line in entry:
    m = re.match(r'(ROOT )?%(\S+) = (.+?) ([\w-]+)\((.*?)\)(, |$)', line)
    if not m:
      continue
    name, shape, op, operands = m.group(2), m.group(3), m.group(4), m.group(5)
    shapes[name] = shape
    if op in _FREE_OPS:
      continue
    moved = shape_bytes(shape) + sum(shape_bytes(shapes.get(o.strip().lstrip('%'), ''))
                                     for o in operands.split(',') if o.strip().startswith('%'))
    called = re.search(r'calls=%([^,\s]+)', line)
    fused = computations.get(called.group(1), []) if called else []
    ops = sum(1 for l in fused if not re.search(
        r' (parameter|constant|bitcast|broadcast|slice|reshape|iota|tuple|get-tuple-element)\(', l))
    compute_bound = op == 'custom-call' or 'gemm' in name or 'cudnn' in name or 'dot' in name
    seconds = max(moved / BANDWIDTH, ops * shape_bytes(shape) / 4 / ELEMENTWISE_RATE)
    rows.append(dict(name=name, op=op, shape=shape, bytes=moved, ops=ops, seconds=seconds,
                     compute_bound=compute_bound))
  return rows


def report(label: str, hlo: str, top: int):
  rows = kernels(hlo)
  memory = [r for r in rows if not r['compute_bound']]
  print(f'== {label}: {len(rows)} kernels; {len(rows) - len(memory)} convolutions / matrix products '
        f'({sum(r["bytes"] for r in rows if r["compute_bound"]) / 1e9:.2f} GB, compute-bound, not estimated); '
        f'{len(memory)} other kernels move {sum(r["bytes"] for r in memory) / 1e9:.3f} GB: '
        f'>= {sum(r["seconds"] for r in memory) * 1e3:.3f} ms at {BANDWIDTH / 1e12:.2f} TB/s', flush=True)
  for r in sorted(memory, key=lambda r: -r['seconds'])[:top]:
    print(f'  {r["seconds"] * 1e6:7.1f} us {r["bytes"] / 1e6:8.1f} MB  {r["ops"]:4d} ops  '
          f'{r["name"][:38]:38s} {r["shape"][:70]}', flush=True)


def augment_program(args) -> str:
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies
  from byol_jax.data import augment
  topology = topologies.get_topology_desc(platform='cuda', target_config=H100_TARGET, topology='1x1x1')
  device = jax.sharding.SingleDeviceSharding(topology.devices[0])
  cfg, n, size = augment.augment_config(args.preset), args.batch, args.size

  def views(images, indices, step):
    v1, v2 = augment.two_views(images, indices, step, 0, cfg, size)
    return jnp.concatenate([((v - 0.5) / 0.25).astype(jnp.bfloat16) for v in (v1, v2)], axis=0)

  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=device)
  return jax.jit(views).lower(spec((n, size, size, 3), jnp.uint8), spec((n,), jnp.int32),
                              spec((), jnp.int32)).compile().as_text()


def step_program(args) -> str:
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies
  from byol_jax import config as config_lib, optim, state as state_lib, step as step_lib
  c = config_lib.load_config_module(os.path.join(ROOT, 'configs', 'x.py'), 'stl10.py').get_config()
  c.train.batch_size, c.data.image_size, c.train.compute_dtype = args.batch, args.size, 'bfloat16'
  c.model.projector_hidden, c.model.projector_dim, c.model.projector_bn_affine = 4096, 256, True
  c.predictor.solver = 'newton_schulz'
  c.model.max_pool_impl = 'taps'  # what 'auto' picks on a GPU (this process's backend is the CPU)
  c.model.conv_impl = 'xla'  # likewise
  config_lib.override(c, dict(kv.split('=', 1) for kv in args.set))
  c = config_lib.finalize(c)
  topology = topologies.get_topology_desc(platform='cuda', target_config=H100_TARGET, topology='1x1x1')
  mesh = topologies.make_mesh(topology, (1,), (step_lib.AXIS,))
  tx = optim.make_optimizer(c)
  networks, state = state_lib.build(c, in_channels=3, num_classes=10, tx=tx)
  step_fn = step_lib.make_step(c, networks, tx, (0.5,) * 3, (0.25,) * 3)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(step_lib.AXIS))
  n, s = args.batch, args.size
  batch = dict(image=jax.ShapeDtypeStruct((n, s, s, 3), jnp.uint8, sharding=split),
               label=jax.ShapeDtypeStruct((n,), jnp.int32, sharding=split),
               index=jax.ShapeDtypeStruct((n,), jnp.int32, sharding=split))
  if args.no_augment:
    batch['view1'] = batch['view2'] = jax.ShapeDtypeStruct((n, s, s, 3), jnp.float32, sharding=split)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
  return step_lib.shard_map_step(step_fn, mesh).lower(abstract, batch).compile().as_text()


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('what', choices=('augment', 'step'))
  ap.add_argument('--preset', default='stl10', help='augmentation preset (augment)')
  ap.add_argument('--batch', type=int, default=256)
  ap.add_argument('--size', type=int, default=96)
  ap.add_argument('--no_augment', action='store_true', help='step: ready-made views')
  ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                  help='step: a config string value, e.g. --set model.max_pool_impl=xla (repeatable)')
  ap.add_argument('--top', type=int, default=10)
  ap.add_argument('--ref', help='git revision to compare with')
  ap.add_argument('--dump', help='write the optimised HLO text here')
  args = ap.parse_args()
  if args.ref:  # the same command on the code at that revision, in a subprocess (other modules)
    with tempfile.TemporaryDirectory() as tree:
      archive = subprocess.run(['git', 'archive', args.ref, 'byol_jax', 'configs'], cwd=ROOT, check=True,
                               capture_output=True).stdout
      subprocess.run(['tar', '-x', '-C', tree], input=archive, check=True)
      argv = [a for a in sys.argv[1:] if not a.startswith('--ref')]
      subprocess.run([sys.executable, os.path.abspath(__file__), *argv], check=False,
                     env=dict(os.environ, BYOL_JAX_ROOT=tree, BYOL_JAX_LABEL=args.ref))
  sys.path.insert(0, ROOT)
  hlo = augment_program(args) if args.what == 'augment' else step_program(args)
  if args.dump:
    with open(args.dump, 'w') as f:
      f.write(hlo)
  label = (f'{args.what} ({args.preset}) ' if args.what == 'augment' else f'step{" no_augment" if args.no_augment else ""} ')
  report(label + f'batch {args.batch}, {args.size} px, H100, code: {os.environ.get("BYOL_JAX_LABEL", "working tree")}',
         hlo, args.top)


if __name__ == '__main__':
  main()
