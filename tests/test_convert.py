"""Tests of the torch-free reader of legacy checkpoints and of the name mapping.

Legacy-format files are assembled here opcode by opcode, so no torch is
needed and malicious files are easy to build.
"""

import dataclasses
import io
import math
import pickle
import struct
import sys
import types
import zipfile
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest

from s3rec_jax.model import convert
from s3rec_jax.model.convert import CheckpointFormatError
from s3rec_jax.model.encoder import ModelConfig, init_params

REFERENCE_HEADS = ("aap", "mip", "map", "sp")
TINY = ModelConfig(item_size=13, attribute_size=7, hidden_size=8, num_layers=2, num_heads=2,
                   max_len=6, head_names=REFERENCE_HEADS)

# ----------------------------------------------------------------------------
# A minimal writer of the torch 1.1 legacy format (pickle protocol 2 opcodes).
# ----------------------------------------------------------------------------


class Global(NamedTuple):
  """A GLOBAL opcode (or STACK_GLOBAL, protocol 4) naming module.name."""
  module: str
  name: str
  stack: bool = False


class Call(NamedTuple):
  """func(*args) through the REDUCE opcode."""
  func: Any
  args: tuple


class PersistentId(NamedTuple):
  pid: tuple


class Ordered(NamedTuple):
  """A collections.OrderedDict built from (key, value) pairs, as torch pickles a state_dict."""
  items: tuple


def ordered_dict_call():
  return Call(Global("collections", "OrderedDict"), ())


def _encode(obj: Any, out: bytearray) -> None:
  if isinstance(obj, Global):
    if obj.stack:
      _encode(obj.module, out)
      _encode(obj.name, out)
      out += b"\x93"  # STACK_GLOBAL
    else:
      out += b"c" + f"{obj.module}\n{obj.name}\n".encode()
  elif isinstance(obj, Call):
    _encode(obj.func, out)
    _encode(tuple(obj.args), out)
    out += b"R"
  elif isinstance(obj, PersistentId):
    _encode(tuple(obj.pid), out)
    out += b"Q"
  elif isinstance(obj, Ordered):
    _encode(ordered_dict_call(), out)
    if obj.items:
      out += b"("
      for key, value in obj.items:
        _encode(key, out)
        _encode(value, out)
      out += b"u"
  elif obj is None:
    out += b"N"
  elif obj is True or obj is False:
    out += b"\x88" if obj else b"\x89"
  elif isinstance(obj, int):
    out += b"J" + struct.pack("<i", obj)
  elif isinstance(obj, str):
    data = obj.encode()
    out += b"X" + struct.pack("<I", len(data)) + data
  elif isinstance(obj, tuple):
    out += b"("
    for item in obj:
      _encode(item, out)
    out += b"t"
  elif isinstance(obj, list):
    out += b"]("
    for item in obj:
      _encode(item, out)
    out += b"e"
  else:
    raise TypeError(f"cannot encode {type(obj)}")


def pickle_opcodes(obj: Any) -> bytes:
  out = bytearray(b"\x80\x02")
  _encode(obj, out)
  return bytes(out + b".")


@dataclasses.dataclass
class TensorRef:
  """A tensor as a view into a named storage."""
  key: str
  size: tuple
  stride: tuple
  offset: int = 0
  view: tuple | None = None  # (view_key, offset, numel) of an old-style storage view.
  storage_type: str = "FloatStorage"


def tensor_call(ref: TensorRef, numel: int) -> Call:
  pid = PersistentId(("storage", Global("torch", ref.storage_type), ref.key, "cpu", numel,
                      ref.view))
  return Call(Global("torch._utils", "_rebuild_tensor_v2"),
              (pid, ref.offset, tuple(ref.size), tuple(ref.stride), False, ordered_dict_call()))


