"""XLA's program for an H200 (or H100), compiled on a machine without a GPU, and the memory traffic of its kernels.

For sessions without a GPU: XLA:GPU's fusion decisions (which intermediates it writes to memory and reads
back, which it recomputes) depend only on the program and the target, so the compiled program shows how
many bytes each kernel moves. Element-wise and reduction kernels (BatchNorm, the augmentation) are bound
by memory bandwidth, so bytes / bandwidth is a lower bound of their time (for kernels heavy in arithmetic,
fused ops x elements / 60 TFLOP/s where that is larger); convolutions and matrix products are compute-bound and
reported apart. On the H100 runs of docs/records/benchmarks_log_2026-11.md the fusions took ~1.5x this bound. Timings still need a
GPU (`scripts/gpu/bench.sh`).

  # once, in its own virtualenv (the CUDA wheels are ~3 GB, from PyPI; nothing runs on a GPU):
  python3.11 -m venv /tmp/venv-cuda && /tmp/venv-cuda/bin/pip install "jax[cuda12]==<jax version>" \
      jaxlib==<jax version> flax optax chex ml_collections orbax-checkpoint absl-py matplotlib scipy \
      && /tmp/venv-cuda/bin/pip install --no-deps -e .
  /tmp/venv-cuda/bin/python scripts/gpu/aot_estimate.py augment [--preset=stl10 --batch=256 --size=96]
  /tmp/venv-cuda/bin/python scripts/gpu/aot_estimate.py step [--no_augment] [--set model.max_pool_impl=xla]
  /tmp/venv-cuda/bin/python scripts/gpu/aot_estimate.py step --config=configs/imagenet.py --set train.batch_size=128
  /tmp/venv-cuda/bin/python scripts/gpu/aot_estimate.py step --config=configs/study/predictors.py --row=directpred \
      --set model.backbone=resnet18 --set model.stem=cifar --set model.width=64
  /tmp/venv-cuda/bin/python scripts/gpu/aot_estimate.py batched --runs=4 [--config=configs/study/predictors.py]
  ... [--gpu=h100] [--ref=HEAD~1]   the H100 target; also the same for the code at a git revision

`step` is, without --config, the benchmark's ResNet-18 step (configs/stl10.py, 96 px, batch 256, bf16, projector
512-4096-256, DirectPred with Newton-Schulz); with --config, that run config (a study config: its base, with the
switches of --row) as it is, changed by --set; with the augmentation unless --no_augment (preset 'none', as
`byol_jax.bench`'s no_augment). `batched` is --runs runs of that config (default: the Fashion-MNIST study network,
configs/study/_base.py's paper regime) trained together (byol_jax/batched.py: seeds 0.. and a different weight
decay each, so that the traced hyperparameters are compiled too). `augment` is the augmentation as the step runs it
(two views, normalised, cast to bf16 and concatenated). scripts/gpu/bench_and_study.sh's CPU check runs all of them.
"""
import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # no GPU here: the CUDA plugin only compiles
os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '-1')

# What XLA needs to know of the target: an H100 SXM (the values of XLA's GPU target specs), CUDA 12.8, cuDNN 9.7.
# The H200 is the same chip with 141 GB of HBM3e at 4.8 TB/s (datasheet) and 60 MB of L2 (seen here: KINDS.md).
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
H200_TARGET = (H100_TARGET.replace('memory_bandwidth: 3352320000000', 'memory_bandwidth: 4800000000000')
               .replace('l2_cache_size: 52428800', 'l2_cache_size: 62914560')
               .replace('device_memory_size: 84929347584', 'device_memory_size: 150754820096')
               .replace('NVIDIA H100 80GB HBM3', 'NVIDIA H200'))
TARGETS = {'h100': (H100_TARGET, 3.35e12), 'h200': (H200_TARGET, 4.8e12)}
# The code measured: this checkout, or (--ref) a revision extracted by the parent process.
ROOT = os.environ.get('BYOL_JAX_ROOT') or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BANDWIDTH = 3.35e12  # bytes/s of the target (main() sets it from --gpu)
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


