"""Top-k recommendations from a trained workdir, in the dataset's original ids.

  rec = Recommender.from_workdir("runs/lastfm")
  for r in rec.recommend([["i12", "i7", "i93"]], k=10):
    print(list(zip(r.items, r.scores)))        # (original item id, score), best first

or from the command line (JSON lines on stdout, or --output FILE):

  s3rec-recommend --workdir runs/lastfm --history "12 7 93" --k 10
  s3rec-recommend --workdir runs/lastfm --users users.jsonl --k 10

A history is a user's items, oldest first. The model sees its last
`max_seq_length` items, left-padded as in evaluation (`data.left_pad`): the
newest item sits in the window's last position. Every item of the history,
also those older than the window, is left out of the recommendations (as the
full-ranking evaluation leaves out the user's history), unless
`exclude_history=False`. The ranking is exact over the whole catalogue
(`metrics.top_k_items`: a scan over catalogue chunks with a running top-k, so
memory does not grow with the catalogue); equal scores go to the lowest dense
id.

Original ids come from the workdir's ids.json (a copy of the dataset's id
map). Without one (the built-in synthetic set, the reference's own files) the
original ids are the dense ids written as decimal strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from s3rec_jax.core import command
from s3rec_jax.core import errors
from s3rec_jax.core import files
from s3rec_jax.core import parallel
from s3rec_jax.core import workdir_files
from s3rec_jax.evaluation import metrics as metrics_lib
from s3rec_jax.model import checkpointing
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.ops import methods

PROG = "s3rec-recommend"
IDS_FORMAT = "s3rec-jax ids v1"
DEFAULT_BATCH_SIZE = 128
# Parameter groups the scoring function reads (the attribute table only
# serves pre-training objectives).
SCORING_PARAM_GROUPS = ("item_embeddings", "position_embeddings", "input_norm", "encoder")


class RecommendError(errors.UserError):
  """A bad history, k or workdir; the message says which and where."""


# --- the scoring function ----------------------------------------------------


def model_window(histories: jax.Array, max_len: int) -> jax.Array:
  """[B, T] left-padded histories -> [B, max_len]: each row's last max_len items, left-padded.

  Any T >= 1, also a symbolic one (`jax.export`): the rows are prefixed with
  max_len zeros and the last max_len columns taken, so a short width is
  padded and a long one cut, exactly as `data.left_pad` builds evaluation
  inputs.
  """
  chex.assert_rank(histories, 2)
  batch, width = histories.shape
  padded = jnp.concatenate([jnp.zeros((batch, max_len), histories.dtype), histories], axis=1)
  # A dynamic slice: its start may be a symbolic dimension.
  return lax.dynamic_slice_in_dim(padded, jnp.asarray(width, jnp.int32), max_len, axis=1)


def score_histories(config: model_lib.ModelConfig, params: dict, histories: jax.Array, *,
                    num_items: int, chunk_size: int, top_k: int,
                    exclude_history: bool = True,
                    ranking: str = "scan") -> tuple[jax.Array, jax.Array]:
  """Dense top-k recommendations for left-padded dense histories.

  Encodes each history's window causally, takes the newest token's output as
  the user representation and ranks items 1..num_items by dot product with
  the item table.

  Args:
    config: the model's static settings.
    params: the fine-tuned parameters (at least `SCORING_PARAM_GROUPS`).
    histories: [B, T] int dense item ids, oldest first, left-padded with 0.
      Rows must hold at least one item (an all-padding row gets meaningless
      results). B and T may be symbolic.
    num_items: number of real items; ids 1..num_items are the candidates.
    chunk_size: catalogue rows scored per scan step.
    top_k: number of items per row.
    exclude_history: leave each row's items out of its candidates.

  Returns:
    items [B, top_k] int32 dense ids, best first (ties: lowest id), and their
    scores [B, top_k] float32. Where fewer than top_k candidates remain the
    tail holds id 0 with score -inf.
  """
  chex.assert_rank(histories, 2)
  chex.assert_type(histories, int)
  histories = histories.astype(jnp.int32)
  batch = histories.shape[0]
  window = model_window(histories, config.max_len)
  # The newest item sits in each row's last position; only it is computed in
  # the last layer.
  newest = jnp.arange(batch, dtype=jnp.int32) * config.max_len + (config.max_len - 1)
  user = model_lib.encode(config, params, window, causal=True,
                          queries=model_lib.Queries(0, newest))             # [B, H]
  exclude = histories if exclude_history else jnp.zeros((batch, 1), jnp.int32)
  return metrics_lib.top_k_items(user, model_lib.item_table(params), exclude,
                                 num_items=num_items, chunk_size=chunk_size, top_k=top_k,
                                 method=ranking)


def left_pad_rows(rows: Sequence[np.ndarray], batch_size: int, width: int) -> np.ndarray:
  """[batch_size, width] int32: row i holds rows[i]'s last `width` ids, left-padded with 0."""
  out = np.zeros((batch_size, width), np.int32)
  for i, row in enumerate(rows):
    row = row[-width:]
    out[i, width - len(row):] = row
  return out