def write_legacy(path, tensors: dict, storages: dict, *, magic=convert.MAGIC_NUMBER,
                 protocol=1001, state: Any = None, sys_info: Any = None,
                 trailing: bytes = b"", counts: dict | None = None) -> None:
  """Writes tensors (name -> TensorRef) over storages (key -> 1-D array) in the legacy format.

  `state` replaces the state_dict pickle object; `counts` overrides element counts.
  """
  if state is None:
    state = Ordered(tuple((name, tensor_call(ref, storages[ref.key].size))
                          for name, ref in tensors.items()))
  if sys_info is None:
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
  out = io.BytesIO()
  out.write(pickle.dumps(magic, protocol=2))
  out.write(pickle.dumps(protocol, protocol=2))
  out.write(pickle.dumps(sys_info, protocol=2) if isinstance(sys_info, dict)
            else pickle_opcodes(sys_info))
  out.write(pickle_opcodes(state))
  keys = sorted(storages)
  out.write(pickle.dumps(keys, protocol=2))
  for key in keys:
    data = storages[key]
    count = (counts or {}).get(key, data.size)
    out.write(struct.pack("<q", count))
    out.write(data.astype(data.dtype.newbyteorder("<")).tobytes())
  out.write(trailing)
  with open(path, "wb") as f:
    f.write(out.getvalue())


def write_state_dict(path, state_dict: dict) -> None:
  """Every tensor in its own contiguous float32 storage, as torch saves a fresh model."""
  tensors, storages = {}, {}
  for i, (name, value) in enumerate(state_dict.items()):
    value = np.ascontiguousarray(value, np.float32)
    key = str(1000 + i)
    storages[key] = value.ravel()
    strides = tuple(s // value.itemsize for s in value.strides)
    tensors[name] = TensorRef(key, value.shape, strides)
  write_legacy(path, tensors, storages)


# ----------------------------------------------------------------------------
# Reference layout of this project's parameters, written out by hand.
# ----------------------------------------------------------------------------


def torch_layout(params, num_layers):
  """This project's tree -> reference names, [out, in] dense weights."""
  sd = {
      "item_embeddings.weight": params["item_embeddings"]["embedding"],
      "attribute_embeddings.weight": params["attribute_embeddings"]["embedding"],
      "position_embeddings.weight": params["position_embeddings"]["embedding"],
  }

  def linear(name, p):
    sd[f"{name}.weight"] = np.asarray(p["kernel"]).T
    sd[f"{name}.bias"] = p["bias"]

  def norm(name, p):
    sd[f"{name}.weight"] = p["scale"]
    sd[f"{name}.bias"] = p["bias"]

  for i in range(num_layers):
    layer, prefix = params["encoder"][f"layer_{i}"], f"item_encoder.layer.{i}"
    for torch_name, ours in (("query", "query"), ("key", "key"), ("value", "value"),
                             ("dense", "output")):
      linear(f"{prefix}.attention.{torch_name}", layer["attention"][ours])
    norm(f"{prefix}.attention.LayerNorm", layer["attention_norm"])
    linear(f"{prefix}.intermediate.dense_1", layer["feed_forward"]["dense_1"])
    linear(f"{prefix}.intermediate.dense_2", layer["feed_forward"]["dense_2"])
    norm(f"{prefix}.intermediate.LayerNorm", layer["feed_forward_norm"])
  norm("LayerNorm", params["input_norm"])
  for head in REFERENCE_HEADS:
    linear(f"{head}_norm", params["heads"][head])
  return {k: np.array(v, np.float32) for k, v in sd.items()}


def random_params(config, seed=0):
  """init_params' tree filled with distinct random values (init leaves biases at zero)."""
  rng = np.random.default_rng(seed)
  params = init_params(config, jax.random.PRNGKey(seed))
  return jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)


def assert_trees_equal(actual, expected):
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    np.testing.assert_array_equal(a, np.asarray(e))


@pytest.fixture
def tiny_checkpoint(tmp_path):
  """(path, torch-layout state_dict, params) of a tiny model written in the legacy format."""
  params = random_params(TINY)
  sd = torch_layout(params, TINY.num_layers)
  path = tmp_path / "Tiny-epochs-7.pt"
  write_state_dict(path, sd)
  return path, sd, params


# ----------------------------------------------------------------------------
# Reading.
# ----------------------------------------------------------------------------


