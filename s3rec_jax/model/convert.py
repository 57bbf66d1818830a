"""Imports the reference's released PyTorch checkpoints without PyTorch.

The released `NAME-epochs-N.pt` files use torch 1.1's legacy serialization: a
run of pickles (magic number, protocol version, system info, the state_dict,
the storage keys) followed by the raw storage bytes. This module reads that
format with a restricted unpickler that resolves only the handful of globals a
state_dict needs, so a malicious file cannot run code, maps the reference's
tensor names onto this project's parameter tree and writes the result as a
pre-training checkpoint.

Usage:

  s3rec-convert --input LastFM-epochs-150.pt --output DIR \
      --item_size 3648 --attribute_size 389
  s3rec-convert --input LastFM-epochs-150.pt --output DIR \
      --dataset LastFM --data_dir "$(s3rec-data path)"
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import io
import os
import pickle
import re
import struct
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from absl import flags

from s3rec_jax.core import command
from s3rec_jax.core import errors
from s3rec_jax.model.encoder import ModelConfig, init_params

PROG = "s3rec-convert"
MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001

# The pre-training heads of the reference, in its order; its tensors are named
# `{name}_norm.*` although they are dense layers.
REFERENCE_HEAD_NAMES = ("aap", "mip", "map", "sp")

# Storage classes a state_dict may name, with the element type of their data.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}

_MAX_PROBLEMS_SHOWN = 8


class CheckpointFormatError(errors.UserError):
  """A checkpoint file is malformed, unsafe or does not fit the model config."""


class _Malformed(Exception):
  """Raised inside unpickling callbacks; re-raised with the file name attached."""


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  """Stand-in for a `torch.*Storage` class: only its element type matters."""
  name: str
  dtype: np.dtype


class _Storage:
  """A storage declared by a persistent id; its data is read after the pickles."""
  __slots__ = ("key", "storage_type", "numel", "data")

  def __init__(self, key: str, storage_type: _StorageType, numel: int):
    self.key = key
    self.storage_type = storage_type
    self.numel = numel
    self.data: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _StorageView:
  """A storage as a tensor sees it: a window [offset, offset + numel) of a root storage."""
  root: _Storage
  offset: int
  numel: int


@dataclasses.dataclass(frozen=True)
class _PendingTensor:
  """A tensor whose storage bytes have not been read yet."""
  storage: _StorageView
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x: Any, what: str) -> tuple[int, ...]:
  if not isinstance(x, tuple) or not all(_is_int(v) and v >= 0 for v in x):
    raise _Malformed(f"tensor {what} must be a tuple of non-negative ints, found {x!r}")
  return x


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _PendingTensor:
  """Our own stand-in for torch._utils._rebuild_tensor_v2; only records the layout."""
  del requires_grad, backward_hooks, metadata  # Irrelevant for inference weights.
  if not isinstance(storage, _StorageView):
    raise _Malformed("tensor storage must be a persistent storage id, found "
                     f"{type(storage).__name__}")
  if not _is_int(storage_offset) or storage_offset < 0:
    raise _Malformed(f"tensor storage offset must be a non-negative int, found {storage_offset!r}")
  size = _int_tuple(size, "size")
  stride = _int_tuple(stride, "stride")
  if len(size) != len(stride):
    raise _Malformed(f"tensor size {size} and stride {stride} differ in rank")
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False,
                       backward_hooks: Any = None) -> _PendingTensor:
  """Stand-in for torch._utils._rebuild_parameter: a Parameter is just its tensor here."""
  del requires_grad, backward_hooks
  if not isinstance(data, _PendingTensor):
    raise _Malformed(f"parameter data must be a tensor, found {type(data).__name__}")
  return data


def _state_dict_globals() -> dict[tuple[str, str], Any]:
  """The only globals a legacy state_dict pickle may name, mapped to safe stand-ins."""
  allowed: dict[tuple[str, str], Any] = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }
  for name, dtype in _STORAGE_DTYPES.items():
    allowed[("torch", name)] = _StorageType(name, dtype)
  return allowed


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only whitelisted globals; storages come in as persistent ids."""

  def __init__(self, file: io.BytesIO, path: str, section: str,
               allowed: Mapping[tuple[str, str], Any],
               storages: dict[str, _Storage] | None):
    super().__init__(file)
    self._path = path
    self._section = section
    self._allowed = allowed
    # None: persistent ids are not legal in this section.
    self._storages = storages
    self._views: dict[str, _StorageView] = {}

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._allowed[(module, name)]
    except KeyError:
      hint = ""
      if self._section == "state_dict":
        hint = (" (only tensors in a state_dict are supported; if this file holds a whole "
                "pickled model, re-save `model.state_dict()` with torch)")
      raise CheckpointFormatError(
          f"{self._path}: refusing to load global '{module}.{name}' in the {self._section} "
          f"pickle; it is not one of the globals a state_dict needs{hint}") from None

  def persistent_load(self, pid: Any) -> _StorageView:
    if self._storages is None:
      raise _Malformed(f"unexpected persistent id {pid!r}")
    if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage":
      raise _Malformed(f"unsupported persistent id {pid!r}; expected "
                       "('storage', type, key, location, numel, view_metadata)")
    _, storage_type, key, _location, numel, view_metadata = pid
    if not isinstance(storage_type, _StorageType):
      raise _Malformed(f"persistent id {pid!r} does not name a storage type")
    if not isinstance(key, str) or not _is_int(numel) or numel < 0:
      raise _Malformed(f"malformed storage id {pid!r}")
    root = self._storages.get(key)
    if root is None:
      root = self._storages[key] = _Storage(key, storage_type, numel)
    elif root.storage_type != storage_type or root.numel != numel:
      raise _Malformed(f"storage {key} is declared twice with different types or sizes")
    if view_metadata is None:
      return _StorageView(root, 0, numel)
    # Old torch could serialise a slice of a storage as a view of its root.
    if (not isinstance(view_metadata, tuple) or len(view_metadata) != 3
        or not isinstance(view_metadata[0], str)
        or not all(_is_int(v) and v >= 0 for v in view_metadata[1:])):
      raise _Malformed(f"malformed storage view metadata {view_metadata!r}")
    view_key, offset, view_numel = view_metadata
    if offset + view_numel > numel:
      raise _Malformed(f"storage view {view_key} [{offset}, {offset + view_numel}) lies outside "
                       f"its root storage {key} of {numel} elements")
    view = self._views.setdefault(view_key, _StorageView(root, offset, view_numel))
    if view != _StorageView(root, offset, view_numel):
      raise _Malformed(f"storage view {view_key} is declared twice differently")
    return view


