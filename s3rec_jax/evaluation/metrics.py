"""Ranking metrics for the sampled and full-ranking evaluation protocols.

Everything except `finalize` is pure jax.numpy with static shapes, so it can run
inside a jitted evaluation step whose batch of users is sharded over a device
mesh: per-user work is elementwise and batch reductions are plain sums. The
host accumulates the per-batch sums (`metric_sums`) over the whole split and
calls `finalize` once.

Rank convention (both protocols): the rank of the answer is the number of OTHER
candidates scoring >= the answer, so exact ties never favour the answer (a
collapsed model that scores everything equally gets HR@1 = 0, not 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from s3rec_jax.core import hashing
from s3rec_jax.ops import fused_ranking
from s3rec_jax.ops import methods

SAMPLED_METRICS = ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "MRR")
# How full_ranking scores and ranks: an XLA scan, or the fused native CPU kernel.
RANKING_METHODS = methods.METHODS
FULL_METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")

# Scores are float32 products on every backend: TPUs (bfloat16 passes by default) and GPUs
# (TF32) would otherwise rank, and report metrics, differently from the CPU.
SCORE_PRECISION = lax.Precision.HIGHEST

_METRIC_RE = re.compile(r"^(HR|NDCG)@([1-9][0-9]*)$")
_VALID_FORMS = "'HR@k', 'NDCG@k' (k a positive integer) or 'MRR'"


def parse_metric(name: str) -> tuple[str, int | None]:
  """Splits a metric name into (kind, k); k is None for MRR.

  Raises:
    ValueError: if the name is not one of the valid forms.
  """
  if name == "MRR":
    return "MRR", None
  match = _METRIC_RE.match(name)
  if match is None:
    raise ValueError(f"Unknown metric {name!r}; valid forms are {_VALID_FORMS}.")
  return match.group(1), int(match.group(2))


def rank_of_first(scores: jax.Array) -> jax.Array:
  """Rank of column 0 (the answer) among the columns of `scores`.

  Args:
    scores: [B, C] scores; column 0 is the answer, columns 1.. the negatives.

  Returns:
    [B] int32: the number of other candidates scoring >= the answer (0 = best).
    A NaN answer score gets the worst rank C - 1.
  """
  chex.assert_rank(scores, 2)
  answer = scores[:, :1]
  # A NaN answer compares False with everything, which would make it "best";
  # count every candidate as beating it instead.
  beaten_by = (scores[:, 1:] >= answer) | jnp.isnan(answer)
  return jnp.sum(beaten_by, axis=1, dtype=jnp.int32)


def metric_sums(
    ranks: jax.Array, weights: jax.Array, names: Sequence[str]
) -> dict[str, jax.Array]:
  """Weighted per-metric sums over the users of one batch.

  Args:
    ranks: [B] integer ranks (0 = best).
    weights: [B] per-user weights, 0 for padding users of a partial batch.
    names: metric names, each "HR@k", "NDCG@k" or "MRR".

  Returns:
    {name: float32 scalar sum over users of metric * weight} plus
    'count' = sum(weights). Sums (not means) so that batches and devices
    combine exactly; divide on the host with `finalize`.

  Raises:
    ValueError: for an unknown metric name (checked at trace time).
  """
  chex.assert_rank([ranks, weights], 1)
  chex.assert_equal_shape([ranks, weights])
  parsed = [(name, *parse_metric(name)) for name in names]
  weights = weights.astype(jnp.float32)
  ranks_f = ranks.astype(jnp.float32)
  sums = {}
  for name, kind, k in parsed:
    if kind == "MRR":
      per_user = 1.0 / (ranks_f + 1.0)
    else:
      hit = (ranks < k).astype(jnp.float32)
      # log2(rank + 2) >= 1, so no division by zero for any rank >= 0.
      per_user = hit if kind == "HR" else hit / jnp.log2(ranks_f + 2.0)
    sums[name] = jnp.sum(per_user * weights)
  sums["count"] = jnp.sum(weights)
  return sums


def finalize(sums: Mapping[str, np.ndarray | float]) -> dict[str, float]:
  """Host side: turns accumulated sums into means (drops 'count').

  Raises:
    ValueError: if 'count' is missing or not positive.
  """
  if "count" not in sums:
    raise ValueError("sums must contain 'count' (as returned by metric_sums).")
  count = float(np.asarray(sums["count"], dtype=np.float64))
  if not count > 0:
    raise ValueError(f"Cannot finalize metrics over count={count}.")
  return {
      name: float(np.asarray(value, dtype=np.float64)) / count
      for name, value in sums.items()
      if name != "count"
  }


# Matmul kernels may round the same dot product differently depending on the
# output column it lands in (measured on XLA:CPU: the vectorised tail columns of
# a [1, H] x [H, 100] product differ in the last bit). A collapsed model (all
# item rows equal) would then get random ties broken in the answer's favour. So
# scores of bit-identical embedding rows are snapped to the answer's score: their
# exact scores are equal, so this only removes rounding noise. Rows are compared
# by a 64-bit fingerprint whose integer sum is exact in any reduction order.
_FP_MULT = (0x9E3779B1, 0x85EBCA77)
_FP_SALT = (0x7FEB352D, 0x846CA68B)


def row_fingerprints(rows: jax.Array) -> jax.Array:
  """[..., H] float rows -> [..., 2] uint32; equal rows get equal fingerprints.

  -0.0 and +0.0 are treated as equal (they score identically).
  """
  rows = jnp.where(rows == 0, jnp.zeros_like(rows), rows)
  bits_dtype = {2: jnp.uint16, 4: jnp.uint32}.get(rows.dtype.itemsize)
  if bits_dtype is None or not jnp.issubdtype(rows.dtype, jnp.floating):
    raise ValueError(f"Unsupported embedding dtype {rows.dtype} (need 16/32-bit float).")
  bits = lax.bitcast_convert_type(rows, bits_dtype).astype(jnp.uint32)
  position = jnp.arange(rows.shape[-1], dtype=jnp.uint32)
  halves = []
  for mult, salt in zip(_FP_MULT, _FP_SALT):
    # Position-dependent mixing, then an order-independent wrapping sum.
    mixed = hashing.mix32(bits * jnp.uint32(mult) + position * jnp.uint32(salt) + jnp.uint32(salt))
    halves.append(jnp.sum(mixed, axis=-1, dtype=jnp.uint32))
  return jnp.stack(halves, axis=-1)


def table_fingerprints(item_table: jax.Array, chunk_size: int = 8192) -> jax.Array:
  """`row_fingerprints` of every row of the table, [item_size, 2], in chunks of rows.

  Computed once per evaluation pass (the table is fixed during it), so the
  steps look fingerprints up instead of hashing every scored row of every
  batch; the chunks bound the scratch memory whatever the catalogue size.
  """
  chex.assert_rank(item_table, 2)
  size = item_table.shape[0]
  chunk = max(1, min(chunk_size, size))
  padded = jnp.pad(item_table, ((0, -size % chunk), (0, 0)))
  fps = lax.map(row_fingerprints, padded.reshape(-1, chunk, item_table.shape[1]))
  return fps.reshape(-1, 2)[:size]


def _same_row(fp_a: jax.Array, fp_b: jax.Array) -> jax.Array:
  return jnp.all(fp_a == fp_b, axis=-1)


def sampled_scores(
    user_repr: jax.Array, item_table: jax.Array, candidates: jax.Array,
    fingerprints: jax.Array | None = None,
) -> jax.Array:
  """Scores of per-user candidate lists by dot product (no bias).

  Args:
    user_repr: [B, H] user representations (encoder output at the last position).
    item_table: [item_size, H] item embeddings.
    candidates: [B, C] item ids; column 0 the answer, 1.. the negatives.
    fingerprints: `table_fingerprints(item_table)`, if already computed.

  Returns:
    [B, C] scores. Candidates whose embedding row is bit-identical to the
    answer's get exactly the answer's score, so `rank_of_first` counts such
    ties against the answer whatever the matmul kernel's rounding.
  """
  chex.assert_rank([user_repr, item_table, candidates], [2, 2, 2])
  chex.assert_equal_shape_prefix([user_repr, candidates], 1)
  chex.assert_equal_shape_suffix([user_repr, item_table], 1)
  # mode="clip": ids are in range (checked on load), and the default "fill"
  # mode's out-of-range select costs XLA:CPU about as much as the gather.
  rows = jnp.take(item_table, candidates, axis=0, mode="clip")  # [B, C, H]
  # A batched matrix-vector product; XLA:CPU runs it faster as a dot than as
  # a fused multiply-sum.
  scores = jnp.einsum("bh,bch->bc", user_repr, rows, precision=SCORE_PRECISION)
  fps = (row_fingerprints(rows) if fingerprints is None
         else jnp.take(fingerprints, candidates, axis=0, mode="clip"))
  same_as_answer = _same_row(fps, fps[:, :1])
  return jnp.where(same_as_answer, scores[:, :1], scores)


def full_ranking(
    user_repr: jax.Array,
    item_table: jax.Array,
    answers: jax.Array,
    history: jax.Array,
    *,
    num_items: int,
    chunk_size: int,
    top_k: int,
    fingerprints: jax.Array | None = None,
    axis_name: str | None = None,
    method: str = "scan",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Ranks the answer among all real items, in chunks of the catalogue.

  Candidates are item ids 1..num_items (row 0 is padding; rows beyond num_items,
  e.g. the mask token, are never candidates), minus the user's history items
  other than the answer itself. Never materialises [B, num_items]: a scan runs
  over catalogue chunks of `chunk_size` rows, counting candidates that score >=
  the answer and merging a running top-k. Items whose embedding row is
  bit-identical to the answer's get exactly the answer's score (see
  `row_fingerprints`), so exact ties always count against the answer.

  With `axis_name` (inside `shard_map` over that mesh axis) the catalogue is
  split over the axis instead of copied to every device: `item_table` and
  `fingerprints` are this device's block of consecutive rows (device i holds
  ids [i * S, (i + 1) * S) of a table padded to S * axis size rows), the users
  are the same on every device, and the results are global: counts are summed
  and the per-device top-k lists merged. Ties still resolve to the lowest id.

  Args:
    user_repr: [B, H] user representations.
    item_table: [item_size, H] item embeddings, item_size > num_items (with
      `axis_name`: this device's [S, H] block).
    answers: [B] int answer ids in 1..num_items (not checked at run time).
    history: [B, Lh] int, 0-padded history ids in any order, repeats allowed;
      may contain the answer, which stays a candidate.
    num_items: number of real items (static).
    chunk_size: catalogue rows scored per scan step (static); any value >= 1,
      values >= num_items give a single chunk.
    top_k: number of best remaining candidates to return (static); 0 for the
      ranks alone (what evaluation needs: no running top-k at all).
    fingerprints: `table_fingerprints(item_table)`, if already computed
      (otherwise each chunk's rows are fingerprinted as they are scored).
    axis_name: the mesh axis the catalogue is split over, or None.
    method: "scan" (XLA: a scan over chunks) or "fused_cpu" (a native CPU
      kernel that makes each tile of scores in registers and counts and
      merges it there, never storing a score; see
      s3rec_jax/ops/kernels/full_ranking_cpu.cc). The same candidates, ties and
      outputs; scores may differ from the scan's in the last bit (another
      summation order), so near-ties may rank differently. `chunk_size` and
      `fingerprints` are the scan's only: in the kernel every dot product
      sums in the same order, so rows bit-identical to the answer's row
      score exactly the answer's score without fingerprints.

  Returns:
    ranks: [B] int32, number of other remaining candidates scoring >= the answer.
    top_items: [B, top_k] int32 item ids, best first; ties by lowest id. If
      fewer than top_k candidates remain, the tail holds id 0 with score -inf.
    top_scores: [B, top_k] their scores.

  Raises:
    ValueError: for inconsistent static sizes.
  """
  chex.assert_rank([user_repr, item_table, answers, history], [2, 2, 1, 2])
  chex.assert_equal_shape_prefix([user_repr, answers, history], 1)
  chex.assert_equal_shape_suffix([user_repr, item_table], 1)
  chex.assert_type([answers, history], int)
  local_size = item_table.shape[0]
  num_shards = 1 if axis_name is None else lax.axis_size(axis_name)
  item_size = local_size * num_shards
  batch = user_repr.shape[0]
  if not 1 <= num_items < item_size:
    raise ValueError(
        f"Need 1 <= num_items < item_size (row 0 is padding); got "
        f"num_items={num_items}, item_size={item_size}.")
  if chunk_size < 1 or top_k < 0:
    raise ValueError(f"need chunk_size >= 1 and top_k >= 0; got {chunk_size}, {top_k}.")
  if method not in RANKING_METHODS:
    raise ValueError(f"unknown ranking method {method!r}; expected one of {RANKING_METHODS}")

  # Local rows scanned: ids 1..num_items of a whole table; every row of a block.
  first_row, scan_rows = (1, num_items) if axis_name is None else (0, local_size)
  base = 0 if axis_name is None else lax.axis_index(axis_name) * local_size  # id of local row 0
  chunk, num_chunks = _chunking(scan_rows, chunk_size)
  score_dtype = jnp.result_type(user_repr.dtype, item_table.dtype)
  neg_inf = jnp.array(-jnp.inf, score_dtype)
  user_repr = user_repr.astype(score_dtype)
  item_table = item_table.astype(score_dtype)

  answers = answers.astype(jnp.int32)
  history = history.astype(jnp.int32)
  # History entries to remove from the candidates: real ids other than the answer.
  excluded = (history > 0) & (history != answers[:, None])
  if method == methods.FUSED_CPU:
    ranks, top_items, top_scores = _fused_cpu_ranking(
        user_repr, item_table, answers, history, base, num_items, top_k, axis_name)
    return _merge_devices(ranks, top_items, top_scores, top_k, axis_name)

  answer_rows, answer_fp = _answer_rows(item_table, fingerprints, answers, base, axis_name)
  answer_score = jnp.sum(user_repr * answer_rows, axis=-1)
  if answer_fp is None:
    answer_fp = row_fingerprints(answer_rows)  # [B, 2]

  def step_fn(carry, step):
    count, top_scores, top_items = carry
    start, offset, rows = _chunk_rows(item_table, first_row, step, chunk)
    scores = lax.dot_general(user_repr, rows, (((1,), (1,)), ((), ())),
                             precision=SCORE_PRECISION)  # [B, chunk]
    # Without precomputed fingerprints, each chunk is fingerprinted here
    # (hashing the whole table at once needs scratch the size of the table).
    fps = (row_fingerprints(rows) if fingerprints is None
           else lax.dynamic_slice_in_dim(fingerprints, offset, chunk, axis=0))
    same_as_answer = _same_row(fps[None, :, :], answer_fp[:, None, :])
    scores = jnp.where(same_as_answer, answer_score[:, None], scores)

    ids = base + offset + jnp.arange(chunk, dtype=jnp.int32)
    in_range = (ids >= base + start) & (ids >= 1) & (ids <= num_items)
    candidate = _chunk_candidates(in_range, history, excluded, base + offset)

    others = candidate & (ids[None, :] != answers[:, None])
    # A NaN answer score compares False with everything; never let it win.
    beats = (scores >= answer_score[:, None]) | jnp.isnan(answer_score)[:, None]
    if top_k == 0:
      return (count + jnp.sum(others & beats, axis=1, dtype=jnp.int32), top_scores,
              top_items), None
    chunk_count, top_scores, top_items = _merge_chunk_top_k(
        top_scores, top_items, scores, candidate, ids, top_k, counted=others & beats)
    return (count + chunk_count, top_scores, top_items), None

  init = (
      jnp.zeros((batch,), jnp.int32),
      jnp.full((batch, top_k), neg_inf),
      jnp.zeros((batch, top_k), jnp.int32),
  )
  steps = jnp.arange(num_chunks, dtype=jnp.int32)
  (ranks, top_scores, top_items), _ = lax.scan(step_fn, init, steps)
  return _merge_devices(ranks, top_items, top_scores, top_k, axis_name)