def test_round_trip(tiny_checkpoint):
  path, sd, params = tiny_checkpoint
  read = convert.read_torch_legacy_state_dict(path)
  assert list(read) == list(sd)  # File order is kept.
  for name, value in sd.items():
    assert read[name].dtype == np.float32 and read[name].flags.c_contiguous
    np.testing.assert_array_equal(read[name], value)
  assert_trees_equal(convert.reference_to_params(read, TINY), params)


def test_shared_storage_offsets_strides_and_views(tmp_path):
  rng = np.random.default_rng(0)
  q_bias, k_bias, v_bias = (rng.normal(size=4).astype(np.float32) for _ in range(3))
  weight = rng.normal(size=(6, 4)).astype(np.float32)  # [out, in]
  scalar = np.float32(3.5)
  # One storage: three biases back to back, the weight stored transposed, then a scalar.
  shared = np.concatenate([q_bias, k_bias, v_bias, weight.T.ravel(), [scalar]]).astype(np.float32)
  view_root = rng.normal(size=20).astype(np.float32)
  tensors = {
      "q.bias": TensorRef("shared", (4,), (1,), offset=0),
      "k.bias": TensorRef("shared", (4,), (1,), offset=4),
      "v.bias": TensorRef("shared", (4,), (1,), offset=8),
      # A transposed view: size [6, 4] over [4, 6] contiguous data.
      "w.weight": TensorRef("shared", (6, 4), (1, 6), offset=12),
      "scalar": TensorRef("shared", (), (), offset=36),
      "every_other": TensorRef("shared", (3,), (2,), offset=1),
      "empty": TensorRef("shared", (0, 4), (4, 1)),
      # An old-style storage view: elements [5, 15) of the root, tensor from its 2nd element.
      "in_view": TensorRef("root", (2, 3), (3, 1), offset=2, view=("view-1", 5, 10)),
  }
  path = tmp_path / "shared.pt"
  write_legacy(path, tensors, {"shared": shared, "root": view_root})
  read = convert.read_torch_legacy_state_dict(path)
  np.testing.assert_array_equal(read["q.bias"], q_bias)
  np.testing.assert_array_equal(read["k.bias"], k_bias)
  np.testing.assert_array_equal(read["v.bias"], v_bias)
  np.testing.assert_array_equal(read["w.weight"], weight)
  assert read["scalar"].shape == () and read["scalar"] == scalar
  np.testing.assert_array_equal(read["every_other"], shared[1:7:2])
  assert read["empty"].shape == (0, 4)
  np.testing.assert_array_equal(read["in_view"], view_root[7:13].reshape(2, 3))
  # Copies, not views of the file buffer or of each other.
  assert read["w.weight"].flags.c_contiguous and read["w.weight"].flags.writeable
  read["q.bias"][0] = 99.0
  assert read["k.bias"][0] == k_bias[0]


def test_other_storage_dtypes(tmp_path):
  tensors = {"d": TensorRef("a", (2,), (1,), storage_type="DoubleStorage"),
             "l": TensorRef("b", (3,), (1,), storage_type="LongStorage")}
  storages = {"a": np.array([1.5, -2.25]), "b": np.array([1, -2, 3], np.int64)}
  path = tmp_path / "dtypes.pt"
  write_legacy(path, tensors, storages)
  read = convert.read_torch_legacy_state_dict(path)
  assert read["d"].dtype == np.float64 and read["d"].tolist() == [1.5, -2.25]
  assert read["l"].dtype == np.int64 and read["l"].tolist() == [1, -2, 3]


def test_parameter_wrapped_tensor(tmp_path):
  storage = np.arange(4, dtype=np.float32)
  call = tensor_call(TensorRef("s", (4,), (1,)), 4)
  parameter = Call(Global("torch._utils", "_rebuild_parameter"), (call, True, ordered_dict_call()))
  path = tmp_path / "param.pt"
  write_legacy(path, {}, {"s": storage}, state=Ordered((("w", parameter),)))
  np.testing.assert_array_equal(convert.read_torch_legacy_state_dict(path)["w"], storage)