def _load_pickle(buffer: io.BytesIO, path: str, section: str,
                 allowed: Mapping[tuple[str, str], Any] | None = None,
                 storages: dict[str, _Storage] | None = None) -> Any:
  unpickler = _RestrictedUnpickler(buffer, path, section, allowed or {}, storages)
  try:
    return unpickler.load()
  except CheckpointFormatError:
    raise
  except _Malformed as e:
    raise CheckpointFormatError(f"{path}: malformed {section} pickle: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    # Any failure of the unpickler itself means the bytes are not what we expect.
    raise CheckpointFormatError(
        f"{path}: cannot read the {section} pickle ({type(e).__name__}: {e}); "
        "is this a torch 1.1 legacy checkpoint?") from None


def _materialize(name: str, tensor: _PendingTensor, path: str) -> np.ndarray:
  """Copies a tensor out of its storage, honouring offset, size and stride."""
  view = tensor.storage
  data = view.root.data
  assert data is not None  # Every referenced storage is read before this.
  dtype = data.dtype.newbyteorder("=")
  if any(s == 0 for s in tensor.size):
    return np.zeros(tensor.size, dtype)
  # The furthest element the tensor reaches must lie inside its storage view.
  last = tensor.offset + sum((s - 1) * st for s, st in zip(tensor.size, tensor.stride))
  if last >= view.numel:
    raise CheckpointFormatError(
        f"{path}: tensor '{name}' (offset {tensor.offset}, size {tensor.size}, stride "
        f"{tensor.stride}) reaches element {last} of a storage of {view.numel} elements")
  start = view.offset + tensor.offset
  strided = np.lib.stride_tricks.as_strided(
      data[start:], shape=tensor.size,
      strides=tuple(st * data.itemsize for st in tensor.stride), writeable=False)
  # order='C': a fresh row-major copy even when the strides describe a transposed view.
  return np.array(strided, dtype=dtype, copy=True, order="C")


def read_torch_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch 1.1 legacy-format state_dict file into name -> numpy array (file order).

  No torch is needed and no code from the file runs: only the globals a
  state_dict needs are resolved, to stand-ins. Raises CheckpointFormatError on
  anything else.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"PK":
    raise CheckpointFormatError(
        f"{path}: this is a zip-based torch checkpoint (torch >= 1.6), not the legacy format "
        "of the reference's released files")
  buffer = io.BytesIO(raw)

  magic = _load_pickle(buffer, path, "magic number")
  if not _is_int(magic) or magic != MAGIC_NUMBER:
    raise CheckpointFormatError(
        f"{path}: not a torch legacy checkpoint (magic number {magic!r} != {MAGIC_NUMBER:#x})")
  version = _load_pickle(buffer, path, "protocol version")
  if version != PROTOCOL_VERSION:
    raise CheckpointFormatError(
        f"{path}: unsupported torch legacy protocol version {version!r} "
        f"(expected {PROTOCOL_VERSION})")
  sys_info = _load_pickle(buffer, path, "system info")
  if not isinstance(sys_info, dict):
    raise CheckpointFormatError(f"{path}: the system info is not a dict: {sys_info!r}")
  if sys_info.get("little_endian") is not True:
    raise CheckpointFormatError(f"{path}: only little-endian checkpoints are supported "
                                f"(system info: {sys_info!r})")

  storages: dict[str, _Storage] = {}
  state = _load_pickle(buffer, path, "state_dict", _state_dict_globals(), storages)
  if not isinstance(state, dict):
    raise CheckpointFormatError(
        f"{path}: expected a state_dict (a dict of tensors), found {type(state).__name__}")
  for name, value in state.items():
    if not isinstance(name, str) or not isinstance(value, _PendingTensor):
      raise CheckpointFormatError(
          f"{path}: state_dict entry {name!r} is a {type(value).__name__}, not a tensor")

  keys = _load_pickle(buffer, path, "storage keys")
  if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
    raise CheckpointFormatError(f"{path}: the storage key list is malformed")
  if len(set(keys)) != len(keys) or set(keys) != set(storages):
    missing = sorted(set(storages) - set(keys))
    extra = sorted(set(keys) - set(storages))
    raise CheckpointFormatError(
        f"{path}: storage keys do not match the storages the tensors use "
        f"(without data: {missing}, unused or repeated: {extra or 'repeated keys'})")

  # The raw data: for each key, an int64 element count then the elements.
  pos = buffer.tell()
  for key in keys:
    storage = storages[key]
    if pos + 8 > len(raw):
      raise CheckpointFormatError(f"{path}: file ends before the data of storage {key}")
    (count,) = struct.unpack_from("<q", raw, pos)
    if count != storage.numel:
      raise CheckpointFormatError(f"{path}: storage {key} holds {count} elements but was "
                                  f"declared with {storage.numel}")
    dtype = storage.storage_type.dtype
    end = pos + 8 + count * dtype.itemsize
    if end > len(raw):
      raise CheckpointFormatError(f"{path}: file is truncated inside the data of storage {key} "
                                  f"({len(raw)} bytes, {end} needed)")
    storage.data = np.frombuffer(raw, dtype=dtype, count=count, offset=pos + 8)
    pos = end
  if pos != len(raw):
    raise CheckpointFormatError(f"{path}: {len(raw) - pos} unexpected bytes after the last "
                                "storage")
  return {name: _materialize(name, tensor, path) for name, tensor in state.items()}


def _layer_index(part: str) -> int:
  match = re.fullmatch(r"layer_(\d+)", part)
  if match is None:
    raise ValueError(f"unexpected encoder sub-module {part!r}")
  return int(match.group(1))


def _reference_name(path: tuple[str, ...]) -> str:
  """The reference's tensor name for a parameter path of this project's tree."""
  torch_param = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
  leaf = torch_param[path[-1]]
  group = path[0]
  if group in ("item_embeddings", "attribute_embeddings", "position_embeddings"):
    return f"{group}.{leaf}"
  if group == "input_norm":
    return f"LayerNorm.{leaf}"
  if group == "heads":
    return f"{path[1]}_norm.{leaf}"
  if group == "encoder":
    prefix = f"item_encoder.layer.{_layer_index(path[1])}"
    block = path[2]
    if block == "attention":
      dense = "dense" if path[3] == "output" else path[3]
      return f"{prefix}.attention.{dense}.{leaf}"
    if block == "attention_norm":
      return f"{prefix}.attention.LayerNorm.{leaf}"
    if block == "feed_forward":
      return f"{prefix}.intermediate.{path[3]}.{leaf}"
    if block == "feed_forward_norm":
      return f"{prefix}.intermediate.LayerNorm.{leaf}"
  raise ValueError(f"no reference name for parameter {'/'.join(path)}")


def _path_names(key_path: Sequence[Any]) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in key_path)


