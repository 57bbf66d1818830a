"""How an op computes: "scan" (XLA, on every backend) or "fused_cpu" (a native CPU kernel).

The two give the same losses and metrics up to float rounding; the choice is a config field
(eval.ranking, settings.next_item.ce_method, recommend --ranking). This module is the one
place that knows which native kernel serves which op and when it can run.
"""

from __future__ import annotations

import jax

from s3rec_jax.core import errors
from s3rec_jax.ops import kernels

SCAN = "scan"
FUSED_CPU = "fused_cpu"
METHODS = (SCAN, FUSED_CPU)

# The native kernel behind each op's fused_cpu method (s3rec_jax/ops/kernels).
KERNEL_OF = {"ranking": "full_ranking_cpu", "catalogue_softmax": "catalogue_softmax_cpu"}
# The fused catalogue softmax works on hidden sizes that fill its register tiles.
FUSED_HIDDEN_MULTIPLE = 16


class MethodError(errors.UserError):
  pass


def check(field: str, method: str, op: str, *, backend: bool = True) -> None:
  """`method` is one of METHODS; with `backend`, fused_cpu also needs CPU devices and its
  kernel (built here, once).

  `backend` asks JAX for its backend: do it after the host devices and the distributed
  runtime are set (the names alone are checked before).
  """
  if method not in METHODS:
    raise MethodError(f"{field}={method!r} is unknown; expected " + " or ".join(METHODS))
  if method != FUSED_CPU or not backend:
    return
  if jax.default_backend() != "cpu":
    raise MethodError(f"{field}='{FUSED_CPU}' runs on CPU devices only, and these are "
                      f"{jax.default_backend()}; use '{SCAN}'")
  try:
    kernels.load(KERNEL_OF[op])
  except kernels.KernelUnavailable as e:
    raise MethodError(f"{field}='{FUSED_CPU}': {e}") from None


def check_config(config, *, backend: bool = True) -> None:
  """The config's method choices (eval.ranking, settings.next_item.ce_method) are known and
  fit the model; with `backend`, they can run here (see `check`)."""
  check("config.eval.ranking", config.eval.get("ranking", SCAN), "ranking", backend=backend)
  ce_method = config.settings.next_item.get("ce_method", SCAN)
  check("config.settings.next_item.ce_method", ce_method, "catalogue_softmax", backend=backend)
  if ce_method == FUSED_CPU:
    if config.model.compute_dtype != "float32":
      raise MethodError(f"config.settings.next_item.ce_method='{FUSED_CPU}' computes in float32; "
                        f"it does not combine with model.compute_dtype="
                        f"{config.model.compute_dtype!r}")
    if config.model.hidden_size % FUSED_HIDDEN_MULTIPLE:
      raise MethodError(f"config.settings.next_item.ce_method='{FUSED_CPU}' needs "
                        f"model.hidden_size to be a multiple of {FUSED_HIDDEN_MULTIPLE}, got "
                        f"{config.model.hidden_size}")
