"""Experiments over seeds: a grid of config overrides x seeds, resumable, summarised.

  s3rec-experiment experiments/lastfm_ablation.py --workdir runs/lastfm_ablation
  s3rec-experiment SPEC --workdir DIR --seeds 42,1,2 --cells S3-Rec,SASRec

A spec is a Python file with `get_spec()` returning a dict:

  {"config": "configs/lastfm.py",          # the base config file
   "overrides": {"eval.protocol": "full"},  # for every cell (optional)
   "cells": {"S3-Rec": {}, "SASRec": {"pretrain.epochs": 0}},   # name -> overrides
   "seeds": [42, 1, 2],                     # optional (default 42, 1, 2)
   "metrics": ["HR@20", "NDCG@20"],         # the table's columns (optional: all test metrics)
   "select_on": "NDCG@20",                  # validation metric that picks the best cell
                                            # (optional: the last of "metrics")
   "published": {"S3-Rec": {"HR@20": 0.0994}},   # figures to print beside (optional)
   "ledgers": ["experiments/ledgers/x.jsonl"]}   # other experiments' ledgers (optional)

A cell may also name its own "config" (a grid over datasets; the choice on validation is then
made per config) and "pretrained_by": another cell that pre-trains, whose checkpoints of the
same seed it fine-tunes from (pretrain.epochs=0, finetune.init_checkpoint set) instead of
pre-training again; the source cell's run is made first where it is missing. With
"pretrain_seed": S as well, every seed fine-tunes from the source's pre-training of seed S
(one pre-training for all, as released weights are).

Each (cell, seed) is one `s3rec-train` run in its own process, in
DIR/<cell>/seed_<seed>; a run whose results.json exists is skipped, and one
that was killed resumes from its own checkpoints, so the same command
finishes an interrupted experiment. DIR/results.md (mean +- std of every
metric per cell, with each seed's value and the cell's overrides),
DIR/results.png (bars with the std as error bars) and DIR/results.json are
written atomically after every run. Every seed run is reported, never a
selection. The table also names the cell with the best mean validation value
of `select_on` among the cells that finished every seed, and gives its test
figures: the choice uses validation only.

`--ledger FILE` keeps every finished run in a JSON-lines file as well (cell,
seed, overrides, test and validation metrics, best epoch, wall time, the commit
and CPU of the runner, which records each run as soon as it ends): a run found
there with the same overrides is not run again, and the table is built from the
ledger and DIR together. Commit the ledger beside the
spec and an experiment can be finished over several machines or days, each
adding seeds; run folders (checkpoints) need not travel. `--plan` prints the runs
still to make and an estimate of their time (the median wall time of each
cell's finished runs), to fit the next part into the time at hand. A ledger may
hold records transcribed from an earlier table ("transcribed_from"; marked * in
the table): they have test figures but no validation ones, so the choice on
validation cannot weigh their cell. `--remeasure_transcribed` runs those
(cell, seed)s anew; the run's own record is then preferred to the transcribed one.

The spec's "ledgers" are other experiments' ledgers, read only: a run recorded there with a
cell's config, overrides and seed (under whatever cell name) counts as that cell's, marked
in the table, and is not made again. A run is known by what it ran, so two experiments never
compute the same thing twice.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
from typing import Callable, Mapping, Sequence

from absl import flags

from s3rec_jax import configs as packaged_configs
from s3rec_jax.core import command
from s3rec_jax.core import errors
from s3rec_jax.core import files
from s3rec_jax.core import provenance

PROG = "s3rec-experiment"
# Cell entries that are not config overrides: the cell's own config file, the cell whose
# pre-training checkpoints it fine-tunes from instead of pre-training, and the seed of that
# cell's run it takes them from (default: the same seed).
CELL_KEYS = ("config", "pretrained_by", "pretrain_seed")
DEFAULT_SEEDS = (42, 1, 2)


class SpecError(errors.UserError):
  pass


@dataclasses.dataclass(frozen=True)
class Spec:
  path: str
  config: str
  overrides: Mapping[str, object]
  cells: Mapping[str, Mapping[str, object]]
  seeds: tuple[int, ...]
  metrics: tuple[str, ...] | None
  published: Mapping[str, Mapping[str, float]]
  select_on: str | None = None
  # IMPLEMENTATION_FIELDS set for every run (from --implementation), outside the cells.
  implementation: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # Other experiments' ledgers whose matching runs count for this spec's cells (read only).
  ledgers: tuple[str, ...] = ()

  def config_of(self, cell: str) -> str:
    """The cell's config, as the spec names it: its own "config" entry, else the spec's."""
    return self.cells[cell].get("config", self.config)

  def config_file(self, cell: str) -> str:
    """The file of the cell's config: a path relative to the current folder or to the
    checkout that holds the spec (experiments/ beside configs/), else the packaged config
    of that name (`configs/beauty.py` or `beauty` -> s3rec_jax/configs/beauty.py)."""
    config = self.config_of(cell)
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(self.path)))
    for candidate in (config, os.path.join(checkout, config)):
      if os.path.isfile(candidate):
        return os.path.abspath(candidate)
    name = os.path.basename(config)
    packaged = packaged_configs.path_of(name[:-3] if name.endswith(".py") else name)
    if packaged is None:
      raise SpecError(f"{self.path}: config {config!r} of cell {cell!r}: no such file, nor a "
                      f"packaged config ({', '.join(packaged_configs.names())})")
    return packaged

  def overrides_of(self, cell: str) -> dict:
    """The config overrides of a cell's runs (the spec's, then the cell's own)."""
    return {k: v for k, v in dict(self.overrides, **self.cells[cell]).items()
            if k not in CELL_KEYS}

  def pretrained_by(self, cell: str) -> str | None:
    """The cell whose pre-training this cell fine-tunes from (seed by seed), if any."""
    return self.cells[cell].get("pretrained_by")

  def pretrain_seed(self, cell: str, seed: int) -> int:
    """The seed of the source cell's pre-training that the cell's run of `seed` starts from."""
    return int(self.cells[cell].get("pretrain_seed", seed))