def reference_config(config: ModelConfig) -> ModelConfig:
  """`config` with the reference's four heads when it names none."""
  if config.head_names:
    return config
  return dataclasses.replace(config, head_names=REFERENCE_HEAD_NAMES)


def _size_hints(state_dict: Mapping[str, np.ndarray], config: ModelConfig) -> list[str]:
  """Explains a mismatch by what the checkpoint's shapes imply."""
  hints = []

  def rows(name: str) -> int | None:
    value = state_dict.get(name)
    return value.shape[0] if value is not None and value.ndim == 2 else None

  items, attributes = rows("item_embeddings.weight"), rows("attribute_embeddings.weight")
  if (items is not None and items != config.item_size) or (
      attributes is not None and attributes != config.attribute_size):
    hints.append(
        f"the checkpoint has item_size={items}, attribute_size={attributes} but the config "
        f"expects item_size={config.item_size}, attribute_size={config.attribute_size}: "
        "is this checkpoint for another dataset?")
  positions = rows("position_embeddings.weight")
  if positions is not None and positions != config.max_len:
    hints.append(f"the checkpoint has max_len={positions}, the config max_len={config.max_len}")
  embeddings = state_dict.get("item_embeddings.weight")
  if embeddings is not None and embeddings.ndim == 2 and embeddings.shape[1] != config.hidden_size:
    hints.append(f"the checkpoint has hidden_size={embeddings.shape[1]}, the config "
                 f"hidden_size={config.hidden_size}")
  layers = {int(m.group(1)) for m in (re.match(r"item_encoder\.layer\.(\d+)\.", n)
                                      for n in state_dict) if m}
  if layers and len(layers) != config.num_layers:
    hints.append(f"the checkpoint has {len(layers)} layers, the config "
                 f"num_layers={config.num_layers}")
  return hints


