"""Exports a trained workdir's scoring function for serving without this package.

  s3rec-export --workdir runs/lastfm --output scorer/ [--k 100] [--platforms cpu,cuda]

writes

  scorer/manifest.json      what the files hold: k, max_len, item ids, argument order, shapes
  scorer/scorer.jaxexport   the function, serialized by `jax.export` (StableHLO)
  scorer/weights.npz        its weights, one array per argument (named as in the manifest)
  scorer/ids.json           the id map: dense item id k is items[k - 1]
  scorer/load_scorer.py     the loader below

The function takes the weights, then `histories`: int32 [batch, length] dense
item ids, oldest first, left-padded with 0 (any batch and any length: both
dimensions are symbolic; `length` max_len is the usual one). It ranks every
real item (ids 1..num_items; 0 is padding, num_items + 1 the mask token) for
each row's last max_len items, exactly as `s3rec_jax.serving.recommend` does, leaves
the row's items out and returns the k best: items int32 [batch, k] (best
first, equal scores by lowest id; id 0 with score -inf where fewer than k
remain) and scores float32 [batch, k].

The weights are arguments, not constants baked into the function: the
function file stays small, the weights are plain arrays any tool can read,
and a table can be swapped (e.g. re-trained embeddings of the same shapes)
without exporting again. Their order is the manifest's "arguments": the item
table (item_embeddings/embedding, which the model uses both for its input
embeddings and for scoring) first, then the encoder's other parameters.

The loader needs only jax and numpy (written as scorer/load_scorer.py):

  # Loads an exported S3-Rec scorer; needs only jax and numpy.
  import json
  import os

  import jax
  import numpy as np


  def load(folder):
    # -> recommend(histories, k): per history (original item ids, oldest first),
    #    [(original item id, score)], best first. recommend.score maps dense
    #    left-padded int32 [B, T] histories to (items [B, k], scores [B, k]).
    path = lambda name: os.path.join(folder, name)
    with open(path("manifest.json")) as f:
      manifest = json.load(f)
    with open(path(manifest["function"]), "rb") as f:
      call = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
    with np.load(path(manifest["weights"])) as arrays:
      weights = [jax.device_put(arrays[a["name"]]) for a in manifest["arguments"][:-1]]
    with open(path(manifest["ids"])) as f:
      items = json.load(f)["items"]  # dense id k is items[k - 1]
    dense = {item: k for k, item in enumerate(items, start=1)}

    def recommend(histories, k=manifest["k"]):
      rows = [[dense[str(item)] for item in history] for history in histories]
      batch = np.zeros((len(rows), max(map(len, rows))), np.int32)
      for row, ids in zip(batch, rows):
        row[len(row) - len(ids):] = ids  # left-padded with 0
      top, scores = jax.device_get(recommend.score(batch))
      return [[(items[i - 1], float(s)) for i, s in zip(t[:k], v[:k]) if i > 0]
              for t, v in zip(top, scores)]

    recommend.score = lambda histories: call(*weights, histories)
    return recommend

Use it as

  import sys; sys.path.insert(0, "scorer"); import load_scorer
  recommend = load_scorer.load("scorer")
  recommend([["i12", "i7", "i93"]], k=10)

The output folder is written atomically: into a temporary folder beside it,
renamed when complete, so an error leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from s3rec_jax.core import command
from s3rec_jax.core import errors
from s3rec_jax.serving import recommend as recommend_lib

PROG = "s3rec-export"
FORMAT = "s3rec-jax scorer v1"
MANIFEST_FILE = "manifest.json"
FUNCTION_FILE = "scorer.jaxexport"
WEIGHTS_FILE = "weights.npz"
IDS_FILE = "ids.json"
LOADER_FILE = "load_scorer.py"
HISTORIES_ARGUMENT = "histories"
TABLE_NAME = "item_embeddings/embedding"
DEFAULT_K = 100
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

LOADER_SOURCE = '''\
# Loads an exported S3-Rec scorer; needs only jax and numpy.
import json
import os

import jax
import numpy as np


def load(folder):
  # -> recommend(histories, k): per history (original item ids, oldest first),
  #    [(original item id, score)], best first. recommend.score maps dense
  #    left-padded int32 [B, T] histories to (items [B, k], scores [B, k]).
  path = lambda name: os.path.join(folder, name)
  with open(path("manifest.json")) as f:
    manifest = json.load(f)
  with open(path(manifest["function"]), "rb") as f:
    call = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
  with np.load(path(manifest["weights"])) as arrays:
    weights = [jax.device_put(arrays[a["name"]]) for a in manifest["arguments"][:-1]]
  with open(path(manifest["ids"])) as f:
    items = json.load(f)["items"]  # dense id k is items[k - 1]
  dense = {item: k for k, item in enumerate(items, start=1)}

  def recommend(histories, k=manifest["k"]):
    rows = [[dense[str(item)] for item in history] for history in histories]
    batch = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for row, ids in zip(batch, rows):
      row[len(row) - len(ids):] = ids  # left-padded with 0
    top, scores = jax.device_get(recommend.score(batch))
    return [[(items[i - 1], float(s)) for i, s in zip(t[:k], v[:k]) if i > 0]
            for t, v in zip(top, scores)]

  recommend.score = lambda histories: call(*weights, histories)
  return recommend
'''


class ExportError(errors.UserError):
  """A bad export request (k, platforms, output folder)."""


def _name(path) -> str:
  return "/".join(str(getattr(entry, "key", entry)) for entry in path)


def weight_arguments(params: dict) -> list[tuple[str, np.ndarray]]:
  """(name, array) of every scoring parameter, in argument order: the item table first."""
  named = [(_name(path), np.asarray(leaf))
           for path, leaf in jax.tree_util.tree_leaves_with_path(params)]
  return sorted(named, key=lambda pair: pair[0] != TABLE_NAME)  # stable: the rest keep tree order


def export_function(run: recommend_lib.Run, params: dict, k: int,
                    platforms: Sequence[str]) -> tuple[jax.export.Exported, list[str]]:
  """`recommend.score_histories` of the run as a `jax.export.Exported`, and its weight names.

  Arguments: the weights (in `weight_arguments` order), then histories
  int32 [batch, length] with both dimensions symbolic.
  """
  names = [name for name, _ in weight_arguments(params)]

  def scorer(*args):
    *weights, histories = args
    by_name = dict(zip(names, weights))
    tree = jax.tree_util.tree_map_with_path(lambda path, _: by_name[_name(path)], params)
    return recommend_lib.score_histories(run.config, tree, histories, num_items=run.num_items,
                                         chunk_size=run.chunk_size, top_k=k)

  shapes = {_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  batch, length = jax.export.symbolic_shape("batch, length")
  specs = [jax.ShapeDtypeStruct(shapes[n].shape, shapes[n].dtype) for n in names]
  specs.append(jax.ShapeDtypeStruct((batch, length), jnp.int32))
  exported = jax.export.export(jax.jit(scorer), platforms=tuple(platforms))(*specs)
  return exported, names


def parse_platforms(text: str) -> tuple[str, ...]:
  platforms = tuple(p.strip() for p in text.split(",") if p.strip())
  unknown = [p for p in platforms if p not in PLATFORMS]
  if not platforms or unknown or len(set(platforms)) != len(platforms):
    raise ExportError(f"--platforms must be distinct names among {', '.join(PLATFORMS)}, "
                      f"comma-separated; got {text!r}")
  return platforms


def _serialize(exported: jax.export.Exported) -> bytes:
  try:
    return bytes(exported.serialize())
  except ImportError as e:  # jax.export serialization needs the flatbuffers package
    raise ExportError(f"cannot serialize the function: {e}") from None


def _ids_payload(run: recommend_lib.Run) -> str:
  """The ids.json to ship: the workdir's own copy, else the identity map of the items."""
  if run.ids.source is not None:
    with open(run.ids.source) as f:
      return f.read()
  # Identity runs have no map of users or attributes; the scorer needs only items.
  return json.dumps({"format": recommend_lib.IDS_FORMAT, "users": [], "items": list(run.ids.items),
                     "attributes": [], "attribute_fields": {}}) + "\n"