def load_spec(path: str) -> Spec:
  if not os.path.isfile(path):
    raise SpecError(f"{path}: no such spec file")
  module_spec = importlib.util.spec_from_file_location("experiment_spec", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    raw = module.get_spec()
  except Exception as e:  # pylint: disable=broad-except
    raise SpecError(f"{path}: cannot load the spec ({type(e).__name__}: {e})") from None
  if not isinstance(raw, Mapping):
    raise SpecError(f"{path}: get_spec() returned {type(raw).__name__}; expected a dict")
  unknown = set(raw) - {"config", "overrides", "cells", "seeds", "metrics", "published",
                        "select_on", "ledgers"}
  if unknown:
    raise SpecError(f"{path}: unknown spec field(s) {', '.join(sorted(unknown))}; expected "
                    "config, overrides, cells, seeds, metrics, published, select_on, ledgers")
  for field in ("config", "cells"):
    if field not in raw:
      raise SpecError(f"{path}: the spec needs a {field!r} field")
  cells = raw["cells"]
  if not isinstance(cells, Mapping) or not cells:
    raise SpecError(f"{path}: 'cells' must be a non-empty dict of cell name -> overrides")
  for name, overrides in cells.items():
    if not isinstance(overrides, Mapping):
      raise SpecError(f"{path}: cell {name!r} maps to {overrides!r}; expected a dict of overrides")
    if "config" in overrides and not isinstance(overrides["config"], str):
      raise SpecError(f"{path}: cell {name!r} has config {overrides['config']!r}; expected a "
                      "config file path")
    source = overrides.get("pretrained_by")
    if source is not None and (source not in cells or source == name
                               or cells[source].get("pretrained_by")
                               or str(cells[source].get("pretrain.epochs", "")) == "0"):
      raise SpecError(f"{path}: cell {name!r} is pretrained_by {source!r}; expected another "
                      "cell of the spec that pre-trains itself")
    if "pretrain_seed" in overrides and (source is None or isinstance(
        overrides["pretrain_seed"], bool) or not isinstance(overrides["pretrain_seed"], int)):
      raise SpecError(f"{path}: cell {name!r} has pretrain_seed "
                      f"{overrides['pretrain_seed']!r}; expected an integer seed, with "
                      "pretrained_by naming the cell that pre-trains")
  if "select_on" in raw and not isinstance(raw["select_on"], str):
    raise SpecError(f"{path}: 'select_on' is {raw['select_on']!r}; expected a metric name "
                    "such as 'NDCG@20'")
  seeds = tuple(int(s) for s in raw.get("seeds", DEFAULT_SEEDS))
  ledgers = raw.get("ledgers", ())
  if isinstance(ledgers, str) or not all(isinstance(p, str) for p in ledgers):
    raise SpecError(f"{path}: 'ledgers' is {ledgers!r}; expected a list of ledger file paths")
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  shared = []
  for ledger in ledgers:
    # As a config: relative to the current folder or to the checkout that holds the spec.
    found = next((c for c in (ledger, os.path.join(checkout, ledger)) if os.path.isfile(c)),
                 None)
    if found is None:
      raise SpecError(f"{path}: ledger {ledger!r} named in 'ledgers': no such file")
    shared.append(found)

  # A cell may name its own config (a grid over datasets); the spec's is the default.
  return Spec(path=path, config=raw["config"], overrides=dict(raw.get("overrides", {})),
              cells={str(k): dict(v) for k, v in cells.items()}, seeds=seeds,
              metrics=tuple(raw["metrics"]) if raw.get("metrics") else None,
              published=dict(raw.get("published", {})),
              select_on=raw.get("select_on") or (raw["metrics"][-1] if raw.get("metrics")
                                                 else None),
              ledgers=tuple(shared))


def slug(name: str) -> str:
  """A folder name for a cell (its name, with anything but letters, digits, - and _ as _)."""
  return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "cell"


def _value(v) -> str:
  return str(v).lower() if isinstance(v, bool) else str(v)


# Config fields that choose how a run computes, not what: the same losses and metrics up
# to float rounding (tests/test_kernels.py, tests/test_prefix_widths.py). `--implementation`
# sets them for every run of a grid without making its cells new ones: runs made either way
# match the same ledger records, and each record says how it was made. Each field maps to
# the value a run made before the field existed had.
IMPLEMENTATION_FIELDS = {"settings.next_item.ce_method": "scan", "eval.ranking": "scan",
                         "finetune.trim_padding": "false"}


def parse_implementation(pairs: Sequence[str]) -> dict[str, str]:
  """['FIELD=VALUE', ...] -> {field: value}, fields from IMPLEMENTATION_FIELDS only."""
  chosen = {}
  for pair in pairs:
    field, sep, value = pair.partition("=")
    if not sep or not value:
      raise errors.UsageError(f"--implementation {pair!r}: expected FIELD=VALUE")
    if field not in IMPLEMENTATION_FIELDS:
      raise errors.UsageError(f"--implementation {pair!r}: {field!r} is not an implementation "
                              f"choice; expected one of {', '.join(IMPLEMENTATION_FIELDS)}")
    chosen[field] = value
  return chosen


def _implementation_of(results: dict) -> dict[str, str]:
  """The implementation fields a finished run was made with (from its results' config)."""
  made = {}
  for field in IMPLEMENTATION_FIELDS:
    node = results.get("config") or {}
    for part in field.split("."):
      node = node.get(part) if isinstance(node, dict) else None
    made[field] = IMPLEMENTATION_FIELDS[field] if node is None else _value(node)
  return made


def run_command(spec: Spec, cell: str, seed: int, workdir: str) -> list[str]:
  overrides = {**spec.overrides_of(cell), **spec.implementation, "seed": seed}
  source = spec.pretrained_by(cell)
  if source is not None:   # fine-tune from the source cell's pre-training (of this seed)
    overrides.update({"pretrain.epochs": 0, "finetune.init_checkpoint": pretrain_dir(
        os.path.dirname(os.path.dirname(workdir)), source, spec.pretrain_seed(cell, seed))})
  return ([sys.executable, "-m", "s3rec_jax.tools.train", f"--config={spec.config_file(cell)}",
           f"--workdir={workdir}"] + [f"--config.{k}={_value(v)}" for k, v in overrides.items()])


def run_subprocess(command: list[str], log_path: str) -> int:
  """Runs one s3rec-train, its output appended to log_path."""
  with open(log_path, "a") as log:
    return subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)


