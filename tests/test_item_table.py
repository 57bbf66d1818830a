"""The item table split by rows over devices: the same losses, updates and metrics as replicated."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from s3rec_jax.core import parallel
from s3rec_jax.data import dataset as data
from s3rec_jax.data import input_pipeline as ip
from s3rec_jax.evaluation import metrics
from s3rec_jax.evaluation import steps as eval_steps
from s3rec_jax.model import encoder as model
from s3rec_jax.model import item_table
from s3rec_jax.model import sharding
from s3rec_jax import objectives
from s3rec_jax.ops import catalogue_softmax
from s3rec_jax.training import steps as train_steps

L = 10
AXIS = parallel.DATA_AXIS


@pytest.fixture(scope="module")
def ds():
  # 80 items: item_size 82 is not a multiple of 4, so the sharded table has padding rows.
  return data.synthetic_dataset(num_users=64, num_items=80, num_attributes=10, min_len=3,
                                max_len=16, seed=1, num_negatives=20)


def _mesh(n=4):
  assert len(jax.devices()) >= n, "tests/conftest.py forces 4 CPU devices"
  return parallel.make_mesh(jax.devices()[:n])


def _configs(ds, n, heads=()):
  replicated = model.ModelConfig(item_size=ds.item_size, attribute_size=ds.attribute_size,
                                 hidden_size=16, num_layers=1, num_heads=2, max_len=L,
                                 head_names=heads)
  rows = item_table.padded_rows(ds.item_size, n)
  return replicated, dataclasses.replace(replicated, item_table_axis=AXIS, item_table_rows=rows)


def _sharded_fn(fn, mesh, in_specs, out_specs):
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                               check_vma=False))


def test_choose_layout_and_its_reason():
  small = item_table.choose("auto", item_size=12_102, hidden_size=64, num_devices=2, axis=AXIS,
                            shard_above_mib=128)
  assert not small.sharded and small.rows == 12_102
  assert "< model.item_table_shard_above_mib=128" in small.reason
  big = item_table.choose("auto", item_size=1_000_002, hidden_size=64, num_devices=4, axis=AXIS,
                          shard_above_mib=128)
  assert big.sharded and big.rows == 1_000_004 and big.rows % 4 == 0
  assert "250,001 rows per device over 4, 2 padding row(s)" in big.describe()
  one = item_table.choose("sharded", item_size=10, hidden_size=4, num_devices=1, axis=AXIS,
                          shard_above_mib=128)
  assert not one.sharded and "one device" in one.reason
  forced = item_table.choose("replicated", item_size=1_000_002, hidden_size=64, num_devices=4,
                             axis=AXIS, shard_above_mib=128)
  assert not forced.sharded
  with pytest.raises(ValueError, match="model.item_table='split' is unknown"):
    item_table.choose("split", item_size=10, hidden_size=4, num_devices=2, axis=AXIS,
                      shard_above_mib=1)


def test_sharded_lookups_and_their_gradients_are_exact():
  mesh = _mesh()
  table = jax.random.normal(jax.random.key(0), (12, 3))
  ids = jax.random.randint(jax.random.key(1), (8, 5), 0, 12)
  shared = jnp.array([0, 5, 11, 3])
  w = jax.random.normal(jax.random.key(2), (8, 5, 3))

  def loss(t, ids, w, axis):
    rows = item_table.lookup(t, ids, axis)
    common = item_table.lookup_shared(t, shared, axis)
    return jnp.sum(jnp.sin(rows) * w) + jnp.sum(rows[:, :1, :] @ common.T)

  def body(block, ids, w):
    value, grad = jax.value_and_grad(loss)(block, ids, w, AXIS)
    return jax.lax.psum(value, AXIS), grad

  value, grad = _sharded_fn(body, mesh, (P(AXIS), P(AXIS), P(AXIS)), (P(), P(AXIS)))(table, ids, w)
  want_value, want_grad = jax.value_and_grad(loss)(table, ids, w, None)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_items, chunk", [(9, 2), (5, 100)],
                         ids=["several_chunks", "a_block_without_candidates"])
def test_sharded_catalogue_cross_entropy_matches_replicated(num_items, chunk):
  mesh = _mesh()
  table = jax.random.normal(jax.random.key(0), (12, 4))
  queries = jax.random.normal(jax.random.key(1), (8, 4))
  targets = jax.random.randint(jax.random.key(2), (8,), 1, num_items + 1)
  g = jax.random.normal(jax.random.key(3), (8,))

  def loss(t, q, y, axis):
    per_query = catalogue_softmax.cross_entropy(q, t, y, num_items=num_items, chunk_size=chunk,
                                                axis_name=axis)
    return jnp.sum(per_query * (g if axis is None else _own(g))), per_query

  def _own(x):
    n = x.shape[0] // jax.lax.axis_size(AXIS)
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(AXIS) * n, n)

  def body(block, q, y):
    (value, per_query), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        block, q, y, AXIS)
    return jax.lax.psum(value, AXIS), per_query, grads

  value, per_query, (d_table, d_queries) = _sharded_fn(
      body, mesh, (P(AXIS), P(AXIS), P(AXIS)), (P(), P(AXIS), (P(AXIS), P(AXIS))))(
          table, queries, targets)
  (want, want_per_query), (want_table, want_queries) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(table, queries, targets, None)
  np.testing.assert_allclose(per_query, want_per_query, rtol=1e-5)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  np.testing.assert_allclose(d_table, want_table, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(d_queries, want_queries, rtol=1e-4, atol=1e-6)
  # Rows that are never candidates (padding, mask, beyond num_items) get no softmax gradient.
  assert np.all(np.asarray(d_table)[num_items + 1:] == 0)


def _trim(params, rows):
  return model.with_item_rows(jax.device_get(params), rows)


def _run_steps(make_step, cfg, host_batches, tables, mesh, tx, init):
  state = train_steps.create_state(model.with_item_rows(init, cfg.item_rows), tx, mesh,
                                   cfg.item_table_axis)
  step = make_step(cfg)
  losses = []
  for i, batch in enumerate(host_batches):
    state, out = step(state, parallel.shard_batch(batch, mesh), tables, jax.random.key(i))
    losses.append(jax.device_get(out))
  return losses, state


def _assert_same_runs(a, b, names, item_size):
  (losses_a, state_a), (losses_b, state_b) = a, b
  for one, other in zip(losses_a, losses_b):
    assert one["finite"] and other["finite"]
    for name in names:
      np.testing.assert_allclose(one[name], other[name], rtol=1e-5, err_msg=name)
  # Adam divides by the gradient's scale, so parameters whose gradient is
  # rounding noise move by noise-sized steps: 1e-4, far below the 3e-2 that three
  # steps at lr 1e-2 can move a parameter.
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4),
                         _trim(state_a.params, item_size), _trim(state_b.params, item_size))
  assert losses_a[0]["loss"] != losses_a[-1]["loss"]


# 4 devices: 82 rows, padded to 84; 2 devices: 41 rows each, no padding. infonce's MIP
# is the catalogue softmax over the split table (fine-tuning's ce covers it with padding
# rows); shared negatives are covered by fine-tuning's sampled softmax.
@pytest.mark.parametrize("n, form", [(4, "reference"), (2, "infonce")])
def test_pretraining_with_a_sharded_table_matches_replicated(ds, n, form):
  mesh = _mesh(n)
  # infonce: MIP (the catalogue softmax over the split table) and SP; AAP and MAP read the
  # attribute table, and their item lookups are the encoder's, checked with the reference forms.
  weights = ({"aap": 0.2, "mip": 1.0, "map": 1.0, "sp": 0.5} if form == "reference"
             else {"mip": 1.0, "sp": 0.5})
  chosen = objectives.resolve(weights, form)
  replicated, sharded = _configs(ds, n, tuple(o.name for o, _ in chosen))
  assert sharded.item_rows > ds.item_size or n == 2
  options = objectives.ObjectiveOptions(mask_id=ds.mask_id, num_items=ds.max_item)
  tx = train_steps.make_optimizer(1e-2, 0.9, 0.999)
  batches = ip.PretrainBatches(ds, ip.PretrainSettings(16, L, 0.2, ds.mask_id), seed=0,
                               shards=ip.Shards(*parallel.local_shards(mesh)))
  host_batches = list(batches.epoch(0))[:3]
  tables = parallel.replicate({"attr_ids": ds.attr_ids}, mesh)
  init = jax.device_get(model.init_params(replicated, jax.random.key(0)))
  make = lambda cfg: train_steps.make_pretrain_step(cfg, chosen, options, tx, mesh)
  runs = [_run_steps(make, cfg, host_batches, tables, mesh, tx, init)
          for cfg in (replicated, sharded)]
  _assert_same_runs(*runs, ("loss", "grad_norm") + tuple(weights), ds.item_size)
  # The per-objective diagnosis (run after a non-finite step) agrees too, gradient norms included.
  diagnoses = []
  for cfg in (replicated, sharded) if form == "reference" else ():
    params = train_steps.create_state(model.with_item_rows(init, cfg.item_rows), tx, mesh,
                                      cfg.item_table_axis).params
    diagnose = train_steps.make_objective_diagnosis(cfg, chosen, options, mesh)
    diagnoses.append(jax.device_get(diagnose(params, parallel.shard_batch(host_batches[0], mesh),
                                             tables, jax.random.key(0))))
  for name, (loss, norm) in (diagnoses[0].items() if diagnoses else ()):
    np.testing.assert_allclose(diagnoses[1][name], (loss, norm), rtol=1e-5, err_msg=name)
  # The sharded state really is split: each device holds 1/n of the table and its moments.
  state = runs[1][1]
  table = state.params["item_embeddings"]["embedding"]
  assert table.shape[0] == sharded.item_rows
  assert {s.data.shape[0] for s in table.addressable_shards} == {sharded.item_rows // n}
  mu = state.opt_state["item_table"][0].mu
  assert {s.data.shape[0] for s in mu.addressable_shards} == {sharded.item_rows // n}


@pytest.mark.parametrize("form, weights", [
    ("sampled_softmax", {"next_item": 1.0}),
    ("ce", {"next_item": 1.0, "cl4srec": 0.3, "duorec": 0.2})],
    ids=["sampled_softmax", "ce_with_contrastive"])
def test_finetuning_with_a_sharded_table_matches_replicated(ds, form, weights):
  n = 4
  mesh = _mesh(n)
  replicated, sharded = _configs(ds, n)
  chosen = objectives.resolve(weights, {"next_item": form}, phase="finetune")
  options = objectives.ObjectiveOptions(
      mask_id=ds.mask_id, num_items=ds.max_item, settings=objectives.settings_tuple(
          {"next_item": {"chunk_size": 7, "num_negatives": 16}}))
  splits = data.finetune_splits(ds, L)
  tx = train_steps.make_optimizer(1e-2, 0.9, 0.999)
  fb = ip.FinetuneBatches(ds, splits, batch_size=16, negative_high=ds.max_item, seed=0,
                          shards=ip.Shards(*parallel.local_shards(mesh)))
  host_batches = list(fb.epoch(0))[:3]
  tables = parallel.replicate(
      {"item_log_q": objectives.next_item.item_log_q(splits["train_targets"], ds.item_size)}
      if form == "sampled_softmax" else {}, mesh)
  init = jax.device_get(model.init_params(replicated, jax.random.key(0)))
  make = lambda cfg: train_steps.make_finetune_step(cfg, tx, mesh, chosen, options)
  runs = [_run_steps(make, cfg, host_batches, tables, mesh, tx, init)
          for cfg in (replicated, sharded)]
  _assert_same_runs(*runs, ("loss", "grad_norm") + tuple(weights), ds.item_size)


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_evaluation_with_a_sharded_table_matches_replicated(ds, protocol):
  n = 4
  mesh = _mesh(n)
  replicated, sharded = _configs(ds, n)
  init = jax.device_get(model.init_params(replicated, jax.random.key(4)))
  splits = data.finetune_splits(ds, L)
  got = []
  for cfg in (replicated, sharded):
    params = jax.tree_util.tree_map(
        lambda x, spec: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)),
        model.with_item_rows(init, cfg.item_rows),
        sharding.param_specs(model.with_item_rows(init, cfg.item_rows), cfg.item_table_axis))
    step = eval_steps.make_eval_step(cfg, protocol, mesh, num_items=ds.max_item, chunk_size=6)
    fingerprints = eval_steps.make_table_fingerprints(mesh, 5, cfg.item_table_axis)(params)
    totals = None
    for batch in ip.eval_batches(ds, splits, "valid", protocol, batch_size=24,
                                 shards=ip.Shards(*parallel.local_shards(mesh))):
      sums = jax.device_get(step(params, parallel.shard_batch(batch, mesh), fingerprints))
      totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
    got.append(metrics.finalize(totals))
  for name in eval_steps.metric_names(protocol):
    assert got[1][name] == pytest.approx(got[0][name], abs=1e-6), name
  assert got[0][eval_steps.metric_names(protocol)[-1]] > 0


def test_train_py_with_a_sharded_table_matches_the_replicated_run(tmp_path, tiny_reference_run):
  """The tiny train.py run (pre-training, fine-tuning, test) with the table split over
  4 devices gives the replicated run's metrics, and its checkpoint serves replicated."""
  import cli_runs  # pylint: disable=g-import-not-at-top
  from s3rec_jax.serving import recommend  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "sharded")
  result = cli_runs.run(workdir, {"model.item_table": "sharded"}, devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  # 60 items: 62 rows, split as 4 x 16 with 2 padding rows; said in both phases.
  assert result.stdout.count("item table: sharded (model.item_table=sharded: 62 rows") == 2
  assert "16 rows per device over 4, 2 padding row(s)" in result.stdout
  # The default (auto) keeps this small table replicated, and says why.
  with open(tiny_reference_run + ".stdout") as f:
    assert "item table: replicated (auto: 62 rows x 16 float32 = 0.0 MiB < " in f.read()
  reference = cli_runs.read_results(tiny_reference_run)
  got = cli_runs.read_results(workdir)
  assert got["best_epoch"] == reference["best_epoch"]
  for split in ("valid", "test"):
    for name, value in reference[split].items():
      assert got[split][name] == pytest.approx(value, abs=2e-3), (split, name)
  # The best checkpoint holds the padded table; serving refits it to the replicated rows.
  rec = recommend.Recommender.from_workdir(workdir)
  assert rec.params["item_embeddings"]["embedding"].shape[0] == 62
  want = recommend.Recommender.from_workdir(tiny_reference_run)
  histories = [[1, 2, 3], [5, 8]]
  got_items = [r.items for r in rec.recommend(histories, k=5)]
  want_items = [r.items for r in want.recommend(histories, k=5)]
  assert got_items == want_items


def test_checkpoints_refit_the_padding_rows_and_resume_on_another_device_count(tmp_path):
  """A sharded state saved on 4 devices (item_size 13 -> 16 rows) restores into 3 devices
  (15 rows), replicated (13 rows) and back; another dataset still fails."""
  import optax  # pylint: disable=g-import-not-at-top
  from s3rec_jax.model import checkpointing  # pylint: disable=g-import-not-at-top
  base = model.ModelConfig(item_size=13, attribute_size=5, hidden_size=8, num_layers=1,
                           num_heads=2, max_len=6)
  sharded = lambda n: dataclasses.replace(base, item_table_axis=AXIS,
                                          item_table_rows=item_table.padded_rows(13, n))
  tx = optax.adam(1e-3)
  state = train_steps.create_state(model.init_params(sharded(4), jax.random.key(0)), tx,
                                   _mesh(4), AXIS)
  moments = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
  moments[13:] = 0          # padding rows never get a gradient
  table_state = state.opt_state["item_table"]
  placed_mu = jax.device_put(moments, table_state[0].mu.sharding)
  state = state.replace(opt_state=dict(state.opt_state, item_table=(
      table_state[0]._replace(mu=placed_mu),) + tuple(table_state[1:])))
  mngr = checkpointing.manager(str(tmp_path / "run"))
  checkpointing.save(mngr, 7, state.params, {"epoch": 1}, opt_state=state.opt_state)
  saved_table = np.asarray(state.params["item_embeddings"]["embedding"])
  assert saved_table.shape == (16, 8) and not saved_table[13:].any()

  mesh3 = _mesh(3)
  target = train_steps.create_state(model.init_params(sharded(3), jax.random.key(1)), tx, mesh3,
                                    AXIS)
  _, params, opt_state, _ = checkpointing.restore_latest_good(
      mngr, target.params, target.opt_state, None, print, item_size=13)
  table = params["item_embeddings"]["embedding"]
  assert table.shape == (15, 8) and table.sharding == target.params[
      "item_embeddings"]["embedding"].sharding
  np.testing.assert_array_equal(np.asarray(table)[:13], saved_table[:13])
  np.testing.assert_array_equal(np.asarray(opt_state["item_table"][0].mu), moments[:15])

  replicated = model.init_params(base, jax.random.key(1))
  restored = checkpointing.restore_params(mngr, 7, replicated,
                                          parallel.replicated(_mesh(2)), item_size=13)
  np.testing.assert_array_equal(np.asarray(restored["item_embeddings"]["embedding"]),
                                saved_table[:13])
  # Without item_size, or for a model of another catalogue, the shapes must agree.
  with pytest.raises(checkpointing.CheckpointError, match="has shape"):
    checkpointing.restore_params(mngr, 7, replicated, parallel.replicated(_mesh(2)))
  other = model.init_params(dataclasses.replace(base, item_size=17), jax.random.key(1))
  with pytest.raises(checkpointing.CheckpointError, match="another dataset"):
    checkpointing.restore_params(mngr, 7, other, parallel.replicated(_mesh(2)), item_size=17)
  # Resuming with the other layout names the likely cause.
  flat = train_steps.create_state(replicated, tx, _mesh(2))
  with pytest.raises(checkpointing.CheckpointError, match="another model.item_table layout"):
    checkpointing.restore_full(mngr, 7, flat.params, flat.opt_state, item_size=13)
  mngr.close()