def reference_to_params(state_dict: Mapping[str, np.ndarray], config: ModelConfig, *,
                        source: str = "state_dict") -> dict:
  """Maps a reference state_dict onto this project's parameter tree.

  The result has exactly the structure of `init_params(config, ...)` (with the
  reference's four heads when `config.head_names` is empty), as float32 numpy
  arrays; torch dense weights [out, in] become Flax kernels [in, out]. Every
  name and shape is checked (the number of attention heads cannot be, as it
  leaves no trace in the shapes); `source` names the checkpoint in errors.
  """
  config = reference_config(config)
  # eval_shape: only the tree of shapes, so no large table is allocated.
  abstract = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)

  # Problems are listed in the checkpoint's order (missing tensors last).
  order = {name: i for i, name in enumerate(state_dict)}
  problems: list[tuple[int, str]] = []
  leaves = []
  expected_names = set()
  for key_path, spec in flat:
    path = _path_names(key_path)
    name = _reference_name(path)
    expected_names.add(name)
    transpose = path[-1] == "kernel"
    torch_shape = tuple(reversed(spec.shape)) if transpose else tuple(spec.shape)
    value = state_dict.get(name)
    if value is None:
      problems.append((len(order), f"missing tensor '{name}' (for {'/'.join(path)}, "
                                   f"expected shape {torch_shape})"))
      continue
    value = np.asarray(value)
    if value.shape != torch_shape:
      problems.append((order[name], f"tensor '{name}' has shape {value.shape}, expected "
                                    f"{torch_shape} (for {'/'.join(path)})"))
      continue
    if not np.issubdtype(value.dtype, np.floating):
      problems.append((order[name], f"tensor '{name}' has dtype {value.dtype}, expected "
                                    "floating point"))
      continue
    value = value.T if transpose else value
    leaves.append(np.ascontiguousarray(value, dtype=np.float32))
  problems.extend((order[name], f"unexpected tensor '{name}' with shape "
                                f"{np.shape(state_dict[name])}")
                  for name in state_dict if name not in expected_names)

  if problems:
    shown = [message for _, message in sorted(problems, key=lambda p: p[0])]
    shown = shown[:_MAX_PROBLEMS_SHOWN]
    if len(problems) > len(shown):
      shown.append(f"... and {len(problems) - len(shown)} more")
    hints = _size_hints(state_dict, config)
    raise CheckpointFormatError(
        f"{source} does not fit the model config {_sizes(config)}:\n  "
        + "\n  ".join(shown) + "".join(f"\nhint: {h}" for h in hints))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _sizes(config: ModelConfig) -> dict[str, int]:
  return {field: getattr(config, field) for field in
          ("item_size", "attribute_size", "hidden_size", "num_layers", "num_heads", "max_len")}


