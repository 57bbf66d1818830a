"""The experiment runner: grid x seeds, resumable, table and chart of every seed."""

import json
import os
import subprocess
import sys

import pytest

from s3rec_jax.tools import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _spec(tmp_path, body):
  path = tmp_path / "spec.py"
  path.write_text(body)
  return str(path)


SPEC = '''
def get_spec():
  return {"config": "configs/synthetic.py", "overrides": {"finetune.epochs": 3},
          "cells": {"S3-Rec": {}, "SASRec, min 2": {"pretrain.epochs": 0, "finetune.min_epochs": 2}},
          "seeds": [1, 2], "metrics": ["HR@10", "MRR"],
          "published": {"paper": {"MRR": 0.5}}}
'''


class FakeTrain:
  """Writes a results.json whose metrics depend on the cell and seed; counts runs."""

  def __init__(self):
    self.calls = []

  def __call__(self, command, log_path):
    self.calls.append(command)
    workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
    seed = int(next(a.split("=", 1)[1] for a in command if a.startswith("--config.seed=")))
    sasrec = any(a == "--config.pretrain.epochs=0" for a in command)
    value = (0.3 if sasrec else 0.5) + 0.01 * seed
    # Validation ranks the cells the other way round from test: the choice must follow it.
    valid = 0.9 - value
    ce_method = next((a.split("=", 1)[1] for a in command
                      if a.startswith("--config.settings.next_item.ce_method=")), "scan")
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"test": {"HR@10": value, "MRR": value / 2},
                 "valid": {"HR@10": valid, "MRR": valid / 2}, "best_epoch": seed + 1,
                 "config": {"settings": {"next_item": {"ce_method": ce_method}}}}, f)
    with open(os.path.join(workdir, "log.jsonl"), "w") as f:
      f.write(json.dumps({"phase": "done", "wall_seconds": 60.0 * seed}) + "\n")
    return 0


def test_runs_every_cell_and_seed_once_and_summarises(tmp_path):
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  fake = FakeTrain()
  root = str(tmp_path / "exp")
  collected = experiment.run(spec, root, runner=fake, log=lambda _: None)
  assert len(fake.calls) == 4
  command = fake.calls[-1]
  assert command[1:3] == ["-m", "s3rec_jax.tools.train"] and "--config.finetune.min_epochs=2" in command
  assert "--config.finetune.epochs=3" in command and "--config.seed=2" in command
  assert collected["S3-Rec"]["seeds"] == {1: {"HR@10": 0.51, "MRR": 0.255},
                                          2: {"HR@10": 0.52, "MRR": 0.26}}
  table = open(os.path.join(root, "results.md")).read()
  # mean +- sample std, then every seed's value; the overrides that made the cell.
  assert "| S3-Rec | 2/2 | 0.5150 +- 0.0071 [0.5100, 0.5200] |" in table
  assert "`finetune.min_epochs=2`" in table and "| paper |  | 0.5000 |" in table
  assert "| 2, 3 | 1.0 min, 2.0 min |" in table   # best epochs, wall per run
  # Chosen on validation MRR (the last metric), not on test: SASRec, whose test is lower.
  assert ("Chosen on validation MRR (mean over 2 seeds, among the 2 cell(s) with every seed): "
          "**SASRec, min 2** (validation 0.2925); its test: HR@10 0.3150, MRR 0.1575.") in table
  png = open(os.path.join(root, "results.png"), "rb").read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  # Resumable: finished runs are skipped.
  experiment.run(spec, root, runner=fake, log=lambda _: None)
  assert len(fake.calls) == 4


def test_a_failed_run_stops_with_its_log_named(tmp_path):
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  with pytest.raises(experiment.errors.UserError, match=r"S3-Rec, seed 1: s3rec-train exited with "
                     r"status 3; see .*seed_1/train.log"):
    experiment.run(spec, str(tmp_path / "exp"), runner=lambda c, l: 3, log=lambda _: None)


