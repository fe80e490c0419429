"""The CPU convolutions: XLA:CPU's slow cases as matrix products (conv.py) and compiled C++ kernels (kernels.py).

models/resnet.py's `model.conv_impl` picks among them: 'matmul_small' is conv.conv_general_dilated, 'native'
conv.conv_general_dilated_native (the same with kernels.py's compiled convolutions where they are faster), 'xla'
XLA's own. Every choice computes the same function; only the speed differs. Importing this package imports no
JAX (config.set_cpu_devices reads `cpu_cores` before JAX starts).
"""
import functools
import os


def cpu_cores() -> int:
  """The cores this process may run on (the affinity mask where the OS has one; macOS has not)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)



@functools.lru_cache(maxsize=None)
def cpu_description() -> str:
  """The CPU's model and feature flags (Linux's /proc/cpuinfo; '' where there is none, e.g. macOS): what
  `-march=native` compiles for."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [line.strip() for line in f if line.startswith(('model name', 'flags', 'Features', 'CPU part'))]
  except OSError:
    return ''
  return '\n'.join(dict.fromkeys(lines))


def cpu_has_avx2() -> bool:
  """Whether the CPU has AVX2. The compiled kernels hold 16-float vectors in registers with AVX2 or AVX-512;
  narrower vector units would spill them."""
  return any(line.startswith('flags') and 'avx2' in line.split() for line in cpu_description().splitlines())