def _target(args):
  """The GPU topology (one device) of --gpu."""
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform='cuda', target_config=TARGETS[args.gpu][0], topology='1x1x1')


def augment_program(args) -> str:
  import jax
  import jax.numpy as jnp
  from byol_jax.data import augment
  device = jax.sharding.SingleDeviceSharding(_target(args).devices[0])
  cfg, n, size = augment.augment_config(args.preset), args.batch, args.size

  def views(images, indices, step):
    v1, v2 = augment.two_views(images, indices, step, 0, cfg, size)
    return jnp.concatenate([((v - 0.5) / 0.25).astype(jnp.bfloat16) for v in (v1, v2)], axis=0)

  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=device)
  return jax.jit(views).lower(spec((n, size, size, 3), jnp.uint8), spec((n,), jnp.int32),
                              spec((), jnp.int32)).compile().as_text()


def _value(text: str):
  """A --set value as the config key's type wants it: '4096' -> 4096, 'True' -> True, 'xla' -> 'xla'."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def run_config(args):
  """The config `step` and `batched` compile: the ResNet-18 benchmark step, or --config (a study's base with the
  switches of --row), changed by --set and --no_augment, with the kernel choices 'auto' makes on a GPU."""
  import ml_collections
  from byol_jax import config as config_lib, switches
  if args.config:
    path, _, arg = args.config.partition(':')
    module = config_lib.load_config_module(os.path.join(ROOT, path), os.path.basename(path))
    c = module.get_config(arg) if arg else module.get_config()
    if 'base' in c and 'rows' in c:  # a study config: its base with a row's switches
      switches.apply_switches(c.base, c.rows[args.row or next(iter(c.rows.keys()))])
      c = c.base
  else:
    c = config_lib.load_config_module(os.path.join(ROOT, 'configs', 'x.py'), 'stl10.py').get_config()
    c.train.batch_size, c.data.image_size, c.train.compute_dtype = args.batch, args.size, 'bfloat16'
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_bn_affine = 4096, 256, True
    c.predictor.solver = 'newton_schulz'
  c.model.max_pool_impl = 'taps'  # what 'auto' picks on a GPU (this process's backend is the CPU)
  c.model.conv_impl = 'xla'  # likewise
  c.train.num_devices = 1
  config_lib.override(c, {k: _value(v) for k, v in (kv.split('=', 1) for kv in args.set)})
  if args.no_augment:  # as byol_jax.bench's no_augment: the preset 'none' replaces the augmentation whole
    c.data.augment_preset, c.data.augment = 'none', ml_collections.ConfigDict()
  return config_lib.finalize(c)


def _abstract_batch(c, mesh, runs: int = 0):
  import jax
  import jax.numpy as jnp
  from byol_jax import step as step_lib
  lead = (runs,) if runs else ()
  spec = jax.sharding.PartitionSpec(*((None,) if runs else ()), step_lib.AXIS)
  split = jax.sharding.NamedSharding(mesh, spec)
  n, s = c.train.batch_size, c.data.image_size
  channels = 1 if c.data.name == 'fashion_mnist' else 3
  return dict(image=jax.ShapeDtypeStruct(lead + (n, s, s, channels), jnp.uint8, sharding=split),
              label=jax.ShapeDtypeStruct(lead + (n,), jnp.int32, sharding=split),
              index=jax.ShapeDtypeStruct(lead + (n,), jnp.int32, sharding=split)), channels


def _abstract(tree, sharding):
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def step_program(args) -> str:
  import jax
  from jax.experimental import topologies
  from byol_jax import config as config_lib, optim, state as state_lib, step as step_lib
  c = run_config(args)
  config_lib.validate(c, 1)
  mesh = topologies.make_mesh(_target(args), (1,), (step_lib.AXIS,))
  batch, channels = _abstract_batch(c, mesh)
  tx = optim.make_optimizer(c)
  networks, state = state_lib.build(c, in_channels=channels, num_classes=10, tx=tx)
  step_fn = step_lib.make_step(c, networks, tx, (0.5,) * channels, (0.25,) * channels)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return step_lib.shard_map_step(step_fn, mesh).lower(_abstract(state, replicated), batch).compile().as_text()


def batched_program(args) -> str:
  import jax
  from jax.experimental import topologies
  from byol_jax import batched, config as config_lib, step as step_lib
  if not args.config:
    args.config = 'configs/study/predictors.py'
    args.row = args.row or 'directpred'
  base = run_config(args)
  config_lib.validate(base, 1)
  configs = []
  for r in range(args.runs):  # seeds 0.. and one weight decay each: the traced values are compiled too
    c = base.copy_and_resolve_references()
    c.seed, c.optim.weight_decay = base.seed + r, base.optim.weight_decay * (1 + r)
    configs.append(c)
  mesh = topologies.make_mesh(_target(args), (1,), (step_lib.AXIS,))
  batch, channels = _abstract_batch(base, mesh, runs=args.runs)
  networks, states, values = batched.build(configs, in_channels=channels, num_classes=10)
  step_fn = batched.make_step(base, networks, (0.5,) * channels, (0.25,) * channels)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return batched.shard_map_step(step_fn, mesh).lower(
      _abstract(states, replicated), batch, _abstract(batched.as_arrays(values), replicated)).compile().as_text()


def main():
  global BANDWIDTH
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('what', choices=('augment', 'step', 'batched'))
  ap.add_argument('--gpu', choices=sorted(TARGETS), default='h200', help='the target GPU')
  ap.add_argument('--preset', default='stl10', help='augmentation preset (augment)')
  ap.add_argument('--batch', type=int, default=256, help='augment, and step without --config')
  ap.add_argument('--size', type=int, default=96, help='augment, and step without --config')
  ap.add_argument('--config', help='step/batched: a run or study config file[:arg] (study: its base)')
  ap.add_argument('--row', help='a study config\'s row whose switches apply (default: its first)')
  ap.add_argument('--runs', type=int, default=4, help='batched: runs trained together')
  ap.add_argument('--no_augment', action='store_true', help='step/batched: augmentation preset none')
  ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                  help='step/batched: a config value, e.g. --set model.max_pool_impl=xla (repeatable)')
  ap.add_argument('--top', type=int, default=10)
  ap.add_argument('--ref', help='git revision to compare with')
  ap.add_argument('--dump', help='write the optimised HLO text here')
  args = ap.parse_args()
  BANDWIDTH = TARGETS[args.gpu][1]
  if args.ref:  # the same command on the code at that revision, in a subprocess (other modules)
    with tempfile.TemporaryDirectory() as tree:
      archive = subprocess.run(['git', 'archive', args.ref, 'byol_jax', 'configs'], cwd=ROOT, check=True,
                               capture_output=True).stdout
      subprocess.run(['tar', '-x', '-C', tree], input=archive, check=True)
      argv = [a for a in sys.argv[1:] if not a.startswith('--ref')]
      subprocess.run([sys.executable, os.path.abspath(__file__), *argv], check=False,
                     env=dict(os.environ, BYOL_JAX_ROOT=tree, BYOL_JAX_LABEL=args.ref))
  if os.environ.get('BYOL_JAX_ROOT'):  # --ref's child: that revision's byol_jax, not the installed working tree
    sys.path.insert(0, ROOT)
  hlo = {'augment': augment_program, 'step': step_program, 'batched': batched_program}[args.what](args)
  if args.dump:
    with open(args.dump, 'w') as f:
      f.write(hlo)
  if args.what == 'augment':
    label = f'augment ({args.preset}) batch {args.batch}, {args.size} px'
  else:
    label = (f'{args.what}{f" x{args.runs}" if args.what == "batched" else ""} {args.config or "ResNet-18 benchmark"}'
             f'{f" row {args.row}" if args.row else ""}{" no_augment" if args.no_augment else ""} {" ".join(args.set)}')
  report(label + f', {args.gpu.upper()}, code: {os.environ.get("BYOL_JAX_LABEL", "working tree")}', hlo, args.top)


if __name__ == '__main__':
  main()
