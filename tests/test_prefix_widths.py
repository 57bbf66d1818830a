"""Prefix rows trimmed of their leading padding: the groups, the rows, and the same step."""

import math
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from s3rec_jax import objectives  # noqa: E402
from s3rec_jax.core import parallel  # noqa: E402
from s3rec_jax.core import settings  # noqa: E402
from s3rec_jax.data import dataset as data_lib  # noqa: E402
from s3rec_jax.data import input_pipeline as ip  # noqa: E402
from s3rec_jax.data import prefix_widths as pw  # noqa: E402
from s3rec_jax.model import encoder as model  # noqa: E402
from s3rec_jax.model import encoder_registry  # noqa: E402
from s3rec_jax.training import steps as train_steps  # noqa: E402

MAX_LEN = 16
encoder_registry.load_built_ins()   # tvrec's settings record


def test_widths_double_from_8_below_max_len():
  assert pw.widths(50) == (8, 16, 32, 50)
  assert pw.widths(16) == (8, 16)
  assert pw.widths(6) == (6,)


@pytest.mark.parametrize("n,p,misfit", [(20, 0.3, 1e-3), (256, 0.05, 1e-9), (7, 0.9, 0.5)])
def test_the_tail_count_is_the_least_with_the_misfit_chance_below_the_level(n, p, misfit):
  above = lambda c: sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(c + 1, n + 1))
  c = pw.binomial_tail_count(n, p, misfit)
  assert above(c) < misfit and (c == 0 or above(c - 1) >= misfit)
  assert pw.binomial_tail_count(n, 0.0) == 0 and pw.binomial_tail_count(n, 1.0) == n


def test_the_plan_splits_a_batch_into_nested_tails_that_divide_into_pieces():
  groups = pw.plan({8: 0.3, 16: 0.1, 32: 0.02}, 256, 50, pieces=4)
  assert [g.width for g in groups] == [8, 16, 32, 50]
  assert sum(g.capacity for g in groups) == 256 and all(g.capacity % 4 == 0 for g in groups)
  # Each tail holds at least its binomial quantile of long rows.
  for i, w in enumerate((8, 16, 32)):
    tail = sum(g.capacity for g in groups[i + 1:])
    assert tail >= pw.binomial_tail_count(256, {8: 0.3, 16: 0.1, 32: 0.02}[w])
  assert pw.plan({8: 0.0, 16: 0.0, 32: 0.0}, 64, 50, 2) == (pw.Group(8, 64),)
  assert pw.plan({8: 1.0, 16: 1.0, 32: 1.0}, 64, 50, 2) == (pw.Group(50, 64),)
  with pytest.raises(ValueError, match="multiple of pieces"):
    pw.plan({8: 0.1}, 10, 16, 4)


def test_rows_go_to_the_narrowest_group_that_holds_them_or_the_batch_does_not_fit():
  groups = (pw.Group(8, 3), pw.Group(16, 2), pw.Group(20, 1))
  lengths = np.array([20, 3, 0, 9, 8, 5])
  members = pw.assign(lengths, groups)
  assert [sorted(lengths[m].tolist()) for m in members] == [[0, 3, 5], [8, 9], [20]]
  assert pw.assign(np.array([20, 17, 0, 1, 2, 3]), groups) is None
  assert "3 x 8, 2 x 16, 1 x 20 (63% of the tokens of 6 x 20)" == pw.describe(groups, 20)


def _data():
  return data_lib.synthetic_dataset(num_users=30, num_items=40, num_attributes=4, min_len=4,
                                    max_len=26, num_groups=5, seed=3, num_negatives=None)


def _fitting_groups(batches, samples, pieces):
  """Groups that the batch of `samples` fits, each a multiple of `pieces`, none empty."""
  lengths = batches.sample_lengths(np.pad(samples, (0, batches.num_rows * pieces - len(samples)),
                                          constant_values=-1))
  widths = pw.widths(MAX_LEN)
  counts = np.histogram(lengths, bins=[-1] + list(widths))[0]
  caps, carry = [], 0
  for count in counts[:-1]:   # round down: the rest goes wider
    carry += count
    cap = carry // pieces * pieces
    caps.append(cap)
    carry -= cap
  caps.append(len(lengths) - sum(caps))
  groups = tuple(pw.Group(w, c) for w, c in zip(widths, caps) if c)
  assert len(groups) >= 2 and pw.assign(lengths, groups) is not None
  return groups


def test_a_trimmed_row_is_the_whole_rows_last_columns_with_their_places():
  ds = _data()
  whole = ip.PrefixBatches(ds, batch_size=16, max_len=MAX_LEN, negative_high=ds.max_item, seed=2)
  trimmed = ip.PrefixBatches(ds, batch_size=16, max_len=MAX_LEN, negative_high=ds.max_item,
                             seed=2, trim_padding=True)
  samples = whole.order(1)[:13]
  trimmed.groups = _fitting_groups(trimmed, samples, 1)
  plain, groups = whole.batch(samples, 1), trimmed.batch(samples, 1)
  assert isinstance(groups, tuple) and len(groups) == len(trimmed.groups)
  seen = []
  for group, spec in zip(groups, trimmed.groups):
    assert group["inputs"].shape == (spec.capacity, spec.width)
    for r in range(spec.capacity):
      # The whole batch's row of the same sample: token ids number it by its place there.
      slot = group["token_ids"][r, -1] // MAX_LEN
      seen.append(int(slot))
      for key in ("inputs", "targets", "negatives", "segment_ids", "positions", "token_ids"):
        np.testing.assert_array_equal(group[key][r], plain[key][slot, -spec.width:])
      assert not plain["inputs"][slot, :-spec.width].any()   # only padding was cut
      assert group["last_index"][r] == r * spec.width + spec.width - 1
      assert group["weights"][r] == plain["weights"][slot]
      assert group["lengths"][r] == plain["lengths"][slot] <= spec.width
  assert sorted(seen) == list(range(16))
  # A batch the groups cannot hold runs untrimmed.
  trimmed.groups = (pw.Group(8, 15), pw.Group(MAX_LEN, 1))
  long_ones = [s for s in whole.order(1) if trimmed.sample_lengths(np.array([s]))[0] > 8][:2]
  fallback = trimmed.batch(np.array(long_ones), 1)
  assert isinstance(fallback, dict) and fallback["inputs"].shape == (16, MAX_LEN)


