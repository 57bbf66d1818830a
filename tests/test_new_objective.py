"""A new self-supervised method from outside the package: one view builder, one loss
function and one config entry, trained in both phases by the unchanged pipeline."""

import json
import os

import jax.numpy as jnp
import pytest

from s3rec_jax import objectives
from s3rec_jax.objectives import views
from s3rec_jax.training import run as run_lib

import test_pipeline

NAME = "test_reversal_agreement"


@pytest.fixture
def registered():
  # The view: each sequence's items in reverse order, in its own span (so the packed layout holds).
  @views.register("test_reversed")
  def reversed_view(batch, seed, options):
    del seed, options
    layout = views.layout_of(batch)
    seq = jnp.maximum(layout.sequence, 0)
    source = jnp.where(layout.sequence >= 0,
                       layout.first[seq] + layout.length[seq] - 1 - layout.step,
                       jnp.arange(layout.sequence.shape[0]))
    ids = batch["sequence"].reshape(-1)[source].reshape(batch["sequence"].shape)
    return views.View(ids=ids, segment_ids=batch["segment_ids"], positions=batch["positions"],
                      last_index=batch["last_index"])

  # The loss: a sequence and its reversal should agree at their newest tokens.
  @objectives.register(NAME, "default", last_token_views=("sequence", "test_reversed"),
                       phases=("pretrain", "finetune"), mean_over="sequences")
  def agreement(inputs):
    a, b = inputs.last_token("sequence"), inputs.last_token("test_reversed")
    weights = objectives.sequence_weights(inputs.batch)
    return jnp.sum(weights * jnp.sum((a - b) ** 2, axis=-1))

  yield
  del objectives.REGISTRY[(NAME, "default")]
  del views.REGISTRY["test_reversed"]


@pytest.mark.slow
def test_new_objective_trains_in_both_phases(registered, tmp_path):
  config = test_pipeline.tiny_config(**{"pretrain.epochs": 1, "finetune.epochs": 2})
  with config.unlocked():   # the one config entry per phase
    config.pretrain.objectives[NAME] = 0.5
    config.finetune.objectives[NAME] = 0.1
  workdir = str(tmp_path / "run")
  results = run_lib.run(config, workdir)
  assert 0.0 <= results["MRR"] <= 1.0
  with open(os.path.join(workdir, "log.jsonl")) as f:
    records = [json.loads(line) for line in f]
  pre = [r for r in records if r["phase"] == "pretrain"]
  fine = [r for r in records if r["phase"] == "finetune"]
  assert pre and all(NAME in r and r[NAME] > 0 for r in pre)
  assert len(fine) == 2 and all(r["objectives"][NAME] > 0 for r in fine)
  assert all(set(r["objectives"]) == {"next_item", NAME} for r in fine)