def epochs_from_file_name(path: str) -> int:
  """150 for `Beauty-epochs-150.pt`; 0 when the name carries no epoch count."""
  match = re.search(r"-epochs-(\d+)\.pt$", os.path.basename(path))
  return int(match.group(1)) if match else 0


def convert_file(input_path: str, output_dir: str, config: ModelConfig,
                 log: Callable[[str], object] = print) -> str:
  """Converts a reference checkpoint into a pre-training checkpoint; returns its path."""
  state_dict = read_torch_legacy_state_dict(input_path)
  params = reference_to_params(state_dict, config, source=input_path)
  config = reference_config(config)
  log(f"converted {len(state_dict)} tensors from {input_path}:")
  targets = {}
  for key_path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = _path_names(key_path)
    targets[_reference_name(path)] = (path, value.shape)
  for name, value in state_dict.items():  # In the checkpoint's order.
    path, shape = targets[name]
    note = " (transposed)" if path[-1] == "kernel" else ""
    log(f"  {name} {value.shape} -> {'/'.join(path)} {shape}{note}")
  # Imported lazily: checkpointing pulls in orbax, which the reader does not need.
  checkpointing = importlib.import_module("s3rec_jax.model.checkpointing")
  step = epochs_from_file_name(input_path)
  metadata = {"source": os.path.basename(input_path), "format": "torch-legacy",
              "model": _sizes(config)}
  where = checkpointing.save_pretrained(os.path.abspath(output_dir), step, params, metadata)
  log(f"saved the pre-training checkpoint (step {step}) to {where}")
  return where


