"""Views built on device: crop, mask, reorder and augment against their definitions,
checked sequence by sequence, and the same whatever the packing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3rec_jax.data import input_pipeline as ip
from s3rec_jax import objectives
from s3rec_jax.objectives import views

L = 8
MASK = 99
# Sequences of one host batch (left-padded rows); the fourth is empty (a user
# whose training input is empty), the fifth is padding.
SEQUENCES = [[11, 12, 13], [21, 22, 23, 24], [31, 32, 33, 34, 35, 36, 37, 38], [], []]
WEIGHTS = np.array([1, 1, 1, 1, 0], np.float32)


def _batch(pack: bool) -> dict:
  lengths = np.array([len(s) for s in SEQUENCES])
  padded = np.zeros((len(SEQUENCES), L), np.int32)
  for i, s in enumerate(SEQUENCES):
    padded[i, L - len(s):] = s
  packer = ip.Packer(L, pack)
  batch = packer.pack_shards(lengths, {"sequence": padded}, {"weights": WEIGHTS}, ip.Shards())
  return {k: jnp.asarray(v) for k, v in batch.items()}


def _options(**augment):
  return objectives.ObjectiveOptions(
      mask_id=MASK, num_items=50,
      settings=objectives.settings_tuple({"augment": augment} if augment else {}))


def _per_sequence(view: views.View, batch) -> list[dict]:
  """Each sequence's tokens in the view: (ids, positions) in column order, found by
  following its segment in its row, and the id at its newest token."""
  ids, seg, pos = (np.asarray(x).reshape(-1) for x in (view.ids, view.segment_ids,
                                                       view.positions))
  base_seg = np.asarray(batch["segment_ids"]).reshape(-1)
  out = []
  for b, last in enumerate(np.asarray(batch["last_index"])):
    n = len(SEQUENCES[b])
    if n == 0:
      out.append(None)
      continue
    span = np.arange(last - n + 1, last + 1)           # the sequence's own tokens in the batch
    assert (base_seg[span] == base_seg[last]).all()
    kept = span[seg[span] > 0]
    out.append({"ids": ids[span].tolist(), "kept_ids": ids[kept].tolist(),
                "positions": pos[kept].tolist(), "newest": int(ids[int(view.last_index[b])])})
  return out


def _build(name, batch, options, seed=3):
  return views.build(name, batch, jax.random.key(seed), options)


def test_layout_of_packed_rows():
  batch = _batch(pack=True)
  layout = views.layout_of(batch)
  np.testing.assert_array_equal(layout.length, [3, 4, 8, 0, 0])
  seq = np.asarray(layout.sequence)
  step = np.asarray(layout.step)
  for b, s in enumerate(SEQUENCES):
    tokens = np.flatnonzero(seq == b)
    assert len(tokens) == len(s)
    np.testing.assert_array_equal(np.asarray(batch["sequence"]).reshape(-1)[tokens], s)
    np.testing.assert_array_equal(step[tokens], np.arange(len(s)))
    if s:
      assert int(layout.first[b]) == tokens[0]


@pytest.mark.parametrize("ratio", [0.6, 0.2])
def test_crop_keeps_a_contiguous_span_rebased_to_the_end(ratio):
  batch = _batch(pack=True)
  view = _build("crop", batch, _options(crop=ratio))
  for b, got in enumerate(_per_sequence(view, batch)):
    s = SEQUENCES[b]
    if not s:
      continue
    keep = max(int(np.floor(ratio * len(s))), 1)
    kept = got["kept_ids"]
    assert len(kept) == keep
    start = s.index(kept[0])
    assert kept == s[start:start + keep]                   # contiguous, in order
    assert got["positions"] == list(range(L - keep, L))    # newest item at L - 1
    assert got["newest"] == kept[-1]


def test_mask_replaces_exactly_floor_gamma_n_items():
  batch = _batch(pack=True)
  view = _build("mask", batch, _options(mask=0.5))
  for b, got in enumerate(_per_sequence(view, batch)):
    s = SEQUENCES[b]
    if not s:
      continue
    masked = [i for i, (x, y) in enumerate(zip(got["ids"], s)) if x != y]
    assert len(masked) == int(np.floor(0.5 * len(s)))
    assert all(got["ids"][i] == MASK for i in masked)
    assert got["positions"] == list(range(L - len(s), L))


def test_reorder_shuffles_one_window_in_place():
  batch = _batch(pack=True)
  view = _build("reorder", batch, _options(reorder=0.75))
  changed_any = False
  for b, got in enumerate(_per_sequence(view, batch)):
    s = SEQUENCES[b]
    if not s:
      continue
    width = int(np.floor(0.75 * len(s)))
    assert sorted(got["ids"]) == sorted(s)
    moved = [i for i, (x, y) in enumerate(zip(got["ids"], s)) if x != y]
    if moved:
      changed_any = True
      assert moved[-1] - moved[0] < width                  # inside one window of that width
  assert changed_any


def _seed(name, seed=3):
  """The seed views.build gives the builder of `name` (a stable salt per name)."""
  import zlib  # pylint: disable=g-import-not-at-top
  salted = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
  return jax.random.bits(salted, (2,), jnp.uint32)


def test_augment_picks_one_of_the_three_per_sequence_and_ignores_the_packing():
  options = _options(crop=0.6, mask=0.3, reorder=0.6)
  results = {}
  for pack in (True, False):
    batch = _batch(pack)
    got = _per_sequence(_build("augment:1", batch, options), batch)
    layout, seed = views.layout_of(batch), _seed("augment:1")
    candidates = [_per_sequence(view, batch) for view in (
        views.crop(batch, layout, seed, 0.6), views.mask(batch, layout, seed, 0.3, MASK),
        views.reorder(batch, layout, seed, 0.6))]
    for b, g in enumerate(got):
      assert g in [c[b] for c in candidates], b
    results[pack] = got
  # The same sequences get the same view packed or one per row.
  assert results[True] == results[False]
  # Two tags of one builder draw independently.
  batch = _batch(True)
  one = _per_sequence(_build("augment:1", batch, options), batch)
  two = _per_sequence(_build("augment:2", batch, options), batch)
  assert one != two


def test_crop_mask_reorder_do_not_depend_on_the_packing():
  options = _options(crop=0.5, mask=0.4, reorder=0.7)
  for name in ("crop", "mask", "reorder"):
    packed = _per_sequence(_build(name, _batch(True), options), _batch(True))
    alone = _per_sequence(_build(name, _batch(False), options), _batch(False))
    assert packed == alone, name


def test_batch_arrays_are_views_too_and_builders_register_once():
  batch = _batch(True)
  view = views.build("sequence", batch, jax.random.key(0), _options())
  np.testing.assert_array_equal(view.ids, batch["sequence"])
  assert not views.is_built_on_device("masked_items") and views.is_built_on_device("dropout:2")
  with pytest.raises(ValueError, match="registered twice"):
    views.register("crop")(lambda batch, seed, options: None)
