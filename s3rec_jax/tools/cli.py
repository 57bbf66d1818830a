"""Command-line plumbing shared by s3rec-train and s3rec-evaluate: flags, errors, start-up.

Both commands follow the package's one idiom (`core/command.py`): their own flag set, one
line and status 2 for any mistake in the flags or in a `--config.FIELD=VALUE` override (a
typo, a bad value, a config file that does not load) and for any `errors.UserError` the run
raises (bad data, config or checkpoint), naming the flag, field, file or tensor, without a
Python traceback. A run stopped by non-finite numbers exits with status 1.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

from absl import flags
from ml_collections import config_flags

from s3rec_jax import configs as packaged_configs
from s3rec_jax.core import command
from s3rec_jax.core import console
from s3rec_jax.core import errors

PACKAGED_CONFIGS = packaged_configs.names()

FLAGS = command.new_flags()
CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file (e.g. configs/beauty.py) or the name of a packaged one ("
    + ", ".join(PACKAGED_CONFIGS) + "). Override any of its fields with "
    "--config.FIELD=VALUE, e.g. --config.pretrain.epochs=0; the fields are listed in "
    "s3rec_jax/configs/default.py and docs/config.md.", flag_values=FLAGS, lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.json.",
                              flag_values=FLAGS, module_name="run")
flags.mark_flags_as_required(["config", "workdir"], flag_values=FLAGS)
command.put_in_section(FLAGS, "config", "run")

# Multi-process runs (one process per host) use JAX's own distributed runtime. Each
# setting can also come from the environment: S3REC_COORDINATOR_ADDRESS,
# S3REC_NUM_PROCESSES, S3REC_PROCESS_ID.
_DISTRIBUTED = "several processes (JAX's distributed runtime)"
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, the same for every process.",
                                   flag_values=FLAGS, module_name=_DISTRIBUTED)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.",
                                      flag_values=FLAGS, module_name=_DISTRIBUTED)
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's id, 0..num_processes-1.",
                                   flag_values=FLAGS, module_name=_DISTRIBUTED)
_AUTO = flags.DEFINE_bool("distributed", False,
                          "Let JAX detect the cluster (Cloud TPU pod slices, SLURM, Open MPI).",
                          flag_values=FLAGS, module_name=_DISTRIBUTED)
_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300,
                                "Seconds to wait for every process to join.",
                                flag_values=FLAGS, module_name=_DISTRIBUTED)
_HOST_DEVICES = flags.DEFINE_integer(
    "host_devices", -1, "On a CPU-only host: split the CPU into this many XLA devices. "
    "-1 = choose (one per core: the largest count up to the cores dividing every batch size); "
    "0 = leave XLA_FLAGS alone.", flag_values=FLAGS, module_name="CPU host")

_KEY_IN_MESSAGE = re.compile(r"'([^'\\]+)\\*'")
_SUGGESTION = re.compile(r'Did you mean "([^"]+)"')


def _prog() -> str:
  return os.path.basename(sys.argv[0]) or "s3rec_jax"


def _overrides(argv: Sequence[str]) -> list[str]:
  """The dotted field paths of the --config.FIELD=VALUE overrides in argv."""
  paths = []
  for arg in argv:
    match = re.match(r"--?config\.([^=\s]+)", arg)
    if match:
      paths.append(match.group(1))
  return paths


def _config_file(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    match = re.match(r"--?config=(.*)", arg)
    if match:
      return match.group(1)
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _unknown_field_message(error: Exception, argv: Sequence[str]) -> str | None:
  """Names the override that asked for a field the config lacks, with ml_collections' hint."""
  text = str(error)
  keys = _KEY_IN_MESSAGE.findall(text)
  key = keys[0] if keys else text.strip("'\"")
  suggestion = _SUGGESTION.search(text.replace('\\"', '"'))
  for path in _overrides(argv):
    parts = path.split(".")
    if key in parts:
      parent = ".".join(["config"] + parts[:parts.index(key)])
      hint = f'; did you mean "{suggestion.group(1)}"?' if suggestion else ""
      return f"--config.{path}: {parent} has no field {key!r}{hint}"
  return None