MALICIOUS = [
    # (global, argument builder: target path -> args); each would create `target` if run.
    (Global("os", "mkdir"), lambda target: (str(target),)),
    (Global("posix", "mkdir"), lambda target: (str(target),)),
    (Global("posix", "system"), lambda target: (f"mkdir {target}",)),
    (Global("os", "system", stack=True), lambda target: (f"mkdir {target}",)),
    (Global("builtins", "eval"), lambda target: (f"__import__('os').mkdir({str(target)!r})",)),
    (Global("builtins", "exec"), lambda target: (f"import os; os.mkdir({str(target)!r})",)),
]


@pytest.mark.parametrize("func,args", MALICIOUS, ids=lambda x: getattr(x, "name", ""))
def test_malicious_global_in_state_dict_is_refused_not_run(tmp_path, func, args):
  target = tmp_path / "pwned"
  evil = Call(func, args(target))
  storage = np.zeros(4, np.float32)
  state = Ordered((("w", tensor_call(TensorRef("s", (4,), (1,)), 4)), ("evil", evil)))
  path = tmp_path / "evil.pt"
  write_legacy(path, {}, {"s": storage}, state=state)
  with pytest.raises(CheckpointFormatError) as info:
    convert.read_torch_legacy_state_dict(path)
  message = str(info.value)
  assert f"'{func.module}.{func.name}'" in message and str(path) in message
  assert not target.exists()


def test_malicious_global_in_header_is_refused(tmp_path):
  target = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  write_legacy(path, {}, {}, sys_info=Call(Global("os", "mkdir"), (str(target),)))
  with pytest.raises(CheckpointFormatError, match=r"'os\.mkdir'.*system info"):
    convert.read_torch_legacy_state_dict(path)
  assert not target.exists()


def test_pickled_model_class_is_refused_with_hint(tmp_path):
  path = tmp_path / "model.pt"
  state = Call(Global("models", "S3RecModel"), ())
  write_legacy(path, {}, {}, state=state)
  with pytest.raises(CheckpointFormatError, match=r"'models\.S3RecModel'.*state_dict\(\)"):
    convert.read_torch_legacy_state_dict(path)


@pytest.mark.parametrize("state,match", [
    # A storage class called like a function.
    (Ordered((("w", Call(Global("torch", "FloatStorage"), (3,))),)), "cannot read"),
    # A persistent id other than a storage.
    (Ordered((("w", Call(Global("torch._utils", "_rebuild_tensor_v2"),
                         (PersistentId(("module", "x", "y")), 0, (1,), (1,), False, None))),)),
     "persistent id"),
    # A non-tensor value.
    (Ordered((("w", 3),)), "not a tensor"),
    # Not a dict at all.
    ([1, 2], "expected a state_dict"),
])
def test_malformed_state_dict(tmp_path, state, match):
  path = tmp_path / "bad.pt"
  write_legacy(path, {}, {}, state=state)
  with pytest.raises(CheckpointFormatError, match=match):
    convert.read_torch_legacy_state_dict(path)


def test_bad_magic_number(tmp_path):
  path = tmp_path / "bad.pt"
  write_legacy(path, {}, {}, magic=1234)
  with pytest.raises(CheckpointFormatError, match="magic number") as info:
    convert.read_torch_legacy_state_dict(path)
  assert str(path) in str(info.value)


def test_bad_protocol_version(tmp_path):
  path = tmp_path / "bad.pt"
  write_legacy(path, {}, {}, protocol=1000)
  with pytest.raises(CheckpointFormatError, match="protocol version 1000"):
    convert.read_torch_legacy_state_dict(path)


def test_not_a_pickle(tmp_path):
  path = tmp_path / "bad.pt"
  path.write_bytes(b"hello world, not a checkpoint")
  with pytest.raises(CheckpointFormatError, match="bad.pt"):
    convert.read_torch_legacy_state_dict(path)


def test_zip_format_is_named(tmp_path):
  path = tmp_path / "new.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", b"")
  with pytest.raises(CheckpointFormatError, match="zip-based"):
    convert.read_torch_legacy_state_dict(path)


def test_truncated_data(tiny_checkpoint, tmp_path):
  path = tiny_checkpoint[0]
  cut = tmp_path / "cut.pt"
  cut.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(CheckpointFormatError, match="truncated"):
    convert.read_torch_legacy_state_dict(cut)