@pytest.mark.parametrize("body, message", [
    ("def get_spec():\n  return {'cells': {'a': {}}}\n", "needs a 'config' field"),
    ("def get_spec():\n  return {'config': 'c.py', 'cells': {}}\n", "'cells' must be a non-empty"),
    ("def get_spec():\n  return {'config': 'c.py', 'cells': {'a': {}}, 'seed': 1}\n",
     "unknown spec field(s) seed"),
    ("def get_spec(:\n", "cannot load the spec (SyntaxError"),
    ("def get_spec():\n  return {'config': 'c.py', 'cells': {'a': {}}, 'select_on': 3}\n",
     "'select_on' is 3; expected a metric name"),
])
def test_bad_specs_are_one_line_errors(tmp_path, body, message):
  path = _spec(tmp_path, body)
  result = subprocess.run([sys.executable, "-m", "s3rec_jax.tools.experiment", path, "--workdir",
                           str(tmp_path / "exp")], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, expected", [
    (["--workdir", "EXP"], "name the SPEC file (experiments/*.py) to run"),
    (["SPEC", "--workdir", "EXP", "other.py"], "unexpected argument 'other.py'; expected one SPEC file"),
    (["SPEC"], "--workdir is required"),
    (["SPEC", "--workdir", "EXP", "--seed", "1"], "unknown flag --seed; did you mean --seeds?"),
    (["SPEC", "--workdir", "EXP", "--seeds", "1,x"],
     "--seeds='1,x': expected a comma list of integers"),
    (["SPEC", "--workdir", "EXP", "--implementation", "eval.ranking"],
     "--implementation 'eval.ranking': expected FIELD=VALUE"),
])
def test_bad_usage_is_one_line_and_returns_2(tmp_path, capsys, argv, expected):
  path = _spec(tmp_path, SPEC)
  argv = [{"SPEC": path, "EXP": str(tmp_path / "exp")}.get(a, a) for a in argv]
  assert experiment.main(argv) == 2
  err = capsys.readouterr().err
  assert err == f"s3rec-experiment: error: {expected} (see s3rec-experiment --help)\n", err
  assert not os.path.exists(tmp_path / "exp")


def test_help_returns_0_and_lists_the_flags(capsys):
  assert experiment.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("s3rec-experiment SPEC --workdir DIR")
  for name in ("workdir", "seeds", "cells", "ledger", "[no]summarize_only", "[no]plan",
               "implementation", "[no]remeasure_transcribed"):
    assert f"\n  --{name}\n" in out, name
  assert "\n  --[no]help, -h\n" in out


def test_the_command_line_takes_flags_before_or_after_the_spec(tmp_path, capsys, monkeypatch):
  spec = os.path.join(REPO, "experiments", "leaderboard.py")
  ledger = tmp_path / "ledger.jsonl"
  ledger.write_text("")
  flags = ["--workdir", str(tmp_path / "exp"), "--ledger", str(ledger),
           "--implementation", "settings.next_item.ce_method=fused_cpu",
           "--implementation", "eval.ranking=fused_cpu", "--cells", "LastFM: BSARec (ce)",
           "--seeds", "1,2", "--plan"]
  texts = []
  for argv in ([spec, *flags], [*flags, spec], [*flags[:4], spec, *flags[4:]]):
    assert experiment.main(argv) == 0
    texts.append(capsys.readouterr().out)
  assert texts[0] == texts[1] == texts[2], texts
  assert texts[0].startswith("2 run(s) left:\n  LastFM: BSARec (ce), seed 1: no finished run")
  assert "LastFM: BSARec (ce), seed 2" in texts[0] and not os.path.exists(tmp_path / "exp")
  # What the runner is handed: the implementation choices, seeds and cells (one holding ", ").
  calls = []
  monkeypatch.setattr(experiment, "run", lambda spec, root, **kwargs: calls.append(
      (spec.implementation, spec.seeds, root, kwargs)))
  assert experiment.main([_spec(tmp_path, SPEC), "--workdir", "exp", "--seeds", "7",
                          "--cells", "SASRec, min 2,S3-Rec", "--implementation", "eval.ranking=x",
                          "--ledger", "l.jsonl", "--remeasure_transcribed"]) == 0
  assert calls == [({"eval.ranking": "x"}, (7,), os.path.abspath("exp"),
                    {"cells": ["SASRec, min 2", "S3-Rec"], "ledger": "l.jsonl",
                     "remeasure_transcribed": True})]