def _write(folder: str, name: str, data: bytes | str) -> None:
  mode = "wb" if isinstance(data, bytes) else "w"
  with open(os.path.join(folder, name), mode) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _manifest(run, exported, names, weights, k, platforms) -> dict:
  arguments = [{"name": n, "shape": list(weights[n].shape), "dtype": str(weights[n].dtype)}
               for n in names]
  arguments.append({"name": HISTORIES_ARGUMENT, "shape": ["batch", "length"], "dtype": "int32",
                    "layout": "dense item ids, oldest first, left-padded with 0"})
  return {
      "format": FORMAT,
      "function": FUNCTION_FILE, "weights": WEIGHTS_FILE, "ids": IDS_FILE, "loader": LOADER_FILE,
      "k": k, "max_len": run.config.max_len, "num_items": run.num_items,
      "item_ids": {"padding": 0, "first": 1, "last": run.num_items, "mask": run.num_items + 1},
      "ids_identity": run.ids.source is None,
      "arguments": arguments,
      "results": [{"name": "items", "shape": ["batch", k], "dtype": "int32"},
                  {"name": "scores", "shape": ["batch", k], "dtype": "float32"}],
      "platforms": list(platforms),
      "exclude_history": True,
      "source": {"workdir": run.workdir, "checkpoint": os.path.join(run.checkpoint_root,
                                                                    str(run.step))},
      "jax_version": jax.__version__,
      "calling_convention_version": exported.calling_convention_version,
  }