def test_trailing_bytes(tmp_path):
  path = tmp_path / "long.pt"
  write_legacy(path, {"w": TensorRef("s", (2,), (1,))}, {"s": np.ones(2, np.float32)},
               trailing=b"xx")
  with pytest.raises(CheckpointFormatError, match="2 unexpected bytes"):
    convert.read_torch_legacy_state_dict(path)


def test_element_count_mismatch(tmp_path):
  path = tmp_path / "count.pt"
  write_legacy(path, {"w": TensorRef("s", (2,), (1,))}, {"s": np.ones(2, np.float32)},
               counts={"s": 3})
  with pytest.raises(CheckpointFormatError, match="holds 3 elements"):
    convert.read_torch_legacy_state_dict(path)


def test_tensor_outside_its_storage(tmp_path):
  path = tmp_path / "oob.pt"
  write_legacy(path, {"w": TensorRef("s", (2, 3), (3, 1), offset=1)},
               {"s": np.ones(6, np.float32)})
  with pytest.raises(CheckpointFormatError, match="'w'.*reaches element 6"):
    convert.read_torch_legacy_state_dict(path)


# ----------------------------------------------------------------------------
# Mapping onto the parameter tree.
# ----------------------------------------------------------------------------


def test_reference_to_params_adds_reference_heads_when_config_names_none(tiny_checkpoint):
  _, sd, params = tiny_checkpoint
  no_heads = dataclasses.replace(TINY, head_names=())
  assert_trees_equal(convert.reference_to_params(sd, no_heads), params)


def test_wrong_item_size_names_tensor_and_hints_dataset(tiny_checkpoint):
  _, sd, _ = tiny_checkpoint
  config = dataclasses.replace(TINY, item_size=TINY.item_size + 1)
  with pytest.raises(CheckpointFormatError) as info:
    convert.reference_to_params(sd, config, source="Tiny.pt")
  message = str(info.value)
  assert "'item_embeddings.weight'" in message
  assert "(13, 8)" in message and "(14, 8)" in message
  assert "another dataset" in message and "Tiny.pt" in message


def test_wrong_hidden_size_names_tensors(tiny_checkpoint):
  _, sd, _ = tiny_checkpoint
  config = dataclasses.replace(TINY, hidden_size=16)
  with pytest.raises(CheckpointFormatError, match=r"'item_embeddings\.weight' has shape "
                     r"\(13, 8\), expected \(13, 16\)(.|\n)*hidden_size=8"):
    convert.reference_to_params(sd, config)


def test_missing_and_unexpected_tensors(tiny_checkpoint):
  _, sd, _ = tiny_checkpoint
  broken = dict(sd)
  del broken["item_encoder.layer.1.attention.key.bias"]
  broken["item_encoder.layer.2.attention.key.bias"] = np.zeros(8, np.float32)
  with pytest.raises(CheckpointFormatError) as info:
    convert.reference_to_params(broken, TINY)
  message = str(info.value)
  assert "missing tensor 'item_encoder.layer.1.attention.key.bias'" in message
  assert "unexpected tensor 'item_encoder.layer.2.attention.key.bias'" in message


def test_fewer_layers_in_config(tiny_checkpoint):
  _, sd, _ = tiny_checkpoint
  with pytest.raises(CheckpointFormatError, match="checkpoint has 2 layers"):
    convert.reference_to_params(sd, dataclasses.replace(TINY, num_layers=1))


def test_integer_tensor_is_rejected(tiny_checkpoint):
  _, sd, _ = tiny_checkpoint
  broken = dict(sd, **{"LayerNorm.bias": np.zeros(8, np.int64)})
  with pytest.raises(CheckpointFormatError, match="'LayerNorm.bias' has dtype int64"):
    convert.reference_to_params(broken, TINY)


@pytest.mark.parametrize("name,step", [("Beauty-epochs-150.pt", 150),
                                       ("/a/b/LastFM-epochs-7.pt", 7), ("weights.pt", 0)])
def test_epochs_from_file_name(name, step):
  assert convert.epochs_from_file_name(name) == step


# ----------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------