def _config_load_message(error: Exception, argv: Sequence[str]) -> str:
  path = _config_file(argv)
  if path is not None and not os.path.exists(path):
    return f"--config={path}: no such config file"
  cause = error.__cause__ if isinstance(error, OSError) and error.__cause__ is not None else error
  if isinstance(cause, SyntaxError):
    detail = f"SyntaxError at line {cause.lineno}: {cause.msg}"
  else:
    detail = f"{type(cause).__name__}: {cause}"
  return f"--config={path}: cannot load the config file ({detail})"


def _explain(error: Exception, argv: Sequence[str]) -> str:
  """One line for a config override or config file that fails while parsing or loading."""
  if isinstance(error, (AttributeError, KeyError)):
    unknown = _unknown_field_message(error, argv)
    if unknown:
      return unknown
  return _config_load_message(error, argv)


def main(body: Callable[[object, str], "int | None"], argv: Sequence[str] | None,
         doc: str) -> int:
  """Runs a command taking --config and --workdir: body(config, workdir) after start-up."""
  argv = resolve_config_names(list(sys.argv[1:] if argv is None else argv))
  prog = _prog()
  # ml_collections reads the overrides from sys.argv and defines a flag for each: start from
  # the command's own flags, so that one process can run commands one after another.
  saved_argv = sys.argv
  sys.argv = [sys.argv[0] if sys.argv else prog, *argv]
  for name in [name for name in FLAGS if name.startswith("config.")]:
    delattr(FLAGS, name)

  def run_body(words: list[str]) -> int | None:
    command.only_words(words, 0)
    try:
      # A config file that failed to load raises only when it is read.
      config = CONFIG.value
      getattr(config, "seed", None)
    except Exception as e:  # pylint: disable=broad-except
      raise errors.UsageError(_explain(e, argv)) from None
    start(config)
    from s3rec_jax.training import loop  # pylint: disable=g-import-not-at-top
    try:
      return body(config, WORKDIR.value)
    except loop.NumericalError as e:
      # Not bad input, but a clear outcome: the message names epoch, step and objective.
      errors.report(prog, e)
      return 1

  try:
    return command.run(prog, FLAGS, run_body, argv, doc=doc, explain=_explain)
  finally:
    sys.argv = saved_argv


def resolve_config_names(argv: Sequence[str]) -> list[str]:
  """--config=NAME (no folder, no .py, no such file here) -> the packaged config's path."""
  out = list(argv)
  for i, arg in enumerate(out):
    match = re.match(r"(--?config=)([^/:]+)(:.*)?$", arg)
    if match and not match.group(2).endswith(".py") and not os.path.isfile(match.group(2)):
      path = packaged_configs.path_of(match.group(2))
      if path is not None:
        out[i] = match.group(1) + path + (match.group(3) or "")
  return out


def start(config) -> None:
  """Start-up, in this order: quiet library logging; the config's own checks (no JAX);
  CPU host devices and the distributed runtime (before anything asks JAX for its backend);
  then the checks that ask the backend (native kernels)."""
  console.quiet_library_logging()
  from s3rec_jax.core import parallel  # pylint: disable=g-import-not-at-top
  from s3rec_jax.ops import methods  # pylint: disable=g-import-not-at-top
  from s3rec_jax.training import config_validation  # pylint: disable=g-import-not-at-top
  config_validation.validate(config)
  if parallel.cpu_device_count_flag() is None and not parallel.has_accelerator_plugin():
    count = _HOST_DEVICES.value
    if count < 0:
      count = parallel.auto_host_devices(
          (config.pretrain.batch_size, config.finetune.batch_size, config.eval.batch_size))
      print(f"CPU host: using {count} XLA host devices (--host_devices to change)", flush=True)
    if count > 0:
      parallel.force_host_devices(count)
  env = os.environ.get

  def as_int(name):
    value = env(name)
    if value is None:
      return None
    try:
      return int(value)
    except ValueError:
      raise errors.UserError(f"environment variable {name}={value!r}: expected an integer") from None

  parallel.initialize_distributed(
      _COORDINATOR.value or env("S3REC_COORDINATOR_ADDRESS"),
      _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else as_int("S3REC_NUM_PROCESSES"),
      _PROCESS_ID.value if _PROCESS_ID.value is not None else as_int("S3REC_PROCESS_ID"),
      auto=_AUTO.value, timeout_seconds=_TIMEOUT.value)
  methods.check_config(config)