def _merge_devices(ranks, top_items, top_scores, top_k, axis_name):
  """Per-device counts and top-k lists -> global ones (as they are without `axis_name`)."""
  if axis_name is not None:
    ranks = lax.psum(ranks, axis_name)
  if axis_name is not None and top_k:
    # Devices hold increasing ids, so the gathered lists are in id order and
    # the merge keeps resolving ties to the lowest id.
    top_scores, top_items = _top_k_of(lax.all_gather(top_scores, axis_name, axis=1, tiled=True),
                                      lax.all_gather(top_items, axis_name, axis=1, tiled=True),
                                      top_k)
  return ranks, top_items, top_scores


def _fused_cpu_ranking(user_repr, item_table, answers, history, base, num_items, top_k,
                       axis_name):
  """This device's counts and top-k list from the native kernel (float32)."""
  answer_rows, _ = _answer_rows(item_table, None, answers, base, axis_name)
  return fused_ranking.device_ranking(user_repr, item_table, answer_rows, answers, history,
                                      base, num_items=num_items, top_k=top_k)


def top_k_items(
    user_repr: jax.Array,
    item_table: jax.Array,
    exclude: jax.Array,
    *,
    num_items: int,
    chunk_size: int,
    top_k: int,
    method: str = "scan",
) -> tuple[jax.Array, jax.Array]:
  """The `top_k` best-scoring real items per user, in chunks of the catalogue.

  Candidates are item ids 1..num_items (row 0 is padding; rows beyond
  num_items, e.g. the mask token, are never candidates) minus the user's
  `exclude` ids. As in `full_ranking`, a scan runs over catalogue chunks of
  `chunk_size` rows merging a running top-k, so memory stays [B, chunk]
  whatever the catalogue size. Works with a symbolic batch dimension (for
  `jax.export`).

  Args:
    user_repr: [B, H] user representations.
    item_table: [item_size, H] item embeddings, item_size > num_items.
    exclude: [B, E] int ids to leave out, in any order, repeats allowed; 0 and
      ids outside 1..num_items are ignored (0 pads a row).
    num_items: number of real items (static).
    chunk_size: catalogue rows scored per scan step (static), >= 1.
    top_k: number of items to return (static), >= 1.
    method: "scan" or "fused_cpu", as for `full_ranking` (the kernel needs a
      concrete batch size: no symbolic dimension).

  Returns:
    items: [B, top_k] int32 item ids, best first; equal scores by lowest id.
      If fewer than top_k candidates remain, the tail holds id 0 with score -inf.
    scores: [B, top_k] their dot-product scores.

  Raises:
    ValueError: for inconsistent static sizes.
  """
  chex.assert_rank([user_repr, item_table, exclude], [2, 2, 2])
  chex.assert_equal_shape_prefix([user_repr, exclude], 1)
  chex.assert_equal_shape_suffix([user_repr, item_table], 1)
  chex.assert_type(exclude, int)
  if not 1 <= num_items < item_table.shape[0]:
    raise ValueError(
        f"Need 1 <= num_items < item_size (row 0 is padding); got "
        f"num_items={num_items}, item_size={item_table.shape[0]}.")
  if chunk_size < 1 or top_k < 1:
    raise ValueError(f"chunk_size and top_k must be >= 1; got {chunk_size}, {top_k}.")
  if method not in RANKING_METHODS:
    raise ValueError(f"unknown ranking method {method!r}; expected one of {RANKING_METHODS}")
  batch = user_repr.shape[0]
  if method == methods.FUSED_CPU:
    # full_ranking's kernel with no answer (id 0 is never a candidate) and the
    # excluded ids as the history.
    _, top_items, top_scores = _fused_cpu_ranking(
        user_repr, item_table, jnp.zeros((batch,), jnp.int32), exclude.astype(jnp.int32), 0,
        num_items, top_k, None)
    return top_items, top_scores
  chunk, num_chunks = _chunking(num_items, chunk_size)
  score_dtype = jnp.result_type(user_repr.dtype, item_table.dtype)
  user_repr = user_repr.astype(score_dtype)
  item_table = item_table.astype(score_dtype)
  exclude = exclude.astype(jnp.int32)
  excluded = exclude > 0

  def step_fn(carry, step):
    top_scores, top_items = carry
    start, offset, rows = _chunk_rows(item_table, 1, step, chunk)
    scores = lax.dot_general(user_repr, rows, (((1,), (1,)), ((), ())),
                             precision=SCORE_PRECISION)  # [B, chunk]
    ids = offset + jnp.arange(chunk, dtype=jnp.int32)
    in_range = (ids >= start) & (ids <= num_items)
    candidate = _chunk_candidates(in_range, exclude, excluded, offset)
    _, top_scores, top_items = _merge_chunk_top_k(top_scores, top_items, scores, candidate, ids,
                                                  top_k)
    return (top_scores, top_items), None

  init = (jnp.full((batch, top_k), -jnp.inf, score_dtype), jnp.zeros((batch, top_k), jnp.int32))
  (top_scores, top_items), _ = lax.scan(step_fn, init, jnp.arange(num_chunks, dtype=jnp.int32))
  return top_items, top_scores