def test_shipped_specs_load():
  for name in ("lastfm_ablation.py", "beauty_full_ranking.py"):
    spec = experiment.load_spec(os.path.join(REPO, "experiments", name))
    assert os.path.exists(spec.config) and spec.seeds == (42, 1, 2) and len(spec.cells) >= 6


def test_a_ledger_carries_finished_runs_to_another_workdir(tmp_path):
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  ledger = str(tmp_path / "ledger.jsonl")
  fake = FakeTrain()
  first = experiment.run(spec, str(tmp_path / "a"), ledger=ledger, runner=fake, log=lambda _: None)
  records = [json.loads(line) for line in open(ledger)]
  assert len(fake.calls) == 4 and len(records) == 4
  assert records[0]["cell"] == "S3-Rec" and records[0]["seed"] == 1
  assert records[0]["overrides"] == {"finetune.epochs": "3"}
  assert records[0]["test"] == {"HR@10": 0.51, "MRR": 0.255} and records[0]["best_epoch"] == 2
  assert records[0]["config"] == "configs/synthetic.py" and records[0]["cpu"]
  assert records[1]["wall_seconds"] == 120.0
  # Another machine, an empty workdir, the same ledger: nothing reruns, the table is the same.
  second = experiment.run(spec, str(tmp_path / "b"), ledger=ledger, runner=fake,
                          log=lambda _: None)
  assert len(fake.calls) == 4 and second == first
  assert (open(tmp_path / "a" / "results.md").read()
          == open(tmp_path / "b" / "results.md").read())
  # A cell whose overrides changed is run again; its stale records are ignored.
  edited = experiment.load_spec(_spec(tmp_path, SPEC.replace('"S3-Rec": {}',
                                                             '"S3-Rec": {"sp": 1}')))
  experiment.run(edited, str(tmp_path / "c"), ledger=ledger, runner=fake, log=lambda _: None)
  assert len(fake.calls) == 6 and len(open(ledger).readlines()) == 6


def test_a_bad_ledger_line_is_named(tmp_path):
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  ledger = tmp_path / "ledger.jsonl"
  ledger.write_text('{"cell": "S3-Rec", "seed": 1, "config": "c", "overrides": {}, "test": {}}\n'
                    '{"cell": "S3-Rec", "seed"\n')
  with pytest.raises(experiment.SpecError, match=r"ledger.jsonl:2: not a JSON record"):
    experiment.run(spec, str(tmp_path / "a"), ledger=str(ledger), runner=FakeTrain(),
                   log=lambda _: None)
  ledger.write_text("5\n")   # JSON, but no record
  with pytest.raises(experiment.SpecError, match=r"ledger.jsonl:1: a ledger record needs"):
    experiment.run(spec, str(tmp_path / "a"), ledger=str(ledger), runner=FakeTrain(),
                   log=lambda _: None)


def test_cells_are_named_whole_or_by_folder():
  spec = experiment.load_spec(os.path.join(REPO, "experiments", "lastfm_ablation.py"))
  assert experiment.select_cells(spec, "SASRec, min 30 epochs,w/o SP") == [
      "SASRec, min 30 epochs", "w/o SP"]
  assert experiment.select_cells(spec, "SASRec,w_o_AAP") == ["SASRec", "w/o AAP"]
  with pytest.raises(experiment.SpecError, match="no cell 'SASRec2'"):
    experiment.select_cells(spec, "SASRec2")