def read_results(workdir: str) -> dict | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _cell_overrides(spec: Spec, cell: str) -> dict[str, str]:
  """What identifies a cell's runs in a ledger: its overrides, and the cell it fine-tunes from."""
  identity = {k: _value(v) for k, v in spec.overrides_of(cell).items()}
  if spec.pretrained_by(cell) is not None:
    identity["pretrained_by"] = spec.pretrained_by(cell)
  if "pretrain_seed" in spec.cells[cell]:
    identity["pretrain_seed"] = str(spec.cells[cell]["pretrain_seed"])
  return identity


def pretrain_dir(root: str, cell: str, seed: int) -> str:
  """The pre-training checkpoints of (cell, seed) under an experiment's folder."""
  return os.path.join(root, slug(cell), f"seed_{seed}", "pretrain")


def _config_name(spec: Spec, cell: str) -> str:
  return spec.config_of(cell)


def read_ledger(path: str | None) -> list[dict]:
  """The records of a ledger file ([] when there is none yet)."""
  if not path or not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise SpecError(f"{path}:{number}: not a JSON record ({e.msg}); expected one run "
                        "per line, as --ledger writes them") from None
      missing = {"cell", "seed", "config", "overrides", "test"} - set(
          record if isinstance(record, dict) else ())
      if missing:
        raise SpecError(f"{path}:{number}: a ledger record needs cell, seed, config, "
                        f"overrides and test; missing {', '.join(sorted(missing))}")
      records.append(record)
  return records