def _chunking(scan_rows: int, chunk_size: int) -> tuple[int, int]:
  """(rows per chunk, number of chunks) to scan `scan_rows` rows."""
  chunk = min(chunk_size, scan_rows)
  return chunk, math.ceil(scan_rows / chunk)


def _chunk_rows(table, first_row, step, chunk):
  """(start, offset, rows) of scan step `step`: the chunk's rows [start, start + chunk).

  The last chunk's slice is shifted back to stay inside the table (`offset`
  is the local row of `rows[0]`); its rows below `start` were already seen,
  and the caller masks them out.
  """
  start = first_row + step * chunk
  offset = jnp.minimum(start, table.shape[0] - chunk)
  return start, offset, lax.dynamic_slice_in_dim(table, offset, chunk, axis=0)


def _chunk_candidates(in_range, exclude, excluded, first_id):
  """[B, chunk] bool: chunk ids that are in range and not excluded for the user.

  Args:
    in_range: [chunk] bool, which of the chunk's ids may be candidates at all.
    exclude: [B, E] int32 ids; entries where `excluded` [B, E] is False are ignored.
    first_id: id of the chunk's first row.
  """
  chunk = in_range.shape[0]
  batch = exclude.shape[0]
  local = exclude - first_id
  # Out-of-chunk positions go to index `chunk` and are dropped; negative
  # indices would otherwise wrap around.
  local = jnp.where(excluded & (local >= 0) & (local < chunk), local, chunk)
  candidate = jnp.broadcast_to(in_range, (batch, chunk))
  user_idx = jnp.arange(batch, dtype=jnp.int32)
  return candidate.at[user_idx[:, None], local].set(False, mode="drop")