def test_transcribed_ledger_records_are_marked(tmp_path):
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  ledger = tmp_path / "ledger.jsonl"
  ledger.write_text(json.dumps({
      "cell": "S3-Rec", "seed": 1, "config": "configs/synthetic.py",
      "overrides": {"finetune.epochs": "3"}, "test": {"HR@10": 0.5, "MRR": 0.25},
      "transcribed_from": "an old table"}) + "\n")
  collected = experiment.summarize(spec, str(tmp_path / "a"), str(ledger))
  assert collected["S3-Rec"]["seeds"] == {1: {"HR@10": 0.5, "MRR": 0.25}}
  table = open(tmp_path / "a" / "results.md").read()
  assert "| S3-Rec | 1/2* | 0.5000 +- 0.0000 [0.5000] |" in table
  assert "transcribed from an earlier record, not written by a run: an old table." in table


def test_implementation_fields_change_how_runs_compute_not_which_cells_they_are(tmp_path):
  import dataclasses  # pylint: disable=import-outside-toplevel
  from s3rec_jax.core import errors  # pylint: disable=import-outside-toplevel
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  fused = dataclasses.replace(spec, implementation=experiment.parse_implementation(
      ["settings.next_item.ce_method=fused_cpu"]))
  ledger = str(tmp_path / "ledger.jsonl")
  fake = FakeTrain()
  experiment.run(fused, str(tmp_path / "a"), ledger=ledger, runner=fake, log=lambda _: None)
  assert all("--config.settings.next_item.ce_method=fused_cpu" in c for c in fake.calls)
  records = [json.loads(line) for line in open(ledger)]
  assert {r["implementation"]["settings.next_item.ce_method"] for r in records} == {"fused_cpu"}
  assert records[0]["implementation"]["eval.ranking"] == "scan"
  # The cells stay the same: the records match the plain spec, so nothing reruns.
  assert records[0]["overrides"] == {"finetune.epochs": "3"}
  experiment.run(spec, str(tmp_path / "b"), ledger=ledger, runner=fake, log=lambda _: None)
  assert len(fake.calls) == 4
  for bad, message in [("finetune.loss=ce", "not an implementation choice"),
                       ("eval.ranking", "expected FIELD=VALUE")]:
    with pytest.raises(errors.UserError, match=message):
      experiment.parse_implementation([bad])


def test_plan_lists_the_runs_left_with_the_cells_median_wall_time(tmp_path, capsys):
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  fake = FakeTrain()
  root = str(tmp_path / "exp")
  # S3-Rec's two seeds run (60 s and 120 s of wall time); SASRec's none.
  experiment.run(spec, root, cells=["S3-Rec"], runner=fake, log=lambda _: None)
  spec3 = experiment.load_spec(_spec(tmp_path, SPEC.replace("[1, 2]", "[1, 2, 3]")))
  left, text = experiment.plan(spec3, root)
  assert left == [("S3-Rec", 3, 90.0), ("SASRec, min 2", 1, None), ("SASRec, min 2", 2, None),
                  ("SASRec, min 2", 3, None)]
  assert "4 run(s) left:" in text and "S3-Rec, seed 3: about 2 min" in text
  assert "estimated 0.0 h for 1 run(s), and 3 run(s) with no estimate" in text
  # --cells narrows it; the CLI runs nothing.
  assert experiment.plan(spec3, root, cells=["S3-Rec"])[0] == [("S3-Rec", 3, 90.0)]
  assert experiment.main([spec3.path, "--workdir", root, "--plan", "--seeds", "1,2",
                          "--cells", "S3-Rec"]) == 0
  assert "nothing left to run" in capsys.readouterr().out
  assert len(fake.calls) == 2


def test_the_choice_on_validation_names_the_cells_it_could_not_compare(tmp_path):
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  ledger = tmp_path / "ledger.jsonl"
  base = {"config": "configs/synthetic.py", "overrides": {"finetune.epochs": "3"}}
  lines = [dict(base, cell="S3-Rec", seed=s, test={"HR@10": 0.6, "MRR": 0.3},
                transcribed_from="an old table") for s in (1, 2)]
  lines += [dict(base, cell="SASRec, min 2", seed=s, test={"HR@10": 0.4, "MRR": 0.2},
                 valid={"HR@10": 0.5, "MRR": 0.25},
                 overrides={"finetune.epochs": "3", "pretrain.epochs": "0",
                            "finetune.min_epochs": "2"}) for s in (1, 2)]
  ledger.write_text("".join(json.dumps(line) + "\n" for line in lines))
  experiment.summarize(spec, str(tmp_path / "a"), str(ledger))
  table = open(tmp_path / "a" / "results.md").read()
  assert "among the 1 cell(s) with every seed): **SASRec, min 2**" in table
  assert "Not compared, for want of validation figures: S3-Rec." in table


