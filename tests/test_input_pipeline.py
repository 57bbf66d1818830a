"""Pre-training, fine-tuning and evaluation batches: the reference's sampling, seeded."""

import numpy as np
import pytest

from s3rec_jax.data import dataset as data
from s3rec_jax.data import input_pipeline as ip

L = 8


@pytest.fixture(scope="module")
def ds():
  return data.synthetic_dataset(num_users=40, num_items=60, num_attributes=8, min_len=3,
                                max_len=14, seed=3, num_negatives=20)


@pytest.fixture(scope="module")
def pre(ds):
  # The reference's layout (one sequence per row) makes rows easy to check.
  return ip.PretrainBatches(ds, ip.PretrainSettings(batch_size=16, max_len=L, mask_p=0.2,
                                                    negative_high=ds.mask_id, pack=False), seed=7)


def _prefix(ds, pre, i):
  starts, ends = pre.prefixes.ranges(np.array([i]))
  return ds.items[starts[0]:ends[0]]


def test_epoch_visits_every_prefix_once(pre):
  seen = np.concatenate([pre.order(0)[s * 16:(s + 1) * 16] for s in range(pre.steps_per_epoch)])
  assert sorted(seen) == list(range(pre.num_sequences))
  batches = list(pre.epoch(0))
  assert len(batches) == pre.steps_per_epoch
  assert sum(b["weights"].sum() for b in batches) == pre.num_sequences
  last = batches[-1]
  pad = last["weights"] == 0
  if pad.any():  # padding rows are empty
    for key in ("items", "masked_items", "segment_context", "segment_positive"):
      assert (last[key][pad] == 0).all()


def test_masked_item_batch_follows_the_reference(ds, pre):
  order = pre.order(0)
  masked_total = maskable_total = 0
  for step, batch in enumerate(pre.epoch(0)):
    for r, i in enumerate(order[step * 16:(step + 1) * 16]):
      t = _prefix(ds, pre, i)
      n = len(t)
      items, masked, neg = batch["items"][r], batch["masked_items"][r], batch["negative_items"][r]
      np.testing.assert_array_equal(items[L - n:], t)
      assert (items[:L - n] == 0).all() and (masked[:L - n] == 0).all()
      assert masked[-1] == ds.mask_id                               # the last item: always masked
      is_mask = masked == ds.mask_id
      np.testing.assert_array_equal(masked[~is_mask], items[~is_mask])  # the rest unchanged
      assert ((neg[is_mask] >= 1) & (neg[is_mask] <= ds.mask_id)).all()
      assert not np.isin(neg[is_mask], t).any()                     # never an item of t
      assert (neg[~is_mask] == 0).all()
      masked_total += is_mask[L - n:-1].sum()
      maskable_total += n - 1
  assert 0.15 < masked_total / maskable_total < 0.25


def test_segment_views_follow_the_reference(ds, pre):
  order = pre.order(1)
  long = ds.items
  spans = []
  for step, batch in enumerate(pre.epoch(1)):
    for r, i in enumerate(order[step * 16:(step + 1) * 16]):
      t = _prefix(ds, pre, i)
      n = len(t)
      ctx, pos, neg = (batch[k][r][L - n:] for k in ("segment_context", "segment_positive",
                                                       "segment_negative"))
      for view in ("segment_context", "segment_positive", "segment_negative"):
        assert (batch[view][r][:L - n] == 0).all()
      if n < 2:
        for view in (ctx, pos, neg):
          np.testing.assert_array_equal(view, t)
        continue
      span = np.flatnonzero(ctx == ds.mask_id)
      k = len(span)
      assert 1 <= k <= n // 2 and (np.diff(span) == 1).all()
      np.testing.assert_array_equal(np.delete(ctx, span), np.delete(t, span))
      np.testing.assert_array_equal(pos[span], t[span])
      assert (np.delete(pos, span) == ds.mask_id).all() and (np.delete(neg, span) == ds.mask_id).all()
      # The negative span is a contiguous slice of the concatenated sequences.
      window = np.lib.stride_tricks.sliding_window_view(long, k)
      assert (window == neg[span]).all(axis=1).any()
      spans.append((n, k, span[0]))
  assert len({k for _, k, _ in spans}) > 1 and len({s for _, _, s in spans}) > 1