# --- original ids ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class IdMap:
  """Original <-> dense item ids. Dense id k (1..num_items) is `items[k - 1]`."""
  items: tuple[str, ...]
  source: str | None  # the ids.json it came from; None for the identity map
  _dense: dict[str, int] = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    # Frozen: the lookup table is set once, here.
    object.__setattr__(self, "_dense", {item: k for k, item in enumerate(self.items, start=1)})

  @property
  def num_items(self) -> int:
    return len(self.items)

  @classmethod
  def identity(cls, num_items: int) -> IdMap:
    """Original ids are the dense ids as decimal strings."""
    return cls(tuple(str(k) for k in range(1, num_items + 1)), None)

  @classmethod
  def from_file(cls, path: str, num_items: int) -> IdMap:
    """Reads an ids.json ("s3rec-jax ids v1") whose item list must cover the run's items.

    Raises:
      RecommendError: for an unreadable file, another format, or an item list
        that does not fit the model.
    """
    try:
      with open(path) as f:
        payload = json.load(f)
    except (OSError, ValueError) as e:
      raise RecommendError(f"{path}: cannot read the ids map ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != IDS_FORMAT:
      raise RecommendError(f"{path}: not an ids map (expected \"format\": \"{IDS_FORMAT}\")")
    items = payload.get("items")
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
      raise RecommendError(f"{path}: \"items\" must be a list of strings")
    if len(items) != num_items:
      raise RecommendError(f"{path}: maps {len(items)} items but the model has {num_items}")
    if len(set(items)) != len(items):
      raise RecommendError(f"{path}: \"items\" holds an id twice")
    return cls(tuple(items), path)

  def dense(self, item: Any, where: str) -> int:
    """The dense id of an original id (str, or int taken as its decimal string)."""
    if isinstance(item, (bool, np.bool_)) or not isinstance(item, (str, int, np.integer)):
      raise RecommendError(f"{where}: item ids must be strings or integers, got {item!r}")
    key = str(item)
    dense = self._dense.get(key)
    if dense is None:
      raise RecommendError(f"{where}: unknown item id {key!r}")
    return dense

  def original(self, dense: int) -> str:
    return self.items[dense - 1]


# --- the workdir -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """What a trained workdir holds for serving."""
  workdir: str
  record: dict                 # run.json
  config: model_lib.ModelConfig
  chunk_size: int
  num_items: int
  ids: IdMap
  checkpoint_root: str
  step: int


def read_run(workdir: str, *, step: int | None = None) -> Run:
  """Reads run.json, the ids map and where the best fine-tuned checkpoint is.

  Without `step`, the workdir's fine-tuning must have finished (results.json
  written) and its best checkpoint is used; with one, that step of
  finetune_best/ (e.g. the best so far of a run still in progress).

  Raises:
    RecommendError / CheckpointError: a missing workdir, run record or checkpoint.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise RecommendError(f"workdir {workdir} does not exist")
  run_path = os.path.join(workdir, workdir_files.RUN_FILE)
  try:
    with open(run_path) as f:
      record = json.load(f)
  except FileNotFoundError:
    raise RecommendError(f"{run_path} is missing: {workdir} is not a train.py workdir") from None
  except (OSError, ValueError) as e:
    raise RecommendError(f"{run_path}: cannot read the run record ({e})") from None
  for key in ("config", "item_size", "attribute_size", "max_item"):
    if key not in record:
      raise RecommendError(f"{run_path}: field {key!r} is missing")
  best_dir = os.path.join(workdir, workdir_files.FINETUNE_BEST_DIR)
  if step is None:
    if not os.path.exists(os.path.join(workdir, workdir_files.RESULTS_FILE)):
      raise RecommendError(
          f"{workdir} has no finished fine-tuning (no {workdir_files.RESULTS_FILE}); pass a step of "
          f"{best_dir} to serve a checkpoint of an unfinished run")
    if not os.path.isdir(best_dir):
      raise RecommendError(f"{workdir} has no fine-tuned checkpoint ({best_dir} is missing)")
    root, step = checkpointing.resolve(best_dir)
  else:
    root, step = checkpointing.resolve(os.path.join(best_dir, str(int(step))))
  config = ml_collections.ConfigDict(record["config"])
  sizes = types.SimpleNamespace(item_size=record["item_size"],
                                attribute_size=record["attribute_size"])
  num_items = int(record["max_item"])
  ids_path = os.path.join(workdir, workdir_files.IDS_FILE)
  ids = (IdMap.from_file(ids_path, num_items) if os.path.exists(ids_path)
         else IdMap.identity(num_items))
  return Run(workdir=workdir, record=record, config=model_lib.model_config(config, sizes),
             chunk_size=int(config.eval.chunk_size), num_items=num_items, ids=ids,
             checkpoint_root=root, step=step)


def restore_scoring_params(run: Run, sharding) -> dict:
  """The checkpoint's `SCORING_PARAM_GROUPS`, placed with `sharding`."""
  # Only shapes are needed for the restore target: no parameters are drawn.
  template = jax.eval_shape(lambda key: model_lib.init_params(run.config, key),
                            jax.random.key(0))
  mngr = checkpointing.manager(run.checkpoint_root, read_only=True)
  try:
    params = checkpointing.restore_params(mngr, run.step, template, sharding,
                                          item_size=run.config.item_size)
  finally:
    mngr.close()
  return {name: params[name] for name in SCORING_PARAM_GROUPS}


def dense_histories(ids: IdMap, histories: Iterable[Sequence[Any]],
                    where: Sequence[str] | None = None) -> list[np.ndarray]:
  """Original-id histories -> dense int32 arrays.

  Args:
    ids: the run's id map.
    histories: lists of original item ids (str; ints are taken as their
      decimal strings), oldest first.
    where: a label per history for error messages (e.g. "users.txt:3"); an
      item is then named "LABEL, item N" (N from 1). Without labels, errors
      name `histories[i][j]` (0-based indices).

  Raises:
    RecommendError: for an empty history or an unknown id (naming the history
      and the position).
  """
  dense = []
  for i, history in enumerate(histories):
    label = where[i] if where is not None else f"histories[{i}]"
    item_label = ((lambda p: f"{label}, item {p + 1}") if where is not None
                  else (lambda p: f"{label}[{p}]"))
    if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
      raise RecommendError(f"{label}: a history must be a list of item ids, got {history!r}")
    history = list(history)
    if not history:
      raise RecommendError(f"{label}: the history is empty")
    dense.append(np.array([ids.dense(item, item_label(p)) for p, item in enumerate(history)],
                          np.int32))
  return dense


def check_k(k: Any, num_items: int) -> int:
  """k as an int in 1..num_items."""
  if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
    raise RecommendError(f"k must be a positive integer, got {k!r}")
  if k > num_items:
    raise RecommendError(f"k={k} is larger than the catalogue ({num_items} items)")
  return int(k)


# --- the recommender ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recommendation:
  """One history's recommendations, best first.

  Attributes:
    items: original item ids.
    scores: [n] float32 scores (dot products of the user and item representations).
    dense_items: [n] int32 dense ids of `items`.
  n is k, or fewer when fewer than k items remain once the history is left out.
  """
  items: list[str]
  scores: np.ndarray
  dense_items: np.ndarray

  def pairs(self) -> list[tuple[str, float]]:
    """[(original item id, score)], best first."""
    return [(item, float(score)) for item, score in zip(self.items, self.scores)]


class Recommender:
  """A fine-tuned model served on this process's devices.

  Parameters are replicated on every local device and a batch of histories
  is split over them. Histories go through the model in batches of a fixed
  size (the last one padded), so one program is compiled per (k, history
  width, exclude_history); the width is max_len, or the smallest multiple of
  it that holds the call's longest history.
  """

  def __init__(self, run: Run, params: dict, mesh, batch_size: int, ranking: str = "scan"):
    self.run = run
    self.ranking = ranking
    self.ids = run.ids
    self.config = run.config
    self.mesh = mesh
    # A whole number of rows per device.
    self.batch_size = math.ceil(batch_size / mesh.size) * mesh.size
    self.params = params
    self._compiled = {}

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, ranking: str = "scan") -> Recommender:
    """Loads the best fine-tuned parameters of `workdir` (see `read_run` for `step`)."""
    return cls.from_run(read_run(workdir, step=step), batch_size=batch_size, ranking=ranking)

  @classmethod
  def from_run(cls, run: Run, *, batch_size: int = DEFAULT_BATCH_SIZE,
               ranking: str = "scan") -> Recommender:
    """Loads the parameters of a `read_run` record. `ranking`: "scan", or "fused_cpu" (the
    native CPU kernel of eval.ranking, for CPU devices)."""
    if batch_size < 1:
      raise RecommendError(f"batch_size must be >= 1, got {batch_size}")
    try:
      methods.check("--ranking", ranking, "ranking")
    except methods.MethodError as e:
      raise RecommendError(str(e)) from None
    mesh = parallel.make_mesh(jax.local_devices())
    params = restore_scoring_params(run, parallel.replicated(mesh))
    return cls(run, params, mesh, batch_size, ranking)

  @property
  def num_items(self) -> int:
    return self.run.num_items

  def dense_histories(self, histories: Iterable[Sequence[Any]],
                      where: Sequence[str] | None = None) -> list[np.ndarray]:
    """See the module-level `dense_histories`."""
    return dense_histories(self.ids, histories, where)

  def _function(self, k: int, width: int, exclude_history: bool):
    key = (k, width, exclude_history)
    if key not in self._compiled:
      def body(params, histories):
        return score_histories(self.config, params, histories, num_items=self.num_items,
                               chunk_size=self.run.chunk_size, top_k=k,
                               exclude_history=exclude_history, ranking=self.ranking)
      # Rows are independent: each device ranks its own rows, with no
      # collectives (check_vma=False: the scan's fresh carry is per-device too).
      self._compiled[key] = jax.jit(jax.shard_map(
          body, mesh=self.mesh, in_specs=(P(), P(parallel.DATA_AXIS)),
          out_specs=(P(parallel.DATA_AXIS), P(parallel.DATA_AXIS)), check_vma=False))
    return self._compiled[key]

  def recommend_dense(self, histories: Sequence[np.ndarray], k: int, *,
                      exclude_history: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Dense histories (1-D int arrays, oldest first) -> items [N, k] int32, scores [N, k].

    Rows are as `score_histories` returns them (tail of id 0 / -inf where
    fewer than k candidates remain).
    """
    k = check_k(k, self.num_items)
    if not histories:
      return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    longest = max(len(h) for h in histories)
    width = self.config.max_len * max(1, math.ceil(longest / self.config.max_len))
    function = self._function(k, width, exclude_history)
    sharding = NamedSharding(self.mesh, P(parallel.DATA_AXIS))
    pending = []
    for start in range(0, len(histories), self.batch_size):
      rows = histories[start:start + self.batch_size]
      batch = jax.device_put(left_pad_rows(rows, self.batch_size, width), sharding)
      pending.append((len(rows), function(self.params, batch)))
    items = np.concatenate([np.asarray(out[0])[:n] for n, out in pending])
    scores = np.concatenate([np.asarray(out[1])[:n] for n, out in pending])
    return items, scores

  def recommend(self, histories: Iterable[Sequence[Any]], k: int = 10, *,
                exclude_history: bool = True,
                where: Sequence[str] | None = None) -> list[Recommendation]:
    """The k best items for each history, in original ids.

    Args:
      histories: lists of original item ids, oldest first (see `dense_histories`).
      k: items per history, 1..number of items.
      exclude_history: leave each history's items (all of them) out.
      where: labels of the histories for error messages.

    Returns:
      One `Recommendation` per history, in order.

    Raises:
      RecommendError: for a bad k, an empty history or an unknown id.
    """
    k = check_k(k, self.num_items)
    dense = self.dense_histories(histories, where)
    items, scores = self.recommend_dense(dense, k, exclude_history=exclude_history)
    return self.to_recommendations(items, scores)

  def to_recommendations(self, items: np.ndarray, scores: np.ndarray) -> list[Recommendation]:
    """`recommend_dense` rows -> `Recommendation`s in original ids (the id-0 tail dropped)."""
    out = []
    for row_items, row_scores in zip(items, scores):
      real = row_items > 0
      out.append(Recommendation(items=[self.ids.original(int(i)) for i in row_items[real]],
                                scores=row_scores[real], dense_items=row_items[real]))
    return out


# --- command line ------------------------------------------------------------


def read_users_file(path: str) -> tuple[list[Any], list[list[Any]], list[str]]:
  """(users, histories, labels) of a --users file; see the --help text for the format.

  Raises:
    RecommendError: for an unreadable file or a bad line, naming file:line.
  """
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise RecommendError(f"cannot read {path} ({e})") from None
  users, histories, labels = [], [], []
  for number, line in enumerate(lines, start=1):
    label = f"{path}:{number}"
    text = line.strip()
    if not text:
      continue
    if text.startswith("{"):
      try:
        entry = json.loads(text)
      except ValueError as e:
        raise RecommendError(f"{label}: not valid JSON ({e})") from None
      if not isinstance(entry, dict) or not isinstance(entry.get("history"), list):
        raise RecommendError(f"{label}: a JSON line needs a list \"history\" of item ids")
      users.append(entry.get("user"))
      histories.append(entry["history"])
    else:
      users.append(None)
      histories.append(text.split())
    labels.append(label)
  if not histories:
    raise RecommendError(f"{path} holds no history")
  return users, histories, labels


FLAGS = command.new_flags()
_MODEL = "model"
_INPUT = "input (one of --history and --users)"
_OUTPUT_GROUP = "output"
_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir.", flag_values=FLAGS,
                               module_name=_MODEL, required=True)
_STEP = flags.DEFINE_integer("step", None,
                             "A finetune_best step (default: the best of a finished run).",
                             flag_values=FLAGS, module_name=_MODEL)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE,
                                   "Histories per device program.", flag_values=FLAGS,
                                   module_name=_MODEL)
_RANKING = flags.DEFINE_enum(
    "ranking", methods.SCAN, methods.METHODS,
    f"{methods.SCAN} (XLA) or {methods.FUSED_CPU} (a native CPU kernel, compiled on first use; "
    "the same items up to last-bit rounding of the scores).", flag_values=FLAGS,
    module_name=_MODEL)
_HISTORY = flags.DEFINE_multi_string(
    "history", None, "Space-separated original item ids of one history, oldest first",
    flag_values=FLAGS, module_name=_INPUT)  # absl adds: "; repeat this option ..."
_USERS = flags.DEFINE_string(
    "users", None, "A FILE of one history per line: JSON {\"user\": ..., \"history\": "
    "[\"id\", ...]} or plain space-separated ids (blank lines are skipped).", flag_values=FLAGS,
    module_name=_INPUT)
_K = flags.DEFINE_integer("k", 10, "Items per history.", flag_values=FLAGS,
                          module_name=_OUTPUT_GROUP)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Write the JSON lines to this FILE (atomically) instead of stdout.",
    flag_values=FLAGS, module_name=_OUTPUT_GROUP)
_KEEP_HISTORY = flags.DEFINE_bool(
    "keep_history", False, "Do not leave the history's items out of the recommendations.",
    flag_values=FLAGS, module_name=_OUTPUT_GROUP)

_USAGE = (f"{PROG} --workdir DIR (--history \"ID ...\" ... | --users FILE) [flags]: top-k "
          "recommendations of a trained workdir's best fine-tuned model.\n\n"
          "Output: one JSON line per history, in input order: {\"user\": ..., \"items\": "
          "[original item ids, best first], \"scores\": [...]}; \"user\" is the input's "
          "\"user\" value, or null where it has none. Each history's items are left out "
          "(unless --keep_history).")


def quiet_libraries() -> None:
  """Keeps a command's output to its own lines: no XLA, JAX or orbax log noise."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("jax").setLevel(logging.ERROR)


def _inputs() -> tuple[list[Any], list[list[Any]], list[str]]:
  """(users, histories, labels) of --history or --users: exactly one of them."""
  if FLAGS["history"].present and FLAGS["users"].present:
    raise errors.UsageError("--history and --users do not go together: give one of them")
  if FLAGS["users"].present:
    return read_users_file(_USERS.value)
  if not FLAGS["history"].present:
    raise errors.UsageError("give the histories: --history \"ID ...\" (repeatable) or "
                            "--users FILE")
  histories = [h.split() for h in _HISTORY.value]
  return ([None] * len(histories), histories,
          [f"--history {i + 1}" for i in range(len(histories))])


def _run(words: list[str]) -> None:
  command.only_words(words, 0)
  quiet_libraries()
  users, histories, labels = _inputs()
  # Everything the input can get wrong is checked before the model loads.
  run = read_run(_WORKDIR.value, step=_STEP.value)
  k = check_k(_K.value, run.num_items)
  dense = dense_histories(run.ids, histories, labels)
  recommender = Recommender.from_run(run, batch_size=_BATCH_SIZE.value, ranking=_RANKING.value)
  items, scores = recommender.recommend_dense(dense, k, exclude_history=not _KEEP_HISTORY.value)
  results = recommender.to_recommendations(items, scores)
  text = "".join(json.dumps({"user": user, "items": r.items,
                             "scores": [float(s) for s in r.scores]}) + "\n"
                 for user, r in zip(users, results))
  if _OUTPUT.value:
    files.write_text_atomic(_OUTPUT.value, text)
  else:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (2 for a user error)."""
  return command.run(PROG, FLAGS, _run, argv, doc=_USAGE)


if __name__ == "__main__":
  sys.exit(main())