def test_remeasuring_transcribed_records_runs_them_and_prefers_the_runs_own(tmp_path):
  spec = experiment.load_spec(_spec(tmp_path, SPEC))
  ledger = tmp_path / "ledger.jsonl"
  old = {"config": "configs/synthetic.py", "overrides": {"finetune.epochs": "3"},
         "cell": "S3-Rec", "test": {"HR@10": 0.7, "MRR": 0.35}, "transcribed_from": "an old table"}
  ledger.write_text("".join(json.dumps(dict(old, seed=s)) + "\n" for s in (1, 2)))
  fake = FakeTrain()
  root = str(tmp_path / "a")
  # Without the flag the transcribed seeds count as done: only SASRec's two runs are left.
  assert [(c, s) for c, s, _ in experiment.plan(spec, root, ledger=str(ledger))[0]] == [
      ("SASRec, min 2", 1), ("SASRec, min 2", 2)]
  left, _ = experiment.plan(spec, root, ledger=str(ledger), remeasure_transcribed=True)
  assert [(c, s) for c, s, _ in left] == [("S3-Rec", 1), ("S3-Rec", 2), ("SASRec, min 2", 1),
                                         ("SASRec, min 2", 2)]
  experiment.run(spec, root, cells=["S3-Rec"], ledger=str(ledger), runner=fake,
                 log=lambda _: None, remeasure_transcribed=True)
  assert len(fake.calls) == 2
  records = [json.loads(line) for line in open(ledger)]
  # The old records stay; the runs' own join them, with validation figures.
  assert len(records) == 4 and [bool(r.get("transcribed_from")) for r in records] == [
      True, True, False, False]
  # Another workdir, the ledger alone: the measured records win, and the cell can be chosen.
  collected = experiment.summarize(spec, str(tmp_path / "b"), str(ledger))
  assert collected["S3-Rec"]["seeds"][1] == {"HR@10": 0.51, "MRR": 0.255}
  assert collected["S3-Rec"]["transcribed"] == {} and set(collected["S3-Rec"]["valid"]) == {1, 2}
  table = open(tmp_path / "b" / "results.md").read()
  assert "| S3-Rec | 2/2 |" in table and "transcribed from" not in table
  # Nothing is left to re-measure, and a plain run reruns nothing either.
  assert experiment.plan(spec, root, cells=["S3-Rec"], ledger=str(ledger),
                         remeasure_transcribed=True)[0] == []
  experiment.run(spec, str(tmp_path / "c"), cells=["S3-Rec"], ledger=str(ledger), runner=fake,
                 log=lambda _: None, remeasure_transcribed=True)
  assert len(fake.calls) == 2


class FakePretrainingTrain(FakeTrain):
  """FakeTrain that also leaves pre-training checkpoints when it pre-trains."""

  def __call__(self, command, log_path):
    workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
    if "--config.pretrain.epochs=0" not in command:
      os.makedirs(os.path.join(workdir, "pretrain", "150"))
    return super().__call__(command, log_path)


SHARED_SPEC = '''
def get_spec():
  return {"config": "configs/synthetic.py",
          "cells": {"S3-Rec": {}, "SASRec": {"pretrain.epochs": 0},
                    "S3-Rec + contrastive": {"pretrained_by": "S3-Rec",
                                             "finetune.objectives.cl4srec": 0.1}},
          "seeds": [1, 2], "metrics": ["MRR"]}
'''


