"""The whole pipeline on the built-in synthetic set: pre-train, hand-off, fine-tune, test, evaluate."""

import json
import os
import re

import jax
import numpy as np
import pytest

from s3rec_jax.configs import synthetic
from s3rec_jax.core import parallel
from s3rec_jax.data import dataset as data
from s3rec_jax.evaluation import evaluator
from s3rec_jax.model import checkpointing
from s3rec_jax.model import encoder as model
from s3rec_jax.model import encoder as model_lib
from s3rec_jax import objectives
from s3rec_jax.training import comparison
from s3rec_jax.training import config_validation
from s3rec_jax.training import run as run_lib
from s3rec_jax.training import setup


def tiny_config(**overrides):
  c = synthetic.get_config()
  c.synthetic.kind = "markov"
  c.compare_to_sasrec = False
  c.synthetic.num_users = 120
  c.synthetic.num_items = 60
  c.synthetic.num_attributes = 12
  c.sample.num_negatives = 20
  c.max_seq_length = 12
  c.model.hidden_size = 16
  c.model.num_layers = 1
  c.pretrain.epochs = 2
  c.pretrain.batch_size = 64
  c.finetune.epochs = 4
  c.finetune.batch_size = 32
  c.finetune.patience = 2
  c.eval.batch_size = 64
  c.eval.chunk_size = 32
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


@pytest.mark.slow
def test_full_pipeline_writes_results_and_reevaluates(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  results = run_lib.run(tiny_config(), workdir)
  out = capsys.readouterr().out
  assert "pre-training: saved checkpoint" in out and "loaded embeddings and encoder" in out
  # The conftest's CPU devices: the step runs its shard in (automatically) chosen micro-batches.
  assert re.search(r"\d+ micro-batch\(es\) per device step, automatic: cpu devices", out)
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  assert written["protocol"] == "sampled" and written["dataset"] == "synthetic"
  for name in ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "MRR"):
    assert 0.0 <= written[name] <= 1.0 and written[name] == written["test"][name]
  assert set(written["valid"]) == set(written["test"])
  assert written["pretrain_checkpoint"]["step"] == 2
  assert written["pretrain_checkpoint"]["path"].endswith(os.path.join("pretrain", "2"))
  assert written["config"]["pretrain"]["epochs"] == 2
  assert results["HR@10"] == written["HR@10"]
  # No temp files left next to the results.
  assert not [f for f in os.listdir(workdir) if f.startswith(".tmp")]
  # Pre-training losses were logged per epoch.
  with open(os.path.join(workdir, "log.jsonl")) as f:
    records = [json.loads(line) for line in f]
  pre = [r for r in records if r["phase"] == "pretrain"]
  assert [r["epoch"] for r in pre] == [1, 2]
  assert all(set(r) >= {"aap", "mip", "map", "sp", "loss"} for r in pre)

  # evaluate.py's path: the best checkpoint gives the same test metrics, under either protocol.
  again = run_lib.evaluate_best(tiny_config(), workdir)
  for name, value in written["test"].items():
    assert again["test"][name] == pytest.approx(value, abs=1e-6)
  full = run_lib.evaluate_best(tiny_config(**{"eval.protocol": "full"}), workdir)
  assert set(full["test"]) == {"HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"}

  # A second run fine-tunes from the first run's checkpoint folder, naming it explicitly.
  other = run_lib.run(tiny_config(**{
      "pretrain.epochs": 0, "finetune.epochs": 1,
      "finetune.init_checkpoint": os.path.join(workdir, "pretrain")}), str(tmp_path / "run2"))
  assert other["pretrain_checkpoint"]["step"] == 2


@pytest.mark.slow
def test_compare_to_sasrec_trains_the_baseline_and_prints_both(tmp_path, capsys):
  results = run_lib.run(tiny_config(**{"compare_to_sasrec": True, "pretrain.epochs": 1,
                                         "finetune.epochs": 2, "eval.protocol": "full"}),
                          str(tmp_path))
  out = capsys.readouterr().out
  baseline = json.loads((tmp_path / "sasrec" / "results.json").read_text())
  # The baseline is plain SASRec, and says so.
  assert "plain SASRec" in out and not os.path.exists(tmp_path / "sasrec" / "pretrain")
  assert baseline["pretrain_checkpoint"] is None and results["pretrain_checkpoint"] is not None
  assert baseline["config"]["pretrain"]["epochs"] == 0 and baseline["protocol"] == "full"
  assert "HR@20" in baseline
  table = (tmp_path / "comparison.md").read_text()
  assert table.strip() in out
  ndcg = {"S3-Rec": results["NDCG@20"], "SASRec": baseline["NDCG@20"]}
  winner = max(ndcg, key=ndcg.get)
  assert f"{winner} wins on test NDCG@20" in table or "tie on test NDCG@20" in table
  assert f"{results['NDCG@20']:.4f}" in table and f"{baseline['NDCG@20']:.4f}" in table


def test_comparison_table_names_the_winner():
  table = comparison.comparison_table({"A": {"MRR": 0.5, "HR@1": 0.3},
                                      "B": {"MRR": 0.6, "HR@1": 0.2}}, decide_by="MRR")
  assert "B wins on test MRR: 0.6000 against 0.5000 for A" in table
  assert "HR@1" in table.splitlines()[3]
  tie = comparison.comparison_table({"A": {"MRR": 0.5}, "B": {"MRR": 0.5}}, decide_by="MRR")
  assert "tie on test MRR" in tie