@pytest.fixture
def fake_save(monkeypatch):
  """Replaces s3rec_jax.model.checkpointing with a recorder of save_pretrained calls."""
  calls = []

  def save_pretrained(directory, step, params, metadata):
    calls.append(dict(directory=directory, step=step, params=params, metadata=metadata))
    return f"{directory}/{step}"

  fake = types.ModuleType("s3rec_jax.model.checkpointing")
  fake.save_pretrained = save_pretrained
  monkeypatch.setitem(sys.modules, "s3rec_jax.model.checkpointing", fake)
  return calls


def _tiny_flags(output):
  return ["--output", str(output), "--hidden_size", "8", "--num_layers", "2",
          "--num_heads", "2", "--max_len", "6"]


def test_cli_with_sizes(tiny_checkpoint, tmp_path, fake_save, capsys):
  path, _, params = tiny_checkpoint
  out = tmp_path / "out"
  code = convert.main(["--input", str(path), "--item_size", "13", "--attribute_size", "7",
                       *_tiny_flags(out)])
  assert code == 0
  (call,) = fake_save
  assert call["directory"] == str(out) and call["step"] == 7
  assert call["metadata"] == {
      "source": "Tiny-epochs-7.pt", "format": "torch-legacy",
      "model": {"item_size": 13, "attribute_size": 7, "hidden_size": 8, "num_layers": 2,
                "num_heads": 2, "max_len": 6}}
  assert_trees_equal(call["params"], params)
  printed = capsys.readouterr().out
  assert "item_encoder.layer.0.attention.dense.weight (8, 8) -> encoder/layer_0/attention/" \
         "output/kernel (8, 8) (transposed)" in printed
  assert f"{out}/7" in printed


def test_cli_with_dataset(tiny_checkpoint, tmp_path, fake_save, monkeypatch):
  path, _, _ = tiny_checkpoint
  seen = {}

  def load_dataset(data_dir, name, need_samples=True):
    seen.update(data_dir=data_dir, name=name, need_samples=need_samples)
    return types.SimpleNamespace(item_size=13, attribute_size=7)

  fake = types.ModuleType("s3rec_jax.data.dataset")
  fake.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, "s3rec_jax.data.dataset", fake)
  code = convert.main(["--input", str(path), "--dataset", "Tiny", "--data_dir", "/d",
                       *_tiny_flags(tmp_path / "out")])
  assert code == 0 and len(fake_save) == 1
  assert seen == {"data_dir": "/d", "name": "Tiny", "need_samples": False}


def test_cli_size_mismatch_fails_cleanly(tiny_checkpoint, tmp_path, fake_save, capsys):
  path, _, _ = tiny_checkpoint
  code = convert.main(["--input", str(path), "--item_size", "99", "--attribute_size", "7",
                       *_tiny_flags(tmp_path / "out")])
  assert code == 2 and not fake_save
  err = capsys.readouterr().err
  assert "another dataset" in err and len(err.strip().splitlines()) == 1


def test_cli_help_lists_the_flags(capsys):
  assert convert.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("s3rec-convert --input FILE.pt --output DIR")
  for name in ("--input", "--output", "--item_size", "--attribute_size", "--dataset",
               "--data_dir", "--hidden_size", "--num_layers", "--num_heads", "--max_len"):
    assert name in out, name


def _fake_dataset(monkeypatch, item_size=13, attribute_size=7):
  fake = types.ModuleType("s3rec_jax.data.dataset")
  fake.load_dataset = lambda *args, **kwargs: types.SimpleNamespace(
      item_size=item_size, attribute_size=attribute_size)
  monkeypatch.setitem(sys.modules, "s3rec_jax.data.dataset", fake)