def _merge_chunk_top_k(top_scores, top_items, scores, candidate, ids, top_k, counted=None):
  """Merges the best candidates of a chunk's [B, chunk] scores into the running top-k.

  Returns (per-user count of `counted` [B, chunk] (0 without it), top scores, top items).
  """
  chunk_scores, chunk_idx, picked, count = _top_k_columns(
      scores, candidate, min(top_k, ids.shape[0]), counted)
  chunk_items = jnp.where(picked, ids[chunk_idx], 0)
  return (count,) + _merge_top_k(top_scores, top_items, chunk_scores, chunk_items, top_k)


def _canonical(scores):
  """-0.0 as 0.0 and every NaN as the positive one: lax.top_k orders -0.0 below
  0.0 and a negative NaN below everything, where max and a tie see one value."""
  scores = jnp.where(scores == 0, jnp.zeros_like(scores), scores)
  return jnp.where(jnp.isnan(scores), jnp.array(jnp.nan, scores.dtype), scores)


def _candidate_scores(scores, candidate):
  """Canonical scores of the candidates, -inf elsewhere: what the top-k ranks."""
  return jnp.where(candidate, _canonical(scores), jnp.array(-jnp.inf, scores.dtype))


# Columns per group in `_top_k_columns`: about sqrt(chunk / k) for the chunks
# and k of evaluation, where the two top_k passes cost the least.
_TOP_K_GROUP = 16