def test_batches_are_a_function_of_seed_epoch_and_step(ds, pre):
  a = list(pre.epoch(2))
  b = list(pre.epoch(2, start_step=1))
  for key in a[1]:
    np.testing.assert_array_equal(a[1][key], b[0][key])
  other = ip.PretrainBatches(ds, pre.settings, seed=8)
  assert not np.array_equal(next(other.epoch(2))["masked_items"], a[0]["masked_items"])
  assert not np.array_equal(next(pre.epoch(3))["items"], a[0]["items"])


def test_negative_range_without_mask_token(ds):
  pre = ip.PretrainBatches(ds, ip.PretrainSettings(16, L, 0.9, negative_high=ds.max_item,
                                                   pack=False), seed=1)
  negs = np.concatenate([b["negative_items"].ravel() for b in pre.epoch(0)])
  assert negs.max() <= ds.max_item and (negs > 0).sum() > 100


def test_finetune_batches(ds):
  splits = data.finetune_splits(ds, L)
  fb = ip.FinetuneBatches(ds, splits, batch_size=16, negative_high=ds.max_item, seed=5, pack=False)
  rows = 0
  order = ip.rng_for(5, ip.STREAM_FINETUNE_ORDER, 0).permutation(ds.num_users)
  for step, batch in enumerate(fb.epoch(0)):
    for r, u in enumerate(order[step * 16:(step + 1) * 16]):
      np.testing.assert_array_equal(batch["inputs"][r], splits["train_inputs"][u])
      np.testing.assert_array_equal(batch["targets"][r], splits["train_targets"][u])
      neg = batch["negatives"][r]
      has = batch["targets"][r] > 0
      assert (neg[~has] == 0).all() and (neg[has] >= 1).all() and (neg[has] <= ds.max_item).all()
      assert not np.isin(neg[has], ds.sequence(u)).any()   # outside the WHOLE sequence
      rows += 1
  assert rows == ds.num_users
  again = next(fb.epoch(0))
  np.testing.assert_array_equal(again["negatives"], next(fb.epoch(0))["negatives"])


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_eval_batches(ds, protocol):
  splits = data.finetune_splits(ds, L)
  batches = list(ip.eval_batches(ds, splits, "test", protocol, batch_size=16, pack=False))
  assert len(batches) == 3 and batches[-1]["weights"].sum() == ds.num_users - 32
  first = batches[0]
  np.testing.assert_array_equal(first["answers"], splits["test_answers"][:16])
  np.testing.assert_array_equal(first["inputs"], splits["test_inputs"][:16])
  np.testing.assert_array_equal(first["last_index"], np.arange(16) * L + L - 1)
  if protocol == "sampled":
    np.testing.assert_array_equal(first["candidates"][:, 0], first["answers"])
    np.testing.assert_array_equal(first["candidates"][:, 1:], ds.sample_negatives[:16])
  else:
    np.testing.assert_array_equal(first["history"], splits["test_history"][:16])


def test_prefetch_passes_items_and_errors():
  assert list(ip.prefetch(iter(range(5)))) == list(range(5))

  def broken():
    yield 1
    raise RuntimeError("boom")

  with pytest.raises(RuntimeError, match="boom"):
    list(ip.prefetch(broken()))


def _unpack(batch, name, lengths, max_len):
  """Rebuilds the left-padded [S, max_len] array of one packed field from last_index."""
  flat = batch[name].reshape(-1)
  out = np.zeros((len(lengths), max_len), flat.dtype)
  for s, n in enumerate(lengths):
    if n:
      end = batch["last_index"][s]
      out[s, max_len - n:] = flat[end - n + 1:end + 1]
  return out