def _step_outcome(encoder, trim, devices, micro, min_items):
  ds = _data()
  record = settings.bind("tvrec", {"basis_size": 3, "order": 6}) if encoder == "tvrec" else None
  cfg = model.ModelConfig(item_size=ds.item_size, attribute_size=ds.attribute_size,
                          hidden_size=8, num_heads=2, max_len=MAX_LEN, num_layers=2,
                          encoder=encoder, encoder_settings=record, hidden_dropout=0.3,
                          attention_dropout=0.3)
  chosen = objectives.resolve({"next_item": 1.0}, {"next_item": "ce"}, phase="finetune")
  options = objectives.ObjectiveOptions(mask_id=ds.mask_id, num_items=ds.max_item,
                                        targets="last_of_prefixes", encoder=encoder)
  params = jax.tree_util.tree_map(np.asarray, model.init_params(cfg, jax.random.key(0)))
  tx = train_steps.make_optimizer(1e-2, 0.9, 0.999)
  mesh = parallel.make_mesh(jax.devices()[:devices])
  shards = ip.Shards(*parallel.local_shards(mesh), micro_batches=micro)
  batches = ip.PrefixBatches(ds, batch_size=16, max_len=MAX_LEN, negative_high=ds.max_item,
                             seed=0, shards=shards, min_items=min_items, trim_padding=trim)
  samples = batches.order(0)[:16]
  if trim:
    batches.groups = _fitting_groups(batches, samples, devices * micro)
  batch = batches.batch(samples, 0)
  assert isinstance(batch, tuple) == trim
  step = train_steps.make_train_step(cfg, chosen, options, tx, mesh, phase="finetune",
                                     micro_batches=micro)
  state, out = step(train_steps.create_state(params, tx, mesh),
                    parallel.shard_batch(batch, mesh), {}, jax.random.key(5))
  return float(out["loss"]), jax.tree_util.tree_map(np.asarray, state.params)


def test_a_step_on_trimmed_rows_is_the_step_on_whole_rows():
  # Two devices of two micro-batches each, dropout on: each token keeps its id, so its mask,
  # whatever width its row has. With min_items 0 some samples have no items: their rows are
  # all padding, zeroed alike at any width (sasrec's would attend to their padding).
  loss, params = _step_outcome("tvrec", False, 2, 2, min_items=0)
  trimmed_loss, trimmed_params = _step_outcome("tvrec", True, 2, 2, min_items=0)
  np.testing.assert_allclose(trimmed_loss, loss, rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         trimmed_params, params)


def test_the_groups_are_planned_from_the_epochs_lengths():
  ds = _data()
  batches = ip.PrefixBatches(ds, batch_size=64, max_len=MAX_LEN, negative_high=ds.max_item,
                             seed=0, trim_padding=True, shards=ip.Shards(2, 0, 2))
  lengths = batches.sample_lengths(np.arange(batches.num_samples))
  shares = {w: float((lengths > w).mean()) for w in pw.widths(MAX_LEN)[:-1]}
  assert batches.groups == pw.plan(shares, 64, MAX_LEN, 2)


@pytest.mark.slow
def test_the_benchmark_times_both_and_finds_the_same_losses(capsys):
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "prefix_widths.py")
  spec = importlib.util.spec_from_file_location("prefix_widths_benchmark", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  assert bench.main(["--dataset", "synthetic", "--steps", "2", "--rounds", "1",
                     "--batch_size", "32"]) == 0
  out = capsys.readouterr().out
  assert "| whole |" in out and "| trimmed |" in out and "command: python benchmarks/" in out
  difference = float(out.split("largest relative loss difference over 3 steps: ")[1].split(";")[0])
  assert difference < 1e-5


@pytest.mark.parametrize("shards", [ip.Shards(4, 2, 2), ip.Shards(2, 1, 1, micro_batches=2)])
def test_a_process_builds_its_own_pieces_of_every_group(shards):
  # What a process of several builds: in each group, its pieces of the whole host's.
  ds = _data()
  common = dict(batch_size=32, max_len=MAX_LEN, negative_high=ds.max_item, seed=2,
                trim_padding=True)
  every = ip.Shards(shards.count, 0, shards.count, shards.micro_batches)
  mine, all_ = ip.PrefixBatches(ds, shards=shards, **common), ip.PrefixBatches(ds, shards=every,
                                                                                **common)
  samples = all_.order(0)[:29]
  pieces = shards.count * shards.micro_batches
  all_.groups = mine.groups = _fitting_groups(all_, samples, pieces)
  local, whole = mine.batch(samples, 0), all_.batch(samples, 0)
  for group, full, spec in zip(local, whole, mine.groups):
    per_piece = spec.capacity // pieces
    first = shards.first_local * shards.micro_batches * per_piece
    count = shards.num_local * shards.micro_batches * per_piece
    for key, value in group.items():
      np.testing.assert_array_equal(value, full[key][first:first + count])