def test_a_cell_fine_tunes_from_another_cells_pre_training_without_pre_training_again(tmp_path):
  spec = experiment.load_spec(_spec(tmp_path, SHARED_SPEC))
  fake, root = FakePretrainingTrain(), str(tmp_path / "exp")
  ledger = str(tmp_path / "ledger.jsonl")
  experiment.run(spec, root, cells=["S3-Rec + contrastive"], runner=fake, ledger=ledger,
                 log=lambda _: None)
  # Seed by seed: the source cell pre-trains (and fine-tunes) first, then the cell fine-tunes
  # from its checkpoints.
  cells = [os.path.basename(os.path.dirname(
      next(a.split("=", 1)[1] for a in c if a.startswith("--workdir=")))) for c in fake.calls]
  assert cells == ["S3-Rec", "S3-Rec_contrastive", "S3-Rec", "S3-Rec_contrastive"]
  dependent = fake.calls[1]
  assert "--config.pretrain.epochs=0" in dependent
  assert f"--config.finetune.init_checkpoint={root}/S3-Rec/seed_1/pretrain" in dependent
  records = experiment.read_ledger(ledger)
  shared = [r for r in records if r["cell"] == "S3-Rec + contrastive"]
  assert len(shared) == 2 and shared[0]["overrides"]["pretrained_by"] == "S3-Rec"
  # Run again, every cell: nothing pre-trains twice.
  fake.calls.clear()
  experiment.run(spec, root, runner=fake, ledger=ledger, log=lambda _: None)
  assert len(fake.calls) == 2 and all("--config.pretrain.epochs=0" in c for c in fake.calls)


def test_pretrained_by_must_name_a_cell_that_pre_trains(tmp_path):
  for source in ("SASRec", "nope", "S3-Rec + contrastive"):
    body = SHARED_SPEC.replace('"pretrained_by": "S3-Rec"', f'"pretrained_by": "{source}"')
    with pytest.raises(experiment.SpecError, match="expected another cell of the spec that "
                                                   "pre-trains itself"):
      experiment.load_spec(_spec(tmp_path, body))


def test_another_experiments_ledger_counts_for_cells_that_ran_the_same_thing(tmp_path):
  # The other experiment named its cells differently; one record matches S3-Rec's config,
  # overrides and seed, one differs in an override, one matches but was only transcribed.
  other = tmp_path / "ledgers" / "other.jsonl"
  other.parent.mkdir()
  same = {"config": "configs/synthetic.py", "overrides": {"finetune.epochs": "3"}}
  other.write_text("".join(json.dumps(r) + "\n" for r in [
      dict(same, cell="Theirs", seed=1, test={"HR@10": 0.8, "MRR": 0.4},
           valid={"HR@10": 0.1, "MRR": 0.05}),
      dict(same, cell="Theirs, longer", seed=2, test={"HR@10": 0.9, "MRR": 0.45},
           overrides={"finetune.epochs": "4"}),
      dict(same, cell="SASRec old", seed=1, test={"HR@10": 0.2, "MRR": 0.1},
           overrides={"finetune.epochs": "3", "pretrain.epochs": "0", "finetune.min_epochs": "2"},
           transcribed_from="an old table")]))
  # A path in the spec is relative to the checkout holding experiments/, as a config's is.
  (tmp_path / "experiments").mkdir()
  spec = experiment.load_spec(_spec(tmp_path / "experiments", SPEC.replace(
      '"published"', '"ledgers": ["ledgers/other.jsonl"], "published"')))
  assert spec.ledgers == (str(other),)
  fake, ledger, root = FakeTrain(), str(tmp_path / "own.jsonl"), str(tmp_path / "a")
  assert [(c, s) for c, s, _ in experiment.plan(spec, root, ledger=ledger)[0]] == [
      ("S3-Rec", 2), ("SASRec, min 2", 2)]
  collected = experiment.run(spec, root, ledger=ledger, runner=fake, log=lambda _: None)
  assert len(fake.calls) == 2
  assert collected["S3-Rec"]["seeds"][1] == {"HR@10": 0.8, "MRR": 0.4}
  assert collected["S3-Rec"]["reused"] == {1: "other.jsonl: Theirs"}
  assert collected["SASRec, min 2"]["transcribed"] == {1: "an old table"}
  # The own ledger gains only the runs made here; the other is read, never written.
  assert [(r["cell"], r["seed"]) for r in map(json.loads, open(ledger))] == [
      ("S3-Rec", 2), ("SASRec, min 2", 2)]
  assert len(other.read_text().splitlines()) == 3
  table = open(os.path.join(root, "results.md")).read()
  assert "| S3-Rec | 2/2+ |" in table
  assert ("the same config, overrides and seed: S3-Rec, seed 1: other.jsonl: Theirs; "
          "SASRec, min 2, seed 1: other.jsonl: SASRec old." in table)
  # Re-measuring transcribed records runs SASRec's seed 1, not S3-Rec's reused one.
  experiment.run(spec, root, ledger=ledger, runner=fake, log=lambda _: None,
                 remeasure_transcribed=True)
  assert [c[c.index("--config.seed=1")] for c in fake.calls[2:]] == ["--config.seed=1"]
  assert any("--config.pretrain.epochs=0" in c for c in fake.calls[2:])
  with pytest.raises(experiment.SpecError, match="ledger 'nowhere.jsonl' named in 'ledgers'"):
    experiment.load_spec(_spec(tmp_path, SPEC.replace(
        '"published"', '"ledgers": ["nowhere.jsonl"], "published"')))