def ledger_record(spec: Spec, cell: str, seed: int, records: Sequence[dict], *,
                  measured_only: bool = False) -> dict | None:
  """The ledger's run of (cell, seed), if one was made with the cell's current overrides
  and config (a record of an edited cell is stale and ignored). A record read from one of the
  spec's other ledgers ("reused_from") matches under any cell name.

  A record written by a run is preferred to one transcribed from an earlier table (which
  lacks validation figures), and the experiment's own record to another's; measured_only
  ignores transcribed records altogether.
  """
  overrides, config = _cell_overrides(spec, cell), _config_name(spec, cell)
  matches = [r for r in records
             if ((r["cell"] == cell or r.get("reused_from")) and int(r["seed"]) == seed
                 and r["config"] == config and r["overrides"] == overrides)]
  matches.sort(key=lambda r: bool(r.get("reused_from")))
  measured = [r for r in matches if not r.get("transcribed_from")]
  if measured:
    return measured[0]
  return None if measured_only or not matches else matches[0]


def read_records(spec: Spec, ledger: str | None) -> list[dict]:
  """The experiment's own ledger records, then those of the spec's other ledgers, each of
  those marked with where it came from ("reused_from": "FILE: CELL")."""
  records = read_ledger(ledger)
  own = os.path.abspath(ledger) if ledger else None
  for path in spec.ledgers:
    if os.path.abspath(path) != own:
      records += [dict(r, reused_from=f"{os.path.basename(path)}: {r['cell']}")
                  for r in read_ledger(path)]
  return records


def _wall_seconds(workdir: str) -> float | None:
  """The run's wall time: its last process's (the "done" record), or, for a run resumed after
  a kill, the sum of its epochs' times over every process where that is more."""
  path = os.path.join(workdir, "log.jsonl")
  if not os.path.exists(path):
    return None
  wall, epochs = None, 0.0
  with open(path) as f:
    for line in f:
      if '"done"' in line:
        wall = json.loads(line).get("wall_seconds", wall)
      elif '"seconds"' in line:
        record = json.loads(line)
        if record.get("phase") in ("pretrain", "finetune"):
          epochs += float(record.get("seconds", 0.0))
  return None if wall is None else max(wall, epochs)