@pytest.mark.parametrize("max_len", [8, 12, 50])
def test_packer_round_trip_and_metadata(max_len):
  rng = np.random.default_rng(max_len)
  lengths = rng.integers(0, max_len + 1, size=40)
  padded = np.zeros((40, max_len), np.int32)
  for s, n in enumerate(lengths):
    padded[s, max_len - n:] = rng.integers(1, 100, size=n)
  packer = ip.Packer(max_len)
  *_, rows = packer.layout(lengths)
  # First-fit decreasing wastes less than one row's worth per row on these sizes.
  assert rows <= -(-lengths.sum() // max_len) + max(2, rows // 4) and rows < 40
  batch = packer.apply(lengths, {"x": padded}, rows)
  np.testing.assert_array_equal(_unpack(batch, "x", lengths, max_len), padded)
  seg, pos = batch["segment_ids"].ravel(), batch["positions"].ravel()
  assert (seg > 0).sum() == lengths.sum() == (batch["x"] > 0).sum()
  for s, n in enumerate(lengths):
    if n:
      end = batch["last_index"][s]
      np.testing.assert_array_equal(pos[end - n + 1:end + 1], np.arange(max_len - n, max_len))
      assert len(set(seg[end - n + 1:end + 1])) == 1                  # one segment per sequence
      assert pos[end] == max_len - 1                                   # the newest item
  # Unpacked layout: one left-padded sequence per row.
  flat = ip.Packer(max_len, pack=False).apply(lengths, {"x": padded}, 40)
  np.testing.assert_array_equal(flat["x"], padded)
  with pytest.raises(ValueError, match="needs"):
    packer.apply(lengths, {"x": padded}, 1)


def test_packed_pretraining_batch_holds_the_same_views(ds):
  settings = dict(batch_size=64, max_len=L, mask_p=0.2, negative_high=ds.mask_id)
  padded = ip.PretrainBatches(ds, ip.PretrainSettings(**settings, pack=False), seed=7)
  packed = ip.PretrainBatches(ds, ip.PretrainSettings(**settings, pack=True), seed=7)
  a, b = next(padded.epoch(0)), next(packed.epoch(0))
  assert b["items"].shape[0] < a["items"].shape[0]
  lengths = (a["items"] > 0).sum(1)
  for name in ("items", "masked_items", "negative_items", "segment_context",
               "segment_positive", "segment_negative"):
    np.testing.assert_array_equal(_unpack(b, name, lengths, L), a[name], err_msg=name)


def test_more_segment_negatives_share_the_positive_layout(ds):
  settings = dict(batch_size=16, max_len=L, mask_p=0.2, negative_high=ds.mask_id, pack=False)
  one = next(ip.PretrainBatches(ds, ip.PretrainSettings(**settings), seed=7).epoch(0))
  three = next(ip.PretrainBatches(ds, ip.PretrainSettings(**settings, segment_negatives=3),
                                  seed=7).epoch(0))
  assert "segment_negative_2" not in one
  for name, value in one.items():   # drawn after every other view: those do not change
    np.testing.assert_array_equal(three[name], value, err_msg=name)
  positive = three["segment_positive"]
  in_span = (positive != ds.mask_id) & (positive > 0)
  differs = 0
  for name in ("segment_negative_2", "segment_negative_3"):
    negative = three[name]
    # Outside the span: the positive's own tokens (padding and masks), so the layout is equal.
    np.testing.assert_array_equal(np.where(in_span, 0, negative), np.where(in_span, 0, positive))
    assert np.all((negative[in_span] > 0) & (negative[in_span] <= ds.max_item))
    differs += int(np.sum(negative[in_span] != positive[in_span]))
  assert differs > 0


def test_shards_are_balanced_and_cover_the_batch(ds):
  settings = ip.PretrainSettings(batch_size=32, max_len=L, mask_p=0.2, negative_high=ds.mask_id)
  whole = ip.PretrainBatches(ds, settings, seed=4)
  parts = [ip.PretrainBatches(ds, settings, seed=4, shards=ip.Shards(4, s, 1)) for s in range(4)]
  one = next(whole.epoch(0))
  pieces = [next(p.epoch(0)) for p in parts]
  # Every shard has the same row count, and balanced shards need few extra rows.
  assert len({p["items"].shape[0] for p in pieces}) == 1
  assert pieces[0]["items"].shape[0] * 4 <= one["items"].shape[0] + 8
  # Every sequence lands in exactly one shard, with all its tokens, under its global token ids.
  ids = np.concatenate([p["token_ids"][p["segment_ids"] > 0] for p in pieces])
  np.testing.assert_array_equal(np.sort(ids), np.sort(one["token_ids"][one["segment_ids"] > 0]))
  for name in ("items", "masked_items", "segment_context"):
    got = np.concatenate([p[name][p["segment_ids"] > 0] for p in pieces])
    order = np.argsort(ids)
    want = one[name][one["segment_ids"] > 0][np.argsort(one["token_ids"][one["segment_ids"] > 0])]
    np.testing.assert_array_equal(got[order], want)
  tokens = [int((p["segment_ids"] > 0).sum()) for p in pieces]
  assert max(tokens) - min(tokens) <= L                  # within one longest sequence


def test_micro_batches_split_each_shard_and_pad_with_empty_sequences(ds):
  settings = ip.PretrainSettings(batch_size=16, max_len=L, mask_p=0.2, negative_high=ds.mask_id)
  whole = next(ip.PretrainBatches(ds, settings, seed=4).epoch(0))
  # 2 devices x 3 micro-batches = 6 pieces: 16 sequences are completed to 18 with empty ones.
  split = next(ip.PretrainBatches(ds, settings, seed=4,
                                  shards=ip.Shards(2, 0, 2, micro_batches=3)).epoch(0))
  assert split["weights"].shape == (18,)
  assert split["weights"].sum() == whole["weights"].sum() == 16
  rows = split["items"].shape[0]
  assert rows % 6 == 0
  per_rows, per_seqs = rows // 6, 3
  for piece in range(6):
    # Each piece's newest-token indices point into its own rows, at its own sequences.
    index = split["last_index"][piece * per_seqs:(piece + 1) * per_seqs]
    weights = split["weights"][piece * per_seqs:(piece + 1) * per_seqs]
    assert np.all(index < per_rows * L)
    tokens = split["token_ids"][piece * per_rows:(piece + 1) * per_rows].reshape(-1)
    newest = tokens[index][weights > 0] % L
    np.testing.assert_array_equal(newest, L - 1)
  # The pieces hold exactly the batch's tokens, with their global token ids.
  ids = split["token_ids"][split["segment_ids"] > 0]
  np.testing.assert_array_equal(np.sort(ids), np.sort(whole["token_ids"][whole["segment_ids"] > 0]))
  with pytest.raises(ValueError, match="micro_batches"):
    ip.Shards(2, 0, 2, micro_batches=0)


def _first_fit_one_by_one(lengths, max_len):
  """The definition: longest first (ties in index order), each in the lowest row with room."""
  n = len(lengths)
  row, first, slot = np.full(n, -1), np.zeros(n, np.int64), np.zeros(n, np.int64)
  free, count = [], []
  for i in np.argsort(-lengths, kind="stable"):
    size = int(lengths[i])
    if size <= 0:
      break
    r = next((r for r, room in enumerate(free) if room >= size), len(free))
    if r == len(free):
      free.append(max_len)
      count.append(0)
    row[i], first[i], slot[i] = r, max_len - free[r], count[r]
    free[r] -= size
    count[r] += 1
  return row, first, slot, len(free)


@pytest.mark.parametrize("max_len", [1, 7, 50])
def test_the_linear_packer_lays_out_as_first_fit_one_by_one(max_len):
  rng = np.random.default_rng(max_len)
  cases = [rng.integers(0, max_len + 1, size) for size in (0, 1, 5, 64, 300)]
  cases += [np.full(40, max_len), np.full(33, max(1, max_len // 3)),
            np.minimum(rng.geometric(0.2, 500), max_len)]
  for lengths in cases:
    got = ip.Packer(max_len).layout(np.asarray(lengths, np.int64))
    want = _first_fit_one_by_one(np.asarray(lengths, np.int64), max_len)
    for a, b in zip(got[:3], want[:3]):
      np.testing.assert_array_equal(a, b)
    assert got[3] == want[3]


def test_batch_lengths_sample_spreads_over_the_epoch_and_keeps_the_last():
  lengths = np.arange(1, 101)
  order = np.arange(100)
  every = list(ip._batch_lengths(lengths, order, 8))   # pylint: disable=protected-access
  some = list(ip._batch_lengths(lengths, order, 8, most=4))   # pylint: disable=protected-access
  assert len(every) == 13 and len(some) == 4
  np.testing.assert_array_equal(some[0], every[0])
  np.testing.assert_array_equal(some[-1], every[-1])   # the padded last batch
  assert [b[0] for b in some] == [1, 33, 65, 97]