def test_a_pretrain_seed_makes_one_pre_training_serve_every_seed(tmp_path):
  body = SHARED_SPEC.replace('"pretrained_by": "S3-Rec",', '"pretrained_by": "S3-Rec", '
                             '"pretrain_seed": 2,')
  spec = experiment.load_spec(_spec(tmp_path, body))
  fake, root = FakePretrainingTrain(), str(tmp_path / "exp")
  ledger = str(tmp_path / "ledger.jsonl")
  experiment.run(spec, root, cells=["S3-Rec + contrastive"], runner=fake, ledger=ledger,
                 log=lambda _: None)
  runs = [(os.path.basename(os.path.dirname(w)), os.path.basename(w)) for w in (
      next(a.split("=", 1)[1] for a in c if a.startswith("--workdir=")) for c in fake.calls)]
  assert runs == [("S3-Rec", "seed_2"), ("S3-Rec_contrastive", "seed_1"),
                  ("S3-Rec_contrastive", "seed_2")]
  for call in fake.calls[1:]:
    assert f"--config.finetune.init_checkpoint={root}/S3-Rec/seed_2/pretrain" in call
  assert {r["overrides"].get("pretrain_seed") for r in experiment.read_ledger(ledger)
          if r["cell"] == "S3-Rec + contrastive"} == {"2"}
  for bad in ('"pretrain_seed": "2",', '"pretrain_seed": True,'):
    with pytest.raises(experiment.SpecError, match="expected an integer seed"):
      experiment.load_spec(_spec(tmp_path, SHARED_SPEC.replace(
          '"pretrained_by": "S3-Rec",', '"pretrained_by": "S3-Rec", ' + bad)))
  with pytest.raises(experiment.SpecError, match="with pretrained_by naming"):
    experiment.load_spec(_spec(tmp_path, SHARED_SPEC.replace(
        '"pretrain.epochs": 0}', '"pretrain.epochs": 0, "pretrain_seed": 1}')))


def test_a_resumed_runs_wall_time_counts_the_epochs_of_every_process(tmp_path):
  log = tmp_path / "log.jsonl"
  lines = [{"phase": "finetune", "epoch": e, "loss": 1.0, "seconds": 100.0} for e in (1, 2, 3)]
  lines += [{"phase": "scalars", "step": 3, "scalars": {"finetune/epoch_seconds": 100.0}},
            {"phase": "done", "wall_seconds": 120.0}]   # the last process ran one epoch
  log.write_text("".join(json.dumps(r) + "\n" for r in lines))
  assert experiment._wall_seconds(str(tmp_path)) == 300.0
  # A run made in one process: its own wall time, which holds the epochs and more.
  log.write_text("".join(json.dumps(r) + "\n" for r in lines[:-1]
                         + [{"phase": "done", "wall_seconds": 420.0}]))
  assert experiment._wall_seconds(str(tmp_path)) == 420.0