def test_missing_init_checkpoint_fails_before_training(tmp_path):
  config = tiny_config(**{"pretrain.epochs": 0, "finetune.init_checkpoint": str(tmp_path / "nope")})
  with pytest.raises(checkpointing.CheckpointError, match="does not exist"):
    run_lib.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "results.json")


@pytest.mark.parametrize("field, value, message", [
    ("model.num_heads", 3, "divisible"),
    ("pretrain.mask_p", 1.5, r"probability in \[0, 1\]"),
    ("model.hidden_dropout", -0.1, "probability"),
    ("eval.protocol", "loo", "valid protocols: sampled, full"),
    ("pretrain.form", "nce", "valid forms: reference, infonce"),
    ("pretrain.batch_size", 0, "positive integer"),
    ("finetune.epochs", -1, "non-negative"),
    ("pretrain.micro_batches", -1, "non-negative"),
    ("synthetic.kind", "zipf", "expected 'markov' or 'long_tail'"),
])
def test_config_validation(field, value, message):
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(tiny_config(**{field: value}))


def test_unknown_objective_is_named():
  c = tiny_config()
  c.pretrain.objectives.nsp = 1.0
  with pytest.raises(config_validation.ConfigError, match="unknown objective 'nsp'.*aap, cl4srec, duorec, encoder_penalty, map, mip, sp"):
    config_validation.validate(c)


def test_batch_must_divide_by_devices(tmp_path):
  with pytest.raises(ValueError, match="batch_size=30 is not divisible by the 4 devices"):
    run_lib.run(tiny_config(**{"pretrain.batch_size": 30}), str(tmp_path))


def test_micro_batches_refused_for_whole_batch_objectives():
  c = tiny_config(**{"pretrain.epochs": 1, "pretrain.form": "infonce", "pretrain.micro_batches": 2})
  with pytest.raises(config_validation.ConfigError, match="micro_batches=2.*sp.*whole batch"):
    config_validation.validate(c)
  c.pretrain.micro_batches = 0   # automatic: one piece
  config_validation.validate(c)


def test_pretrain_micro_batches_follow_the_rows_per_device(tmp_path):
  config = tiny_config(**{"pretrain.batch_size": 240})
  ds = setup.load_data(config, str(tmp_path))
  chosen = objectives.resolve(config.pretrain.objectives.to_dict(), "reference")
  one = parallel.make_mesh(jax.devices()[:1])
  starts, ends = data.pretrain_prefixes(ds, config.max_seq_length)
  rows = 240 * np.mean(ends - starts) / (0.9 * config.max_seq_length)
  count, why = setup.pretrain_micro_batches(config, ds, one, chosen)
  assert count == parallel.auto_micro_batches("cpu", rows) > 1 and "automatic" in why
  config.pretrain.micro_batches = 3
  assert setup.pretrain_micro_batches(config, ds, one, chosen)[0] == 3
  config.pack_sequences = False   # one sequence per row: 240 rows
  config.pretrain.micro_batches = 0
  assert setup.pretrain_micro_batches(config, ds, one, chosen)[0] == parallel.auto_micro_batches(
      "cpu", 240)


def _evaluation_setup(tmp_path, **overrides):
  """(config, dataset, splits, mesh, model config, params) of the tiny config, 16 users a batch."""
  config = tiny_config(**{"eval.batch_size": 16, **overrides})
  ds = setup.load_data(config, str(tmp_path))
  splits = data.finetune_splits(ds, config.max_seq_length)
  mesh = parallel.make_mesh()
  mcfg = model_lib.model_config(config, ds)
  params = jax.device_put(model.init_params(mcfg, jax.random.key(3)),
                          parallel.replicated(mesh))
  return config, ds, splits, mesh, mcfg, params


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_evaluator_keeps_small_splits_placed_and_gives_the_same_metrics(tmp_path, protocol):
  config, ds, splits, mesh, mcfg, params = _evaluation_setup(tmp_path,
                                                             **{"eval.protocol": protocol})
  kept = evaluator.Evaluator(config, ds, splits, mcfg, mesh, protocol)
  rebuilt = evaluator.Evaluator(config, ds, splits, mcfg, mesh, protocol, cache_bytes=0)
  first = kept(params, "valid")
  assert set(kept.cached) == {"valid"} and len(kept.cached["valid"]) == -(-ds.num_users // 16)
  assert not rebuilt.cached
  other = jax.tree_util.tree_map(lambda x: x * 1.5, params)  # passes differ only in params
  for p in (params, other):
    want = rebuilt(p, "valid")
    assert kept(p, "valid") == want and kept(p, "test") == rebuilt(p, "test")
  assert first == rebuilt(params, "valid")
  # A split over the limit is built anew every pass.
  small = evaluator.Evaluator(config, ds, splits, mcfg, mesh, protocol, cache_bytes=1000)
  assert small(params, "valid") == first and not small.cached


def test_evaluator_with_the_fused_cpu_ranking_gives_the_scan_metrics(tmp_path):
  from s3rec_jax.ops import kernels  # pylint: disable=import-outside-toplevel
  if kernels.compiler() is None:
    pytest.skip("no C++ compiler here (set CXX or install g++): fused_cpu cannot be built")
  got = []
  for ranking in ("scan", "fused_cpu"):
    config, ds, splits, mesh, mcfg, params = _evaluation_setup(
        tmp_path, **{"eval.protocol": "full", "eval.ranking": ranking})
    got.append(evaluator.Evaluator(config, ds, splits, mcfg, mesh, "full")(params, "valid"))
  assert got[1].keys() == got[0].keys()
  for name in got[0]:
    assert got[1][name] == pytest.approx(got[0][name], abs=1e-6), name