def record_finished(spec: Spec, root: str, ledger: str) -> int:
  """Appends every run finished under root that the ledger lacks; returns how many."""
  records = read_ledger(ledger)
  new, made_by = [], {"commit": provenance.commit(), "cpu": provenance.cpu()}
  for cell in spec.cells:
    for seed in spec.seeds:
      workdir = os.path.join(root, slug(cell), f"seed_{seed}")
      results = read_results(workdir)
      # A run that re-measures a transcribed record joins the ledger beside it.
      if results is None or ledger_record(spec, cell, seed, records + new,
                                          measured_only=True) is not None:
        continue
      new.append({"cell": cell, "seed": seed, "config": _config_name(spec, cell),
                  "overrides": _cell_overrides(spec, cell), "test": results["test"],
                  "valid": results.get("valid") or {}, "best_epoch": results.get("best_epoch"),
                  "implementation": _implementation_of(results),
                  "wall_seconds": _wall_seconds(workdir), **made_by})
  if new:
    existing = ""
    if os.path.exists(ledger):
      with open(ledger) as f:
        existing = f.read()
    if existing and not existing.endswith("\n"):
      existing += "\n"
    files.write_text_atomic(ledger, existing + "".join(
        json.dumps(r, sort_keys=True) + "\n" for r in new))
  return len(new)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value)."""
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def collect(spec: Spec, root: str, ledger: str | None = None) -> dict:
  """{cell: {"seeds": {seed: test metrics}, "valid": {seed: validation metrics at the best
  epoch}, "overrides", "best_epochs", "wall_seconds"}} of the finished runs (under root, else
  in the ledger)."""
  records = read_records(spec, ledger)
  out = {}
  for cell in spec.cells:
    seeds, valid, epochs, walls, transcribed, reused = {}, {}, {}, {}, {}, {}
    for seed in spec.seeds:
      workdir = os.path.join(root, slug(cell), f"seed_{seed}")
      results, wall = read_results(workdir), _wall_seconds(workdir)
      if results is None:
        results = ledger_record(spec, cell, seed, records)
        wall = results and results.get("wall_seconds")
        if results and results.get("transcribed_from"):
          transcribed[seed] = results["transcribed_from"]
        if results and results.get("reused_from"):
          reused[seed] = results["reused_from"]
      if results is not None:
        seeds[seed] = results["test"]
        if results.get("valid"):
          valid[seed] = results["valid"]
        epochs[seed] = results.get("best_epoch")
        if wall is not None:
          walls[seed] = wall
    out[cell] = {"seeds": seeds, "valid": valid, "best_epochs": epochs, "wall_seconds": walls,
                 "transcribed": transcribed, "reused": reused,
                 "overrides": spec.overrides_of(cell),
                 "config": _config_name(spec, cell)}
  return out


def markdown_table(spec: Spec, collected: dict) -> str:
  metrics = spec.metrics or sorted({m for c in collected.values() for s in c["seeds"].values()
                                    for m in s})
  lines = [f"Test metrics, mean +- std over seeds (each seed's value in brackets, seeds "
           f"{', '.join(map(str, spec.seeds))}). Spec: `{os.path.basename(spec.path)}`, "
           f"config `{'`, `'.join(sorted({_config_name(spec, c) for c in spec.cells}))}`.", ""]
  header = ["cell", "runs"] + list(metrics) + ["best epochs", "wall per run", "overrides"]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + " --- |" * len(header))
  for cell, c in collected.items():
    row = [cell, f"{len(c['seeds'])}/{len(spec.seeds)}" + ("*" if c.get("transcribed") else "")
           + ("+" if c.get("reused") else "")]
    for metric in metrics:
      values = [c["seeds"][s][metric] for s in spec.seeds if s in c["seeds"]]
      if not values:
        row.append("")
        continue
      mean, std = mean_std(values)
      row.append(f"{mean:.4f} +- {std:.4f} [" + ", ".join(f"{v:.4f}" for v in values) + "]")
    row.append(", ".join(str(c["best_epochs"][s]) for s in spec.seeds if s in c["best_epochs"]))
    walls = c.get("wall_seconds", {})
    row.append(", ".join(f"{walls[s] / 60:.1f} min" for s in spec.seeds if s in walls))
    row.append(", ".join(f"`{k}={_value(v)}`" for k, v in c["overrides"].items()) or "")
    lines.append("| " + " | ".join(row) + " |")
  sources = sorted({t for c in collected.values() for t in c.get("transcribed", {}).values()})
  if sources:
    lines += ["", "\\* some runs of the cell are ledger records transcribed from an earlier "
              "record, not written by a run: " + "; ".join(sources) + "."]
  reused = sorted({f"{cell}, seed {seed}: {source}" for cell, c in collected.items()
                   for seed, source in c.get("reused", {}).items()})
  if reused:
    lines += ["", "\\+ some runs of the cell are another experiment's ledger records, made "
              "with the same config, overrides and seed: " + "; ".join(reused) + "."]
  lines += ["", chosen_on_validation(spec, collected, metrics)]
  if spec.published:
    lines += ["", "Published figures, for comparison (not measured here):", ""]
    lines.append("| cell | " + " | ".join(metrics) + " |")
    lines.append("|" + " --- |" * (len(metrics) + 1))
    for cell, figures in spec.published.items():
      lines.append(f"| {cell} | " + " | ".join(
          f"{figures[m]:.4f}" if m in figures else "" for m in metrics) + " |")
  return "\n".join(lines) + "\n"


def chosen_on_validation(spec: Spec, collected: dict, metrics: Sequence[str]) -> str:
  """A line per config naming the cell with the best mean validation `spec.select_on` among
  that config's cells that finished every seed, with the cell's test figures (cells on
  different datasets are never compared)."""
  metric = spec.select_on
  if metric is None:
    return "No cell chosen on validation: the spec names no metric (select_on)."
  configs = sorted({_config_name(spec, cell) for cell in collected})
  return "\n\n".join(
      (f"`{config}`: " if len(configs) > 1 else "") + _chosen_among(
          spec, {c: v for c, v in collected.items() if _config_name(spec, c) == config},
          metrics, metric)
      for config in configs)


def _chosen_among(spec: Spec, collected: dict, metrics: Sequence[str], metric: str) -> str:
  means = {}
  for cell, c in collected.items():
    values = [c["valid"][s][metric] for s in spec.seeds if metric in c["valid"].get(s, {})]
    if len(values) == len(spec.seeds):
      means[cell] = mean_std(values)[0]
  if not means:
    return (f"No cell chosen on validation yet: none has validation {metric} for all "
            f"{len(spec.seeds)} seeds.")
  best = max(means, key=means.get)
  # Cells with every seed's test figures but not every validation one (transcribed records)
  # could not be compared: say so rather than let the choice read as over all of them.
  unjudged = [c for c, v in collected.items()
              if c not in means and len(v["seeds"]) == len(spec.seeds)]
  test = ", ".join(
      f"{m} {mean_std([collected[best]['seeds'][s][m] for s in spec.seeds])[0]:.4f}"
      for m in metrics)
  return (f"Chosen on validation {metric} (mean over {len(spec.seeds)} seeds, among the "
          f"{len(means)} cell(s) with every seed): **{best}** (validation {means[best]:.4f}); "
          f"its test: {test}." + (
              f" Not compared, for want of validation figures: {', '.join(unjudged)}."
              if unjudged else ""))


def bar_chart(spec: Spec, collected: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  metrics = spec.metrics or sorted({m for c in collected.values() for s in c["seeds"].values()
                                    for m in s})
  cells = [c for c in collected if collected[c]["seeds"]]
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cells) * len(metrics) ** 0.5 + 3), 4.2))
  width = 0.8 / max(len(metrics), 1)
  for k, metric in enumerate(metrics):
    stats = [mean_std([collected[c]["seeds"][s][metric] for s in collected[c]["seeds"]])
             for c in cells]
    xs = [i + (k - (len(metrics) - 1) / 2) * width for i in range(len(cells))]
    ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=3, label=metric)
  ax.set_xticks(range(len(cells)))
  # The seed count beside each name: a bar without an error bar may be one seed, not zero spread.
  ax.set_xticklabels([f"{c} ({len(collected[c]['seeds'])}/{len(spec.seeds)})" for c in cells],
                     rotation=20, ha="right")
  ax.set_ylabel("test metric (mean +- std over seeds)")
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  try:
    files.save_figure_atomic(fig, path, dpi=120)
  finally:
    plt.close(fig)


def summarize(spec: Spec, root: str, ledger: str | None = None) -> dict:
  if ledger:
    record_finished(spec, root, ledger)
  collected = collect(spec, root, ledger)
  files.write_text_atomic(os.path.join(root, "results.md"), markdown_table(spec, collected))
  files.write_json_atomic(os.path.join(root, "results.json"), collected)
  if any(c["seeds"] for c in collected.values()):
    bar_chart(spec, collected, os.path.join(root, "results.png"))
  return collected


def select_cells(spec: Spec, text: str) -> list[str]:
  """The cells a --cells value names: comma-separated cell names or their folder names
  (a name that itself holds ", " is matched whole, longest first)."""
  by_slug = {slug(c): c for c in spec.cells}
  parts, chosen, i = text.split(","), [], 0
  while i < len(parts):
    for j in range(len(parts), i, -1):
      name = ",".join(parts[i:j]).strip()
      if name in spec.cells or name in by_slug:
        chosen.append(name if name in spec.cells else by_slug[name])
        i = j
        break
    else:
      raise SpecError(f"{spec.path}: no cell {parts[i].strip()!r}; cells: "
                      f"{'; '.join(spec.cells)}")
  return chosen


def plan(spec: Spec, root: str, *, cells: Sequence[str] | None = None,
         ledger: str | None = None,
         remeasure_transcribed: bool = False) -> tuple[list[tuple[str, int, float | None]], str]:
  """The (cell, seed) runs still to make, each with an estimate of its wall seconds (the median
  of the cell's finished runs; None where it has none), and a text saying so.

  Long grids are run in parts (one cell or seed at a time, between other work); this is what is
  left and about how long it takes, read from the same workdir and ledger the runs use.
  """
  collected = collect(spec, root, ledger)
  left = []
  for cell in (list(cells) if cells else list(spec.cells)):
    walls = sorted(collected[cell]["wall_seconds"].values())
    estimate = statistics.median(walls) if walls else None
    redo = collected[cell]["transcribed"] if remeasure_transcribed else {}
    left += [(cell, seed, estimate) for seed in spec.seeds
             if seed not in collected[cell]["seeds"] or seed in redo]
  if not left:
    return left, "nothing left to run: every (cell, seed) has finished"
  lines = [f"{len(left)} run(s) left:"]
  for cell, seed, estimate in left:
    guess = (f"about {estimate / 60:.0f} min (median of the cell's finished runs)"
             if estimate is not None else "no finished run of the cell to estimate from")
    lines.append(f"  {cell}, seed {seed}: {guess}")
  known = [e for _, _, e in left if e is not None]
  unknown = len(left) - len(known)
  lines.append(f"estimated {sum(known) / 3600:.1f} h for {len(known)} run(s)"
               + (f", and {unknown} run(s) with no estimate" if unknown else "")
               + " (wall times of earlier runs, on whatever machine made them)")
  return left, "\n".join(lines)


def run(spec: Spec, root: str, *, cells: Sequence[str] | None = None,
        ledger: str | None = None, remeasure_transcribed: bool = False,
        runner: Callable[[list[str], str], int] = run_subprocess,
        log: Callable[[str], None] = print) -> dict:
  """Runs every missing (cell, seed) of the spec in order, summarising after each.

  remeasure_transcribed also runs the (cell, seed)s whose only ledger record was transcribed
  from an earlier table: the new record joins the ledger and is preferred to the old one.
  """
  os.makedirs(root, exist_ok=True)
  chosen = list(cells) if cells else list(spec.cells)
  for cell in chosen:
    if cell not in spec.cells:
      raise SpecError(f"{spec.path}: no cell {cell!r}; cells: {'; '.join(spec.cells)}")
  if ledger:
    record_finished(spec, root, ledger)
  # Runs made from here on are found by their results.json first.
  records = read_records(spec, ledger)
  def run_one(cell: str, seed: int) -> None:
    workdir = os.path.join(root, slug(cell), f"seed_{seed}")
    os.makedirs(workdir, exist_ok=True)
    train_command = run_command(spec, cell, seed, workdir)
    log(f"{cell}, seed {seed}: running {' '.join(train_command[1:])}")
    code = runner(train_command, os.path.join(workdir, "train.log"))
    if code != 0 or read_results(workdir) is None:
      raise errors.UserError(f"{cell}, seed {seed}: s3rec-train exited with status {code}; see "
                             f"{os.path.join(workdir, 'train.log')} (rerun to resume)")
    summarize(spec, root, ledger)

  for cell in chosen:
    for seed in spec.seeds:
      workdir = os.path.join(root, slug(cell), f"seed_{seed}")
      if read_results(workdir) is not None:
        log(f"{cell}, seed {seed}: done before, skipped")
        continue
      found = ledger_record(spec, cell, seed, records, measured_only=remeasure_transcribed)
      if found is not None:
        log(f"{cell}, seed {seed}: in the ledger {found.get('reused_from') or ledger}, skipped")
        continue
      source = spec.pretrained_by(cell)
      source_seed = spec.pretrain_seed(cell, seed)
      if source is not None and not os.path.isdir(pretrain_dir(root, source, source_seed)):
        # Its pre-training comes from the source cell's run (here, not a ledger).
        log(f"{cell}, seed {seed}: pre-training first, as {source}, seed {source_seed}")
        run_one(source, source_seed)
      run_one(cell, seed)
  collected = summarize(spec, root, ledger)
  log(markdown_table(spec, collected))
  return collected


FLAGS = command.new_flags()
_WORKDIR = flags.DEFINE_string("workdir", None, "the experiment's folder", flag_values=FLAGS,
                               module_name=PROG, required=True)
_SEEDS = flags.DEFINE_string("seeds", None, "comma list overriding the spec's seeds",
                             flag_values=FLAGS, module_name=PROG)
_CELLS = flags.DEFINE_string("cells", None, "comma list of cell names (or their folder names): "
                             "run only these cells", flag_values=FLAGS, module_name=PROG)
_LEDGER = flags.DEFINE_string("ledger", None, "a JSON-lines file of finished runs, read and "
                              "appended to: its runs are not run again and join the table",
                              flag_values=FLAGS, module_name=PROG)
_SUMMARIZE_ONLY = flags.DEFINE_bool("summarize_only", False, "write the table and chart of the "
                                    "runs finished so far", flag_values=FLAGS, module_name=PROG)
_PLAN = flags.DEFINE_bool("plan", False, "print the runs still to make (of --cells, or every "
                          "cell) and an estimate of their time from the finished ones; run "
                          "nothing", flag_values=FLAGS, module_name=PROG)
_IMPLEMENTATION = flags.DEFINE_multi_string(
    "implementation", [], "FIELD=VALUE, repeated: how every run computes, not what (e.g. "
    "settings.next_item.ce_method=fused_cpu): the cells and their ledger records stay the same; "
    "one of " + ", ".join(IMPLEMENTATION_FIELDS), flag_values=FLAGS, module_name=PROG)
_REMEASURE_TRANSCRIBED = flags.DEFINE_bool(
    "remeasure_transcribed", False, "also run the (cell, seed)s whose ledger record was "
    "transcribed from an earlier table (no validation figures): the run's own record is added "
    "and preferred (with --plan: count them as left)", flag_values=FLAGS, module_name=PROG)

_USAGE = f"{PROG} SPEC --workdir DIR [flags]: " + __doc__


def _seeds(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(s) for s in text.split(","))
  except ValueError:
    raise errors.UsageError(f"--seeds={text!r}: expected a comma list of integers") from None


def _run(words: list[str]) -> int:
  if not words:
    raise errors.UsageError("name the SPEC file (experiments/*.py) to run")
  command.only_words(words, 1, "one SPEC file")
  spec = load_spec(words[0])
  spec = dataclasses.replace(spec, implementation=parse_implementation(_IMPLEMENTATION.value))
  if _SEEDS.value:
    spec = dataclasses.replace(spec, seeds=_seeds(_SEEDS.value))
  root = os.path.abspath(_WORKDIR.value)
  ledger, remeasure = _LEDGER.value, _REMEASURE_TRANSCRIBED.value
  if _PLAN.value:
    print(plan(spec, root, cells=select_cells(spec, _CELLS.value) if _CELLS.value else None,
               ledger=ledger, remeasure_transcribed=remeasure)[1])
  elif _SUMMARIZE_ONLY.value:
    os.makedirs(root, exist_ok=True)
    print(markdown_table(spec, summarize(spec, root, ledger)))
  else:
    run(spec, root, cells=select_cells(spec, _CELLS.value) if _CELLS.value else None,
        ledger=ledger, remeasure_transcribed=remeasure)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (2 for a user error)."""
  return command.run(PROG, FLAGS, _run, argv, doc=_USAGE)


if __name__ == "__main__":
  sys.exit(main())
