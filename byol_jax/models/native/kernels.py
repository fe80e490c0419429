"""CPU kernels XLA:CPU runs slowly, as XLA FFI custom calls compiled on first use.

`conv_weight_grad(x, dy, kernel_hw, strides, pads)`: the weight gradient of an NHWC / HWIO convolution
(conv_wgrad.cc); `conv(x, w, strides, pads)`: the convolution itself (conv_fwd.cc); common.h holds their
vectors and thread-pool loop. They are compiled once per machine with the system's C++ compiler
(`-O3 -march=native`, so AVX2 or AVX-512 as the CPU has) into `$BYOL_JAX_CACHE` (default
`~/.cache/byol_jax/native/<hash of sources, flags, compiler, jax and the CPU>/`), written atomically, and
registered with XLA for the CPU platform. `available()` is False, with one warning saying why, when there
is no compiler or the build fails; callers then keep XLA's own computation. `BYOL_JAX_NATIVE=0` turns it
off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax.models.native import cpu_cores, cpu_description

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(_HERE, name) for name in ('conv_wgrad.cc', 'conv_fwd.cc'))
HEADERS = (os.path.join(_HERE, 'common.h'),)
TARGET = 'byol_jax_conv_weight_grad'
CONV_TARGET = 'byol_jax_conv'
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC')


def _compiler():
  return os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++') or shutil.which('clang++')


def _cache_dir() -> str:
  root = os.environ.get('BYOL_JAX_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'byol_jax')
  return os.path.join(root, 'native')


def _build(compiler: str) -> str:
  """The path of the compiled library (built now if this source, compiler and jaxlib have none yet)."""
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True, check=True).stdout
  key = hashlib.sha256(repr((FLAGS, version, jax.__version__, cpu_description() or platform.machine())).encode())
  for source in SOURCES + HEADERS:
    with open(source, 'rb') as f:
      key.update(f.read())
  folder = os.path.join(_cache_dir(), key.hexdigest()[:16])
  library = os.path.join(folder, 'byol_jax_native.so')
  if os.path.exists(library):
    return library
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=folder)
  os.close(fd)
  try:
    subprocess.run([compiler, *FLAGS, f'-I{jax.ffi.include_dir()}', *SOURCES, '-o', tmp],
                   capture_output=True, text=True, check=True)
    os.replace(tmp, library)  # atomic: a concurrent process sees no library or a whole one
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return library


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether the kernels are built and registered (once per process; a failure warns once)."""
  if os.environ.get('BYOL_JAX_NATIVE', '1') == '0':
    return False
  compiler = _compiler()
  if compiler is None:
    logging.warning('byol_jax: no C++ compiler (g++); CPU convolution weight gradients use XLA\'s (slower). '
                    'Install one (apt-get install g++) for the fast CPU path.')
    return False
  try:
    library = ctypes.cdll.LoadLibrary(_build(compiler))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.ConvWeightGrad), platform='cpu')
    jax.ffi.register_ffi_target(CONV_TARGET, jax.ffi.pycapsule(library.Conv), platform='cpu')
  except (OSError, subprocess.CalledProcessError, AttributeError) as e:
    detail = getattr(e, 'stderr', '') or str(e)
    logging.warning('byol_jax: building the CPU kernels failed; XLA\'s weight gradients are used. %s', detail[-2000:])
    return False
  return True


def _parallel() -> int:
  """1 if the kernels should use XLA's intra-op threads: when there are fewer JAX CPU devices than cores.
  With one device per core (the 2-device default on 2 cores) each device's kernels run on its own thread;
  threads there would only contend with the other device's."""
  if os.environ.get('BYOL_JAX_NATIVE_THREADS'):
    return int(os.environ['BYOL_JAX_NATIVE_THREADS'] != '0')
  return int(jax.local_device_count('cpu') < cpu_cores())


def supports(x, dy, w) -> bool:
  """The cases conv_weight_grad computes: float32, NHWC, output channels a multiple of 16."""
  return x.dtype == dy.dtype == w.dtype == jnp.float32 and w.shape[-1] % 16 == 0


def conv_weight_grad(x, dy, kernel_hw, strides, pads):
  """dW [kh, kw, ci, co] of `lax.conv_general_dilated(x, W, strides, pads, ('NHWC', 'HWIO', 'NHWC'))` given
  its output gradient dy; runs on CPU only (see `available` and `supports`)."""
  if not available():
    raise RuntimeError('byol_jax CPU kernels are not available (see the warning above); use XLA\'s gradient')
  kh, kw = kernel_hw
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[-1], dy.shape[-1]), jnp.float32)
  call = jax.ffi.ffi_call(TARGET, out, vmap_method='sequential')
  return call(x, dy, sh=np.int64(strides[0]), sw=np.int64(strides[1]), ph=np.int64(pads[0][0]),
              pw=np.int64(pads[1][0]), parallel=np.int64(_parallel()))


def conv_supports(x, w) -> bool:
  """The cases `conv` computes: float32, output channels a multiple of 32 (the register block; AVX2 builds
  need only 16, 32 is asked of both so that one rule holds everywhere)."""
  return x.dtype == w.dtype == jnp.float32 and w.shape[-1] % 32 == 0


def conv(x, w, strides, pads):
  """`lax.conv_general_dilated(x, w, strides, pads, ('NHWC', 'HWIO', 'NHWC'))` by the compiled kernel (CPU only),
  which reads x as zero outside its borders (no padded copy of x)."""
  if not available():
    raise RuntimeError('byol_jax CPU kernels are not available (see the warning above); use XLA\'s convolution')
  kh, kw, _, cout = w.shape
  if x.shape[-1] < 8:
    # Few input channels (a stem): a tap's work is too short for the kernel's border handling, so XLA pads.
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    pads = ((0, 0), (0, 0))
  (top, bottom), (left, right) = pads
  ho = (x.shape[1] + top + bottom - kh) // strides[0] + 1
  wo = (x.shape[2] + left + right - kw) // strides[1] + 1
  out = jax.ShapeDtypeStruct((x.shape[0], ho, wo, cout), jnp.float32)
  return jax.ffi.ffi_call(CONV_TARGET, out, vmap_method='sequential')(
      x, w, sh=np.int64(strides[0]), sw=np.int64(strides[1]), ph=np.int64(top), pw=np.int64(left),
      parallel=np.int64(_parallel()))