@pytest.mark.parametrize("argv, expected", [
    (["--output", "out", "--item_size", "13", "--attribute_size", "7"], "--input is required"),
    (["--input", "x.pt", "--item_size", "13", "--attribute_size", "7"], "--output is required"),
    (["--input", "x.pt", "--output", "out", "--item_sise", "13"],
     "unknown flag --item_sise; did you mean --item_size?"),
    (["--input", "x.pt", "--output", "out"],
     "give --item_size and --attribute_size, or --dataset and --data_dir"),
    (["--input", "x.pt", "--output", "out", "--item_size", "13"],
     "give --item_size and --attribute_size, or --dataset and --data_dir"),
    (["--input", "x.pt", "--output", "out", "--dataset", "Tiny"], "--dataset needs --data_dir"),
    (["--input", "x.pt", "--output", "out", "--dataset", "Tiny", "--data_dir", "/d",
      "--item_size", "99"], "--item_size=99 disagrees with dataset Tiny (13)"),
    (["--input", "x.pt", "--output", "out", "--item_size", "13", "--attribute_size", "7",
      "--hidden_size", "10", "--num_heads", "3"], "model.hidden_size=10 must be divisible"),
    (["--input", "x.pt", "--output", "out", "--item_size", "13", "--attribute_size", "7",
      "extra"], "unexpected argument 'extra'"),
])
def test_cli_bad_usage_is_one_line(monkeypatch, fake_save, capsys, argv, expected):
  _fake_dataset(monkeypatch)
  assert convert.main(argv) == 2 and not fake_save
  captured = capsys.readouterr()
  assert captured.out == "" and captured.err.startswith("s3rec-convert: error: ")
  assert expected in captured.err, captured.err
  assert captured.err.endswith("(see s3rec-convert --help)\n")
  assert len(captured.err.splitlines()) == 1


def test_cli_writes_real_checkpoint(tiny_checkpoint, tmp_path):
  checkpointing = pytest.importorskip("s3rec_jax.model.checkpointing")
  if not hasattr(checkpointing, "save_pretrained"):
    pytest.skip("s3rec_jax.model.checkpointing.save_pretrained is not there yet")
  path, _, _ = tiny_checkpoint
  out = tmp_path / "ckpt"
  where = convert.convert_file(str(path), str(out), TINY, log=lambda _: None)
  assert where.startswith(str(out)) and (tmp_path / "ckpt").is_dir()


# ----------------------------------------------------------------------------
# The released reference checkpoints.
# ----------------------------------------------------------------------------


def _reference_file(shared_data_dir, name):
  path = shared_data_dir / "reference_checkpoints" / f"{name}-epochs-150.pt"
  if not path.exists():
    pytest.skip(f"{path} not found")
  return path


def test_real_lastfm_checkpoint(shared_data_dir):
  sd = convert.read_torch_legacy_state_dict(_reference_file(shared_data_dir, "LastFM"))
  assert len(sd) == 45
  assert sd["item_embeddings.weight"].shape == (3648, 64)
  assert sd["attribute_embeddings.weight"].shape == (389, 64)
  assert sd["position_embeddings.weight"].shape == (50, 64)
  assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in sd.values())
  params = convert.reference_to_params(sd, ModelConfig(item_size=3648, attribute_size=389))
  np.testing.assert_array_equal(params["heads"]["sp"]["kernel"], sd["sp_norm.weight"].T)
  assert math.isclose(float(params["input_norm"]["scale"].sum()),
                      float(sd["LayerNorm.weight"].sum()))


def test_real_beauty_checkpoint_with_lastfm_sizes(shared_data_dir):
  sd = convert.read_torch_legacy_state_dict(_reference_file(shared_data_dir, "Beauty"))
  with pytest.raises(CheckpointFormatError) as info:
    convert.reference_to_params(sd, ModelConfig(item_size=3648, attribute_size=389),
                                source="Beauty-epochs-150.pt")
  message = str(info.value)
  assert "'item_embeddings.weight' has shape (12103, 64), expected (3648, 64)" in message
  assert "another dataset" in message


def test_real_cli_with_dataset(shared_data_dir, tmp_path, fake_save):
  path = _reference_file(shared_data_dir, "LastFM")
  code = convert.main(["--input", str(path), "--output", str(tmp_path / "out"),
                       "--dataset", "LastFM", "--data_dir", str(shared_data_dir)])
  assert code == 0
  (call,) = fake_save
  assert call["step"] == 150
  assert call["metadata"]["model"]["item_size"] == 3648
  assert call["metadata"]["model"]["attribute_size"] == 389
