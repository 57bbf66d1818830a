"""Native kernels: XLA FFI handlers compiled on first use for the machine at hand.

A kernel is one C++ file beside this module. `load(name)` compiles it with the
system's C++ compiler (`$CXX`, else g++ or c++) for this CPU (-march=native, or
`$S3REC_KERNEL_MARCH`),
caches the shared library under `$S3REC_KERNEL_CACHE` (default
~/.cache/s3rec_jax/ops/kernels) keyed by the source, the flags, the CPU and the
jaxlib version, and registers its handler with XLA for the CPU platform.
Compiling takes a few seconds once; later processes load the cached library.
Nothing here runs unless a kernel is asked for by name
(`eval.ranking=fused_cpu`, `settings.next_item.ce_method=fused_cpu`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

import jax

_HERE = os.path.dirname(os.path.abspath(__file__))
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")


def _march() -> str:
  """The target CPU: this one (`native`), or `$S3REC_KERNEL_MARCH` (e.g. x86-64-v3 for a
  fleet of AVX2 machines; haswell or x86-64 to build the AVX2 or portable paths here)."""
  return os.environ.get("S3REC_KERNEL_MARCH") or "native"

# name -> (source file, {exported handler symbol: XLA target name})
KERNELS = {
    "full_ranking_cpu": ("full_ranking_cpu.cc",
                         {"S3RecFullRankingCpu": "s3rec_full_ranking_cpu"}),
    "catalogue_softmax_cpu": ("catalogue_softmax_cpu.cc",
                              {"S3RecCatalogueLogSumExpCpu": "s3rec_catalogue_lse_cpu",
                               "S3RecCatalogueLogSumExpGradCpu": "s3rec_catalogue_lse_grad_cpu"}),
}

_lock = threading.Lock()
_loaded: dict[str, tuple[str, ...]] = {}


class KernelUnavailable(RuntimeError):
  """The kernel cannot be built or loaded here (no compiler, or it failed)."""


def compiler() -> str | None:
  """The C++ compiler to use, or None."""
  for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    if candidate and shutil.which(candidate):
      return shutil.which(candidate)
  return None


def _cpu_signature() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      lines = [l for l in f if l.startswith(("model name", "flags"))][:2]
  except OSError:
    lines = []
  return "".join(lines)


def _cache_dir() -> str:
  return os.environ.get("S3REC_KERNEL_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "s3rec_jax", "kernels"))


def _build(source: str, cxx: str) -> str:
  import jaxlib  # pylint: disable=import-outside-toplevel
  # The source and every header beside it (the kernels share cpu_tiles.h).
  folder = os.path.dirname(source)
  text = b""
  for name in [os.path.basename(source)] + sorted(
      n for n in os.listdir(folder) if n.endswith(".h")):
    with open(os.path.join(folder, name), "rb") as f:
      text += name.encode() + b"\0" + f.read()
  key = hashlib.sha256(b"\0".join([
      text, " ".join(_FLAGS + (_march(),)).encode(), _cpu_signature().encode(),
      jaxlib.__version__.encode(), cxx.encode()])).hexdigest()[:16]
  name = os.path.splitext(os.path.basename(source))[0]
  cache = _cache_dir()
  library = os.path.join(cache, f"{name}-{key}.so")
  if os.path.exists(library):
    return library
  try:
    os.makedirs(cache, exist_ok=True)
    # Compile to a temporary name in the same folder, then rename: a concurrent
    # or killed build never leaves a half-written library under the final name.
    fd, partial = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=cache)
  except OSError as e:
    raise KernelUnavailable(f"cannot write the kernel cache {cache} ({e.strerror}); set "
                            "S3REC_KERNEL_CACHE to a writable folder") from None
  os.close(fd)
  command = [cxx, *_FLAGS, f"-march={_march()}", "-I", jax.ffi.include_dir(), "-I", folder,
             source, "-o", partial]
  try:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
      errors = [l for l in result.stderr.splitlines() if "error" in l] or [result.stderr.strip()]
      raise KernelUnavailable(
          f"compiling {os.path.basename(source)} failed: {' | '.join(errors)[:2000]}")
    os.replace(partial, library)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return library


def load(name: str) -> tuple[str, ...]:
  """Builds (once) and registers kernel `name`'s handlers for the CPU; returns their XLA
  target names, in the order of KERNELS."""
  with _lock:
    if name in _loaded:
      return _loaded[name]
    if name not in KERNELS:
      raise KeyError(f"unknown kernel {name!r}; known: {sorted(KERNELS)}")
    source, handlers = KERNELS[name]
    cxx = compiler()
    if cxx is None:
      raise KernelUnavailable(
          f"kernel {name!r} needs a C++ compiler (set CXX, or install g++); none was found")
    library = ctypes.cdll.LoadLibrary(_build(os.path.join(_HERE, source), cxx))
    for symbol, target in handlers.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform="cpu")
    _loaded[name] = tuple(handlers.values())
    return _loaded[name]


def threads_per_device() -> int:
  """Threads a kernel call may use: the cores shared out over this process's devices (on 2
  cores, 2 for one device, 1 for two or more: each device's program then has a core), or
  `$S3REC_KERNEL_THREADS`. Read when a call is traced."""
  if os.environ.get("S3REC_KERNEL_THREADS"):
    return max(1, int(os.environ["S3REC_KERNEL_THREADS"]))
  return max(1, (os.cpu_count() or 1) // max(1, jax.local_device_count()))


def available(name: str) -> bool:
  """Whether kernel `name` builds and loads here (builds it if needed)."""
  try:
    load(name)
    return True
  except KernelUnavailable:
    return False