def export_scorer(workdir: str, output: str, *, k: int | None = None,
                  platforms: Sequence[str] = ("cpu",), step: int | None = None,
                  overwrite: bool = False) -> dict:
  """Writes the scorer folder `output` for `workdir`'s best fine-tuned model; returns the manifest.

  Args:
    workdir: a train.py workdir (see `recommend.read_run`; `step` likewise).
    output: the folder to create.
    k: items per history the function returns (default min(100, number of items)).
    platforms: lowering platforms (the function runs on any of them).
    overwrite: replace an existing `output` (only once the new one is complete).

  Raises:
    ExportError, RecommendError, CheckpointError: bad arguments or workdir.
  """
  output = os.path.abspath(os.path.expanduser(output))
  if os.path.exists(output) and not overwrite:
    raise ExportError(f"{output} exists (pass --overwrite to replace it)")
  platforms = tuple(platforms)
  parse_platforms(",".join(platforms))
  run = recommend_lib.read_run(workdir, step=step)
  k = recommend_lib.check_k(min(DEFAULT_K, run.num_items) if k is None else k, run.num_items)
  params = recommend_lib.restore_scoring_params(
      run, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  exported, names = export_function(run, params, k, platforms)
  weights = dict(weight_arguments(params))
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
  try:
    _write(staging, FUNCTION_FILE, _serialize(exported))
    with open(os.path.join(staging, WEIGHTS_FILE), "wb") as f:
      np.savez(f, **{n: weights[n] for n in names})
      f.flush()
      os.fsync(f.fileno())
    _write(staging, IDS_FILE, _ids_payload(run))
    _write(staging, LOADER_FILE, LOADER_SOURCE)
    manifest = _manifest(run, exported, names, weights, k, platforms)
    # The manifest last: a folder with one is complete.
    _write(staging, MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    os.chmod(staging, 0o755)  # mkdtemp makes it private
    _replace_folder(staging, output, overwrite)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return manifest


def _replace_folder(staging: str, output: str, overwrite: bool) -> None:
  """Renames the complete `staging` folder to `output`; an old `output` goes only after."""
  if not os.path.exists(output):
    os.rename(staging, output)
    return
  if not overwrite:
    raise ExportError(f"{output} exists (pass --overwrite to replace it)")
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old-", dir=os.path.dirname(output))
  os.rmdir(old)
  os.rename(output, old)
  os.rename(staging, output)
  shutil.rmtree(old, ignore_errors=True)


FLAGS = command.new_flags()
_MODEL = "model"
_SCORER = "scorer"
_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir.", flag_values=FLAGS,
                               module_name=_MODEL, required=True)
_STEP = flags.DEFINE_integer("step", None,
                             "A finetune_best step (default: the best of a finished run).",
                             flag_values=FLAGS, module_name=_MODEL)
_OUTPUT = flags.DEFINE_string("output", None, "The folder to write (must not exist).",
                              flag_values=FLAGS, module_name=_SCORER, required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output.",
                               flag_values=FLAGS, module_name=_SCORER)
_K = flags.DEFINE_integer(
    "k", None, f"Items per history (default {DEFAULT_K}, or the catalogue if smaller).",
    flag_values=FLAGS, module_name=_SCORER)
_PLATFORMS = flags.DEFINE_string(
    "platforms", "cpu", "Comma-separated lowering platforms (" + ", ".join(PLATFORMS)
    + "), e.g. cpu,cuda; the function runs on any of them.", flag_values=FLAGS,
    module_name=_SCORER)

_USAGE = (f"{PROG} --workdir DIR --output DIR [flags]: exports a trained workdir's scoring "
          "function (jax.export) with its weights, id map and a loader that needs only jax and "
          "numpy.")


def _run(words: list[str]) -> None:
  command.only_words(words, 0)
  recommend_lib.quiet_libraries()
  try:
    platforms = parse_platforms(_PLATFORMS.value)
  except ExportError as e:
    raise errors.UsageError(str(e)) from None
  manifest = export_scorer(_WORKDIR.value, _OUTPUT.value, k=_K.value, platforms=platforms,
                           step=_STEP.value, overwrite=_OVERWRITE.value)
  print(f"wrote {os.path.abspath(_OUTPUT.value)} (k={manifest['k']}, max_len="
        f"{manifest['max_len']}, {manifest['num_items']} items, platforms "
        f"{','.join(manifest['platforms'])})")


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (2 for a user error)."""
  return command.run(PROG, FLAGS, _run, argv, doc=_USAGE)


if __name__ == "__main__":
  sys.exit(main())