def _top_k_columns(scores, candidate, k, counted=None):
  """lax.top_k of `_candidate_scores(scores, candidate)` [B, C], exactly (ties to the lower
  column), through a top_k over groups of columns; also whether each pick is a candidate,
  and the per-user number of True entries of `counted` [B, C] (0 without it).

  The k best columns lie in the k groups of columns with the best maxima: a
  column outside them is beaten by each of those k groups' maxima (or tied
  with it at a lower column). So the top_k runs over C / G group maxima and
  then over those k groups' k * G columns, instead of over all C columns
  (lax.top_k is a partial sort on CPU, far costlier per column than a max).
  The masked [B, C] scores are never stored: one reduction over the groups
  reads the scores and the masks once for the group maxima and the count
  (separate passes re-read a wide chunk from memory), and the picked groups
  are masked again.
  """
  batch, width = scores.shape
  group = _TOP_K_GROUP
  no_count = jnp.zeros((batch,), jnp.int32)
  if width % group or width // group <= k or scores.dtype != jnp.float32:
    best, columns = lax.top_k(_candidate_scores(scores, candidate), k)
    count = no_count if counted is None else jnp.sum(counted, axis=1, dtype=jnp.int32)
    return best, columns, jnp.take_along_axis(candidate, columns, axis=1), count
  grouped = scores.reshape(batch, width // group, group)
  grouped_candidate = candidate.reshape(batch, width // group, group)
  # Group maxima in lax.top_k's own order, through integer keys (a float max
  # on XLA:CPU may skip NaNs).
  keys = _order_key(_candidate_scores(grouped, grouped_candidate))
  if counted is None:
    group_max, count = jnp.max(keys, axis=2), no_count
  else:
    flags = counted.reshape(grouped.shape).astype(jnp.int32)
    group_max, group_count = lax.reduce(
        (keys, flags), (jnp.int32(jnp.iinfo(jnp.int32).min), jnp.int32(0)),
        lambda a, b: (jnp.maximum(a[0], b[0]), a[1] + b[1]), (2,))
    count = jnp.sum(group_count, axis=1)
  _, best_groups = lax.top_k(_from_order_key(group_max), k)
  best_groups = jnp.sort(best_groups, axis=1)[:, :, None]  # column order, for the ties
  picked_candidate = jnp.take_along_axis(grouped_candidate, best_groups, axis=1).reshape(
      batch, k * group)
  picked = _candidate_scores(
      jnp.take_along_axis(grouped, best_groups, axis=1).reshape(batch, k * group),
      picked_candidate)
  best, pick = lax.top_k(picked, k)
  columns = (jnp.take_along_axis(best_groups[:, :, 0], pick // group, axis=1) * group
             + pick % group)
  return best, columns, jnp.take_along_axis(picked_candidate, pick, axis=1), count


def _flip_negatives(bits):
  """Reverses the order of the negative int32s: float bits <-> order keys (its own inverse)."""
  return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _order_key(scores):
  """float32 -> int32 keys that order as lax.top_k orders canonical floats."""
  return _flip_negatives(lax.bitcast_convert_type(scores, jnp.int32))


def _from_order_key(keys):
  """The float32 scores of `_order_key` keys."""
  return lax.bitcast_convert_type(_flip_negatives(keys), jnp.float32)


def _top_k_of(scores, items, top_k):
  """The `top_k` best columns of [B, N] scores and their items; lax.top_k keeps the
  lower column on ties, so lists laid out in id order resolve ties to the lowest id."""
  best, pick = lax.top_k(scores, top_k)
  return best, jnp.take_along_axis(items, pick, axis=1)


def _merge_top_k(top_scores, top_items, new_scores, new_items, top_k):
  # Previous best first: earlier chunks hold lower ids.
  return _top_k_of(jnp.concatenate([top_scores, new_scores], axis=1),
                   jnp.concatenate([top_items, new_items], axis=1), top_k)


def _answer_rows(item_table, fingerprints, answers, base, axis_name):
  """The answers' embedding rows [B, H] (and fingerprints [B, 2], or None if not precomputed).

  With a catalogue split over `axis_name`, the device holding an answer's row
  contributes it and the others zeros, summed over the axis (exact: x + 0 = x).
  """
  if axis_name is None:
    fps = None if fingerprints is None else jnp.take(fingerprints, answers, axis=0)
    return jnp.take(item_table, answers, axis=0), fps
  local = answers - base
  owned = (local >= 0) & (local < item_table.shape[0])
  local = jnp.clip(local, 0, item_table.shape[0] - 1)
  rows = jnp.where(owned[:, None], jnp.take(item_table, local, axis=0), 0)
  fps = None
  if fingerprints is not None:
    fps = lax.psum(jnp.where(owned[:, None], jnp.take(fingerprints, local, axis=0), 0),
                   axis_name)
  return lax.psum(rows, axis_name), fps
