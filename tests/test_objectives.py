"""Each objective, in both forms, against an independent numpy computation on a 2-sequence batch."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3rec_jax import objectives

S3REC = ("aap", "map", "mip", "sp")

H, L, ITEMS, ATTRS = 8, 6, 9, 7          # real items 1..9, mask_id 10, item_size 11; attributes 1..6
MASK = ITEMS + 1


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  # Two sequences, left-padded; row 1 is short. Masked positions hold MASK.
  items = np.array([[3, 5, 1, 7, 2, 9], [0, 0, 0, 4, 6, 8]], np.int32)
  masked = items.copy()
  masked[0, [1, 5]] = MASK
  masked[1, [5]] = MASK
  negatives = np.zeros_like(items)
  negatives[0, [1, 5]] = [4, 6]
  negatives[1, 5] = 2
  batch = {
      "items": items, "masked_items": masked, "negative_items": negatives,
      "segment_context": rng.integers(0, MASK + 1, (2, L)).astype(np.int32),
      "segment_positive": rng.integers(0, MASK + 1, (2, L)).astype(np.int32),
      "segment_negative": rng.integers(0, MASK + 1, (2, L)).astype(np.int32),
      "weights": np.array([1.0, 1.0], np.float32),
      # One sequence per row: the newest token is the last column.
      "last_index": np.array([L - 1, 2 * L - 1], np.int32),
  }
  # Attribute sets (deduplicated, 0-padded), some items with none.
  attr_sets = {1: [1, 2], 2: [3], 3: [2, 4, 6], 4: [], 5: [5], 6: [1, 6], 7: [4], 8: [2, 3], 9: [6]}
  attr_ids = np.zeros((ITEMS + 2, 3), np.int32)
  for item, attrs in attr_sets.items():
    attr_ids[item, :len(attrs)] = attrs
  params = {
      "item_embeddings": {"embedding": rng.normal(0, 0.5, (ITEMS + 2, H)).astype(np.float32)},
      "attribute_embeddings": {"embedding": rng.normal(0, 0.5, (ATTRS, H)).astype(np.float32)},
      "heads": {name: {"kernel": rng.normal(0, 0.4, (H, H)).astype(np.float32),
                       "bias": rng.normal(0, 0.1, (H,)).astype(np.float32)}
                for name in ("aap", "mip", "map", "sp")},
  }
  views = ("masked_items", "segment_context", "segment_positive", "segment_negative")
  outputs = {v: rng.normal(0, 1, (2, L, H)).astype(np.float32) for v in views}
  multi_hot = np.zeros((ITEMS + 2, ATTRS))
  for item, attrs in attr_sets.items():
    multi_hot[item, attrs] = 1.0
  return batch, attr_ids, params, outputs, multi_hot


def _inputs(batch, attr_ids, params, outputs, temperature=1.0, mip_num_negatives=0,
            settings=None):
  options = objectives.ObjectiveOptions(mask_id=MASK, num_items=ITEMS, temperature=temperature,
                                        mip_num_negatives=mip_num_negatives,
                                        settings=objectives.settings_tuple(settings or {}))
  as_jax = lambda t: jax.tree_util.tree_map(jnp.asarray, t)
  return objectives.ObjectiveInputs(as_jax(outputs), as_jax(params), as_jax(batch),
                                    {"attr_ids": jnp.asarray(attr_ids)}, jax.random.key(0), options)


def _head(params, name, x):
  return x @ params["heads"][name]["kernel"].astype(np.float64) + params["heads"][name]["bias"]


def _np_attribute_reference(params, outputs, batch, multi_hot, head, positions):
  """Reference: BCE(sigmoid(score), multi-hot) summed over ALL attribute rows at chosen positions."""
  q = _head(params, head, outputs["masked_items"].astype(np.float64))
  scores = q @ params["attribute_embeddings"]["embedding"].T.astype(np.float64)
  p = _sigmoid(scores)
  y = multi_hot[batch["items"]]
  bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1)
  return float((bce * positions).sum())


def _np_attribute_infonce(params, outputs, batch, multi_hot, head, positions, tau, mean=True):
  q = _head(params, head, outputs["masked_items"].astype(np.float64))
  logits = q @ params["attribute_embeddings"]["embedding"].T.astype(np.float64) / tau
  total = 0.0
  for b in range(2):
    for t in range(L):
      if not positions[b, t]:
        continue
      own = np.flatnonzero(multi_hot[batch["items"][b, t]])
      negs = [a for a in range(1, ATTRS) if a not in own]
      terms = [-(z[0] - np.log(np.exp(z).sum())) for z in (
          np.concatenate([[logits[b, t, a]], logits[b, t, negs]]) for a in own)]
      # The paper's expectation over the item's attributes, or their sum.
      total += (np.mean(terms) if mean else np.sum(terms)) if terms else 0.0
  return total


def _visible(batch):
  return (batch["masked_items"] != MASK) & (batch["masked_items"] != 0)


def _masked(batch):
  return batch["masked_items"] == MASK


@pytest.mark.parametrize("form", ["reference", "infonce"])
@pytest.mark.parametrize("name", ["aap", "map"])
def test_attribute_objectives(name, form):
  batch, attr_ids, params, outputs, multi_hot = _setup()
  positions = _visible(batch) if name == "aap" else _masked(batch)
  got = float(objectives.get(name, form).fn(_inputs(batch, attr_ids, params, outputs, 0.5)))
  if form == "reference":
    want = _np_attribute_reference(params, outputs, batch, multi_hot, name, positions)
  else:
    want = _np_attribute_infonce(params, outputs, batch, multi_hot, name, positions, 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  if form == "infonce":   # the named option keeps the sum over attributes
    inputs = _inputs(batch, attr_ids, params, outputs, 0.5)
    inputs = dataclasses.replace(inputs, options=dataclasses.replace(
        inputs.options,
        settings=objectives.settings_tuple({"infonce": {"attribute_reduction": "sum"}})))
    summed = float(objectives.get(name, form).fn(inputs))
    np.testing.assert_allclose(summed, _np_attribute_infonce(
        params, outputs, batch, multi_hot, name, positions, 0.5, mean=False), rtol=1e-5)
    assert summed > got


def test_mip_reference():
  batch, attr_ids, params, outputs, _ = _setup()
  table = params["item_embeddings"]["embedding"].astype(np.float64)
  q = _head(params, "mip", outputs["masked_items"].astype(np.float64))
  p = _sigmoid((q * table[batch["items"]]).sum(-1))
  n = _sigmoid((q * table[batch["negative_items"]]).sum(-1))
  want = float((-np.log(_sigmoid(p - n)) * _masked(batch)).sum())
  got = float(objectives.get("mip", "reference").fn(_inputs(batch, attr_ids, params, outputs)))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mip_infonce_whole_catalogue():
  batch, attr_ids, params, outputs, _ = _setup()
  table = params["item_embeddings"]["embedding"].astype(np.float64)
  logits = _head(params, "mip", outputs["masked_items"].astype(np.float64)) @ table.T / 2.0
  want = 0.0
  for b, t in zip(*np.nonzero(_masked(batch))):
    row = logits[b, t, 1:ITEMS + 1]                      # real items only: no padding, no mask
    want += -(logits[b, t, batch["items"][b, t]] - np.log(np.exp(row).sum()))
  got = float(objectives.get("mip", "infonce").fn(_inputs(batch, attr_ids, params, outputs, 2.0)))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mip_infonce_sampled_negatives():
  batch, attr_ids, params, outputs, _ = _setup()
  inputs = _inputs(batch, attr_ids, params, outputs, 1.0, mip_num_negatives=5)
  negatives = np.asarray(jax.random.randint(inputs.key, (5,), 1, ITEMS + 1))
  table = params["item_embeddings"]["embedding"].astype(np.float64)
  q = _head(params, "mip", outputs["masked_items"].astype(np.float64))
  want = 0.0
  for b, t in zip(*np.nonzero(_masked(batch))):
    pos = batch["items"][b, t]
    negs = [n for n in negatives if n != pos]           # a draw equal to the positive is no negative
    z = np.concatenate([[q[b, t] @ table[pos]], [q[b, t] @ table[n] for n in negs]])
    want += -(z[0] - np.log(np.exp(z).sum()))
  got = float(objectives.get("mip", "infonce").fn(inputs))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sp_reference():
  batch, attr_ids, params, outputs, _ = _setup()
  c = _head(params, "sp", outputs["segment_context"][:, -1].astype(np.float64))
  p = _sigmoid((c * outputs["segment_positive"][:, -1]).sum(-1))
  n = _sigmoid((c * outputs["segment_negative"][:, -1]).sum(-1))
  want = float(-np.log(_sigmoid(p - n)).sum())
  got = float(objectives.get("sp", "reference").fn(_inputs(batch, attr_ids, params, outputs)))
  np.testing.assert_allclose(got, want, rtol=1e-5)


IN_BATCH = {"infonce": {"sp_negatives": "in_batch"}}


def test_sp_infonce_in_batch_negatives_and_padding_rows():
  batch, attr_ids, params, outputs, _ = _setup()
  c = _head(params, "sp", outputs["segment_context"][:, -1].astype(np.float64))
  s = outputs["segment_positive"][:, -1].astype(np.float64)
  logits = c @ s.T / 0.7
  want = sum(-(logits[i, i] - np.log(np.exp(logits[i]).sum())) for i in range(2))
  sp = objectives.get("sp", "infonce").fn
  got = float(sp(_inputs(batch, attr_ids, params, outputs, 0.7, settings=IN_BATCH)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # A padding row (weight 0) neither adds a loss nor serves as a negative.
  batch["weights"] = np.array([1.0, 0.0], np.float32)
  got = float(sp(_inputs(batch, attr_ids, params, outputs, 0.7, settings=IN_BATCH)))
  np.testing.assert_allclose(got, 0.0, atol=1e-6)  # row 0's only candidate is its own span


@pytest.mark.parametrize("count", [1, 3])
def test_sp_infonce_same_layout_negatives(count):
  batch, attr_ids, params, outputs, _ = _setup()
  rng = np.random.default_rng(5)
  for k in range(2, count + 1):
    outputs[f"segment_negative_{k}"] = rng.normal(0, 1, (2, L, H)).astype(np.float32)
  names = ["segment_positive", "segment_negative"] + [f"segment_negative_{k}"
                                                      for k in range(2, count + 1)]
  c = _head(params, "sp", outputs["segment_context"][:, -1].astype(np.float64))
  logits = np.stack([(c * outputs[n][:, -1]).sum(-1) for n in names], 1) / 0.7   # [B, 1+K]
  want = float(np.sum(np.log(np.exp(logits).sum(1)) - logits[:, 0]))
  settings = {"infonce": {"sp_num_negatives": count}}
  got = float(objectives.get("sp", "infonce").fn(
      _inputs(batch, attr_ids, params, outputs, 0.7, settings=settings)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The objective asks for exactly those views; the other sequences' spans play no part.
  options = _inputs(batch, attr_ids, params, outputs, settings=settings).options
  chosen = objectives.resolve({"sp": 1.0}, "infonce")
  assert objectives.views_of(chosen, options) == ((), ("segment_context", *names))



def test_padding_rows_contribute_nothing():
  batch, attr_ids, params, outputs, _ = _setup()
  for (name, form) in objectives.REGISTRY:
    if name not in S3REC:   # the others read views these pre-training outputs do not hold
      continue
    full = float(objectives.get(name, form).fn(_inputs(batch, attr_ids, params, outputs)))
    one = {k: v[:1] for k, v in batch.items()}
    one["last_index"] = batch["last_index"][:1]
    outs = {k: v[:1] for k, v in outputs.items()}
    only_first = float(objectives.get(name, form).fn(_inputs(one, attr_ids, params, outs)))
    # Row 1 emptied: no tokens, weight 0 (what the pipeline makes of a padding row).
    empty = {k: (v.copy() if v.ndim == 2 else v) for k, v in batch.items()}
    for k in ("items", "masked_items", "negative_items", "segment_context", "segment_positive",
              "segment_negative"):
      empty[k][1] = 0
    batch_w = dict(empty, weights=np.array([1.0, 0.0], np.float32))
    masked_out = float(objectives.get(name, form).fn(_inputs(batch_w, attr_ids, params, outputs)))
    if (name, form) != ("sp", "infonce"):  # in-batch negatives: checked above
      assert full != pytest.approx(only_first)
    np.testing.assert_allclose(masked_out, only_first, rtol=1e-5, err_msg=f"{name}/{form}")


def test_registry_and_joint_loss():
  batch, attr_ids, params, outputs, _ = _setup()
  chosen = objectives.resolve({"aap": 0.2, "mip": 1.0, "map": 1.0, "sp": 0.5}, "reference")
  assert [o.name for o, _ in chosen] == ["aap", "map", "mip", "sp"]
  assert objectives.views_of(chosen) == (
      ("masked_items",), ("segment_context", "segment_positive", "segment_negative"))
  total, losses = objectives.joint_loss(chosen, _inputs(batch, attr_ids, params, outputs))
  want = 0.2 * losses["aap"] + losses["mip"] + losses["map"] + 0.5 * losses["sp"]
  np.testing.assert_allclose(float(total), float(want), rtol=1e-6)
  # Weight 0 disables an objective; unknown names and forms are clear errors.
  assert [o.name for o, _ in objectives.resolve({"aap": 0.0, "mip": 1.0}, "infonce")] == ["mip"]
  with pytest.raises(ValueError, match="valid objectives of pretrain: aap, cl4srec, duorec, encoder_penalty, "
                     "map, mip, sp"):
    objectives.resolve({"nsp": 1.0}, "reference")
  with pytest.raises(ValueError, match="valid forms"):
    objectives.get("aap", "contrastive")
  with pytest.raises(ValueError, match="no objective"):
    objectives.resolve({"aap": 0.0}, "reference")
  # Each objective names the phases it runs in.
  with pytest.raises(ValueError, match="'aap' does not run in finetune"):
    objectives.resolve({"aap": 1.0}, "reference", phase="finetune")
  with pytest.raises(ValueError, match="'next_item' does not run in pretrain"):
    objectives.resolve({"next_item": 1.0}, "reference")
  # One-form objectives ignore the S3-Rec form; next_item takes its form by name.
  chosen = objectives.resolve({"cl4srec": 1.0, "next_item": 1.0}, {"next_item": "ce"},
                              phase="finetune")
  assert [(o.name, o.form) for o, _ in chosen] == [("cl4srec", "infonce"), ("next_item", "ce")]


def test_new_objective_is_one_function():
  """A user-defined objective registers itself and joins the joint loss unchanged."""
  name = "test_norm_penalty"

  @objectives.register(name, "reference", views=("masked_items",))
  def _penalty(inputs):
    return jnp.sum(inputs.outputs["masked_items"] ** 2) * 0.0 + 3.0

  try:
    batch, attr_ids, params, outputs, _ = _setup()
    chosen = objectives.resolve({"mip": 1.0, name: 2.0}, "reference")
    total, losses = objectives.joint_loss(chosen, _inputs(batch, attr_ids, params, outputs))
    np.testing.assert_allclose(float(total), float(losses["mip"]) + 6.0, rtol=1e-6)
  finally:
    del objectives.REGISTRY[(name, "reference")]


@pytest.mark.parametrize("form", ["reference", "infonce"])
def test_attribute_objectives_do_not_depend_on_each_other(form):
  """AAP and MAP share one score matrix; each still equals its value computed alone."""
  batch, attr_ids, params, outputs, _ = _setup()
  both = objectives.resolve({"aap": 1.0, "map": 1.0}, form)
  _, joint = objectives.joint_loss(both, _inputs(batch, attr_ids, params, outputs))
  for name, other in (("aap", "map"), ("map", "aap")):
    alone_params = dict(params, heads={k: v for k, v in params["heads"].items() if k != other})
    alone = objectives.get(name, form).fn(_inputs(batch, attr_ids, alone_params, outputs))
    np.testing.assert_allclose(float(joint[name]), float(alone), rtol=1e-6, err_msg=name)
