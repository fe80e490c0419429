"""GPU kernel time per step from a Perfetto trace written by `python -m byol_jax.bench --profile_dir=...`.

  python scripts/gpu/trace_summary.py TRACE.json.gz [--steps=5] [--top=15]

Groups the GPU kernels into the categories of docs/records/benchmarks_log_2026-11.md (stem convolution, other convolutions,
max-pool, matrix products, XLA fusions, memsets) and lists the most expensive kernels.
"""
import argparse
import collections
import gzip
import json


def gpu_kernels(path):
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  processes = {e['pid']: e['args']['name'] for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  return [e for e in events if e.get('ph') == 'X' and 'GPU' in processes.get(e['pid'], '')]


def category(name, hlo_op, stem_ops):
  if hlo_op in stem_ops:
    return 'stem convolution (few input channels: slow generic cuDNN kernels + channel padding)'
  if 'cudnn' in hlo_op or 'xmma' in name and any(k in name for k in ('fprop', 'dgrad', 'wgrad')):
    return 'other convolutions (cuDNN)'
  if 'reduce_window' in name or 'scatter' in name:
    return 'max-pool forward + backward (reduce_window, select-and-scatter)'
  if 'gemm' in name.lower():
    return 'matrix products (cuBLAS / cuBLASLt)'
  if 'Memset' in name or 'Memcpy' in name:
    return 'memsets / copies'
  return 'XLA fusions (BatchNorm, ReLU, adds, optimizer, EMA, augmentation)'


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('trace')
  ap.add_argument('--steps', type=int, default=5, help='steps the trace holds (bench records 5)')
  ap.add_argument('--top', type=int, default=15)
  a = ap.parse_args()
  kernels = gpu_kernels(a.trace)
  stem_ops = {e['args'].get('hlo_op') for e in kernels
              if any(k in e['name'] for k in ('cutlass__5x_cudnn', 'nhwcAddPadding'))}
  by_category, by_kernel, calls = collections.Counter(), collections.Counter(), collections.Counter()
  for e in kernels:
    op = e.get('args', {}).get('hlo_op', '')
    by_category[category(e['name'], op, stem_ops)] += e['dur']
    by_kernel[e['name'][:90]] += e['dur']
    calls[e['name'][:90]] += 1
  total = sum(by_category.values())
  print(f'GPU kernel time: {total / a.steps / 1e3:.2f} ms per step')
  for name, us in by_category.most_common():
    print(f'  {us / a.steps / 1e3:6.2f} ms  {100 * us / total:5.1f}%  {name}')
  print(f'top {a.top} kernels:')
  for name, us in by_kernel.most_common(a.top):
    print(f'  {us / a.steps / 1e3:6.3f} ms  x{calls[name] // a.steps:<4d} {name}')


if __name__ == '__main__':
  main()