FLAGS = command.new_flags()
_FILES = "checkpoints"
_SIZES = "embedding sizes (--item_size and --attribute_size, or --dataset and --data_dir)"
_MODEL = "model"
_INPUT = flags.DEFINE_string("input", None, "The reference .pt file.", flag_values=FLAGS,
                             module_name=_FILES, required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Checkpoint directory to write.",
                              flag_values=FLAGS, module_name=_FILES, required=True)
_ITEM_SIZE = flags.DEFINE_integer("item_size", None, "Item embedding rows (max item id + 2).",
                                  flag_values=FLAGS, module_name=_SIZES)
_ATTRIBUTE_SIZE = flags.DEFINE_integer("attribute_size", None,
                                       "Attribute embedding rows (max attribute id + 1).",
                                       flag_values=FLAGS, module_name=_SIZES)
_DATASET = flags.DEFINE_string("dataset", None,
                               "Dataset name to derive the sizes from, e.g. LastFM.",
                               flag_values=FLAGS, module_name=_SIZES)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder holding the dataset files.",
                                flag_values=FLAGS, module_name=_SIZES)
_HIDDEN_SIZE = flags.DEFINE_integer("hidden_size", 64, "Hidden size (embedding width).",
                                    flag_values=FLAGS, module_name=_MODEL)
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 2, "Encoder layers.", flag_values=FLAGS,
                                   module_name=_MODEL)
_NUM_HEADS = flags.DEFINE_integer("num_heads", 2, "Attention heads per layer.",
                                  flag_values=FLAGS, module_name=_MODEL)
_MAX_LEN = flags.DEFINE_integer("max_len", 50, "Longest input sequence (position embedding "
                                "rows).", flag_values=FLAGS, module_name=_MODEL)

_USAGE = (f"{PROG} --input FILE.pt --output DIR [flags]: converts a reference S3-Rec checkpoint "
          "(torch 1.1 legacy .pt) into an orbax pre-training checkpoint. Sizes come from "
          "--item_size/--attribute_size or from --dataset/--data_dir.")


def _sizes_from_flags() -> tuple[int, int]:
  """(item_size, attribute_size): given, or read from --dataset (and checked against it)."""
  item_size, attribute_size = _ITEM_SIZE.value, _ATTRIBUTE_SIZE.value
  if _DATASET.value is None:
    if item_size is None or attribute_size is None:
      raise errors.UsageError("give --item_size and --attribute_size, or --dataset and --data_dir")
    return item_size, attribute_size
  if _DATA_DIR.value is None:
    raise errors.UsageError("--dataset needs --data_dir")
  # Imported lazily: only this path needs the dataset reader.
  data = importlib.import_module("s3rec_jax.data.dataset")
  dataset = data.load_dataset(_DATA_DIR.value, _DATASET.value, need_samples=False)
  for flag, given, derived in (("--item_size", item_size, dataset.item_size),
                               ("--attribute_size", attribute_size, dataset.attribute_size)):
    if given is not None and given != derived:
      raise errors.UsageError(f"{flag}={given} disagrees with dataset {_DATASET.value} "
                              f"({derived})")
  return dataset.item_size, dataset.attribute_size


def _run(words: list[str]) -> int:
  command.only_words(words, 0)
  item_size, attribute_size = _sizes_from_flags()
  try:
    config = ModelConfig(item_size=item_size, attribute_size=attribute_size,
                         hidden_size=_HIDDEN_SIZE.value, num_layers=_NUM_LAYERS.value,
                         num_heads=_NUM_HEADS.value, max_len=_MAX_LEN.value,
                         head_names=REFERENCE_HEAD_NAMES)
  except ValueError as e:
    raise errors.UsageError(str(e)) from None
  try:
    convert_file(_INPUT.value, _OUTPUT.value, config)
  except OSError as e:
    raise errors.UserError(f"{_INPUT.value}: {e.strerror or e}") from None
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (2 for a user error)."""
  return command.run(PROG, FLAGS, _run, argv, doc=_USAGE)


if __name__ == "__main__":
  sys.exit(main())
