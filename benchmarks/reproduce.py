"""Reproduces the S3-Rec paper's results and writes them as markdown tables.

  python benchmarks/reproduce.py --datasets LastFM,Beauty,Toys_and_Games \
      --protocols sampled,full --workdir runs/reproduce --skip_existing

Rows, per dataset and protocol (pick with --rows):
  paper              the published figures, quoted (not measured).
  reference_rerun    the final test line of the reference's own fine-tuning logs.
  released           fine-tuning from the reference's released checkpoint, converted.
  scratch_reference  our pre-training (reference sigmoid forms), then fine-tuning.
  scratch_infonce    our pre-training (the paper's InfoNCE forms), then fine-tuning.
  sasrec             fine-tuning from random weights (no pre-training).

Every measured row is one `run_lib.run` in this process, with its own workdir
under --workdir; --skip_existing reuses a workdir's results.json, so an
interrupted reproduction resumes where it stopped. The table is rewritten after
every row.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import glob
import importlib
import json
import os
import pathlib
import re
import shlex
import shutil
import sys
import time
import traceback
from typing import Callable, Iterable, Sequence

from s3rec_jax.data import fetch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

ROW_KINDS = ("paper", "reference_rerun", "released", "scratch_reference", "scratch_infonce",
             "sasrec")
PROTOCOLS = ("sampled", "full")
COLUMNS = {
    "sampled": ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "MRR"),
    "full": ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"),
}
PROTOCOL_TITLES = {
    "sampled": "sampled protocol (answer + 99 negatives)",
    "full": "full ranking (every item, history excluded)",
}
CONFIG_FILES = {
    "Beauty": "beauty",
    "LastFM": "lastfm",
    "Toys_and_Games": "toys_and_games",
    "Sports_and_Outdoors": "sports_and_outdoors",
    "Yelp": "yelp",
    "synthetic": "synthetic",
}
MISSING = "–"

# Published figures, quoted from the S3-Rec paper and its repository; in the
# order of COLUMNS[protocol].
PUBLISHED = {
    ("S3-Rec", "sampled"): {
        "Beauty": (0.2192, 0.4502, 0.3407, 0.5506, 0.3732, 0.3340),
        "Sports_and_Outdoors": (0.1841, 0.4267, 0.3104, 0.5614, 0.3538, 0.3071),
        "Toys_and_Games": (0.2003, 0.4420, 0.3270, 0.5530, 0.3629, 0.3202),
        "Yelp": (0.2591, 0.6085, 0.4401, 0.7725, 0.4934, 0.4190),
        "LastFM": (0.1743, 0.4523, 0.3156, 0.5835, 0.3583, 0.3072),
    },
    ("SASRec", "sampled"): {
        "Beauty": (0.1870, 0.3741, 0.2848, 0.4696, 0.3156, 0.2852),
        "LastFM": (0.1211, 0.3385, 0.2330, 0.4706, 0.2755, 0.2364),
    },
    ("S3-Rec", "full"): {
        "Beauty": (0.0387, 0.0244, 0.0647, 0.0327, 0.0994, 0.0414),
        "Sports_and_Outdoors": (0.0251, 0.0161, 0.0385, 0.0204, 0.0607, 0.0260),
        "Toys_and_Games": (0.0443, 0.0294, 0.0700, 0.0376, 0.1065, 0.0468),
        "Yelp": (0.0201, 0.0123, 0.0341, 0.0168, 0.0573, 0.0226),
        "LastFM": (0.0459, 0.0334, 0.0743, 0.0427, 0.1229, 0.0550),
    },
    ("SASRec", "full"): {
        "Beauty": (0.0387, 0.0249, 0.0605, 0.0318, 0.0902, 0.0394),
    },
}

# Settings a reused results.json must share with the run that would replace it.
REUSE_FIELDS = ("dataset", "eval.protocol", "pretrain.epochs", "pretrain.form",
                "finetune.epochs", "finetune.init_checkpoint")


@dataclasses.dataclass
class Row:
  """One line of a table."""
  dataset: str
  protocol: str
  kind: str
  label: str
  source: str
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  epochs: str = MISSING
  wall_seconds: float | None = None
  failed: bool = False


@dataclasses.dataclass
class Settings:
  """What to reproduce, and where."""
  datasets: Sequence[str]
  protocols: Sequence[str] = PROTOCOLS
  rows: Sequence[str] = ROW_KINDS
  data_dir: str = dataclasses.field(default_factory=fetch.default_data_dir)
  workdir: str = "runs/reproduce"
  pretrain_epochs: int = 150
  infonce_pretrain_epochs: int | None = None   # None: pretrain_epochs
  finetune_epochs: int = 200
  skip_existing: bool = False


# --- configs -----------------------------------------------------------------


def load_config(dataset: str):
  """The ConfigDict of configs/<dataset>.py."""
  if dataset not in CONFIG_FILES:
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(CONFIG_FILES)}")
  if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # configs/*.py import `configs.default`.
  return importlib.import_module(f"s3rec_jax.configs.{CONFIG_FILES[dataset]}").get_config()


def _get_field(tree: dict, field: str):
  for part in field.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


# --- quoted rows ---------------------------------------------------------------


def paper_rows(dataset: str, protocol: str) -> list[Row]:
  """The published figures for one dataset and protocol (may be none)."""
  rows = []
  for model in ("S3-Rec", "SASRec"):
    values = PUBLISHED[(model, protocol)].get(dataset)
    if values is not None:
      rows.append(Row(dataset, protocol, "paper", f"{model} (published)",
                      "quoted (published figures), not measured",
                      dict(zip(COLUMNS[protocol], values))))
  return rows


_LOG_METRICS = {"HIT@1": "HR@1", "HIT@5": "HR@5", "NDCG@5": "NDCG@5", "HIT@10": "HR@10",
                "NDCG@10": "NDCG@10", "MRR": "MRR"}


def _metrics_from_log_dict(entry: dict, where: str) -> dict[str, float]:
  missing = [k for k in _LOG_METRICS if k not in entry]
  if missing:
    raise ValueError(f"{where}: metrics line lacks {', '.join(missing)}")
  return {ours: float(entry[theirs]) for theirs, ours in _LOG_METRICS.items()}


def parse_reference_log(path: str | os.PathLike) -> dict:
  """Reads a reference fine-tuning log (Finetune_sample-NAME-K.txt).

  Returns:
    {"test": metrics of the last line, "finetune_epochs": training epochs logged,
     "best_epoch": 1-based epoch of the first best validation MRR (or None),
     "pretrain_epochs": K from the file name (None if it has none)}.
  """
  path = os.fspath(path)
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  if not lines:
    raise ValueError(f"{path}: empty log")
  try:
    last = ast.literal_eval(lines[-1])
  except (ValueError, SyntaxError):
    last = None
  if not isinstance(last, dict):
    raise ValueError(f"{path}: the last line is not a metrics dict: {lines[-1][:80]!r}")
  test = _metrics_from_log_dict(last, f"{path} (last line)")
  train_epochs, valid_mrr, after_train = 0, [], False
  for number, line in enumerate(lines[:-1], start=1):
    if not line.startswith("{"):
      after_train = False
      continue
    try:
      entry = ast.literal_eval(line)
    except (ValueError, SyntaxError):
      raise ValueError(f"{path}:{number}: not a Python dict literal: {line[:80]!r}") from None
    if "rec_avg_loss" in entry:
      train_epochs += 1
      after_train = True
    elif "MRR" in entry and after_train:  # Validation follows each training epoch.
      valid_mrr.append(float(entry["MRR"]))
      after_train = False
  best = (max(range(len(valid_mrr)), key=lambda i: (valid_mrr[i], -i)) + 1) if valid_mrr else None
  match = re.search(r"-(\d+)\.txt$", os.path.basename(path))
  return {"test": test, "finetune_epochs": train_epochs, "best_epoch": best,
          "pretrain_epochs": int(match.group(1)) if match else None}


def reference_log_rows(data_dir: str, dataset: str, protocol: str) -> list[Row]:
  """Rows from the reference's logs: S3-Rec (largest K) and SASRec (K = 0)."""
  if protocol != "sampled":
    return []  # The reference logged the sampled protocol only.
  logs = {}
  for path in glob.glob(os.path.join(data_dir, "reference_logs", f"Finetune_sample-{dataset}-*.txt")):
    match = re.fullmatch(rf"Finetune_sample-{re.escape(dataset)}-(\d+)\.txt", os.path.basename(path))
    if match:
      logs[int(match.group(1))] = path
  chosen = []
  pretrained = [k for k in logs if k > 0]
  if pretrained:
    chosen.append(("S3-Rec (reference log)", logs[max(pretrained)]))
  if 0 in logs:
    chosen.append(("SASRec (reference log)", logs[0]))
  rows = []
  for label, path in chosen:
    parsed = parse_reference_log(path)
    rows.append(Row(dataset, protocol, "reference_rerun", label,
                    f"`reference_logs/{os.path.basename(path)}`", parsed["test"],
                    epochs_text(parsed["pretrain_epochs"], parsed["finetune_epochs"],
                                parsed["best_epoch"])))
  return rows


# --- measured rows -------------------------------------------------------------


def epochs_text(pretrain: int | None, finetune: int | None, best: int | None,
                pretrain_note: str = "") -> str:
  """E.g. `pre 150 + ft 54 (best 44)`."""
  if finetune is None:
    return MISSING
  text = f"pre {pretrain or 0}{pretrain_note} + ft {finetune}"
  return text + (f" (best {best})" if best is not None else "")


def _log_records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "log.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def finetune_epochs_run(workdir: str) -> int | None:
  """Fine-tuning epochs run, from workdir/log.jsonl (None without fine-tuning records)."""
  epochs = [r.get("epoch") for r in _log_records(workdir) if r.get("phase") == "finetune"]
  return epochs[-1] if epochs else None  # Epochs count on across resumes; a rerun restarts at 1.


def logged_wall_seconds(results: dict, workdir: str) -> float | None:
  """A finished run's wall time: results.json's `wall_seconds`, else log.jsonl's `done` record."""
  if results.get("wall_seconds") is not None:
    return results["wall_seconds"]
  done = [r for r in _log_records(workdir) if r.get("phase") == "done" and "wall_seconds" in r]
  return done[-1]["wall_seconds"] if done else None


def _results_path(workdir: str) -> str:
  return os.path.join(workdir, "results.json")


def _check_reusable(results: dict, config, workdir: str) -> None:
  wanted = config.to_dict()
  differing = [f"{field} {_get_field(results.get('config', {}), field)!r} (wanted "
               f"{_get_field(wanted, field)!r})" for field in REUSE_FIELDS
               if _get_field(results.get("config", {}), field) != _get_field(wanted, field)]
  if differing:
    raise RuntimeError(f"{_results_path(workdir)} was made with other settings: "
                       + "; ".join(differing) + ". Use another --workdir, or drop --skip_existing.")


def run_or_reuse(config, workdir: str, skip_existing: bool, log=print) -> tuple[dict, float, bool]:
  """(results, wall seconds, reused) of one row: run_lib.run, or its results.json."""
  workdir = os.path.abspath(workdir)
  if skip_existing and os.path.exists(_results_path(workdir)):
    with open(_results_path(workdir)) as f:
      results = json.load(f)
    _check_reusable(results, config, workdir)
    log(f"reusing {_results_path(workdir)}")
    return results, logged_wall_seconds(results, workdir), True
  from s3rec_jax.training import run as run_lib  # Late: --devices must be set before jax loads.
  start = time.time()  # run_lib.run resumes a killed run from its checkpoints.
  results = run_lib.run(config, workdir)
  return results, time.time() - start, False


def measured_row(dataset: str, protocol: str, kind: str, label: str, config, workdir: str,
                 settings: Settings, source_note: str = "", pretrain_note: str = "",
                 log=print) -> Row:
  """Runs (or reuses) one row; a failure becomes a row that says so."""
  shown = os.path.relpath(workdir) if not os.path.isabs(settings.workdir) else workdir
  try:
    results, seconds, reused = run_or_reuse(config, workdir, settings.skip_existing, log)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return Row(dataset, protocol, kind, label, f"FAILED: {type(e).__name__}: {e}"[:300],
               failed=True)
  checkpoint = results.get("pretrain_checkpoint") or {}
  epochs = epochs_text(checkpoint.get("step", 0), finetune_epochs_run(workdir),
                       results.get("best_epoch"), pretrain_note)
  source = f"`{shown}`" + (" (reused)" if reused else "") + source_note
  metrics = {k: float(results[k]) for k in COLUMNS[protocol] if k in results}
  return Row(dataset, protocol, kind, label, source, metrics, epochs, seconds)


def sample_file_note(config, samples_dir: str, log=print) -> tuple[str | None, str]:
  """Makes sure NAME_sample.txt exists; returns (file to copy into workdirs, footnote).

  A shipped file in data_dir is used as is. Otherwise the negatives are
  generated once, with s3rec_jax.data.dataset and config.sample.seed, into samples_dir,
  so the runs read them from their workdirs and never write into data_dir.
  """
  name = f"{config.dataset}_sample.txt"
  shipped = os.path.join(config.data_dir, name)
  if os.path.exists(shipped):
    return None, f"{config.dataset}: sampled negatives read from `{shipped}`."
  target = os.path.join(samples_dir, name)
  if not os.path.exists(target):
    import numpy as np  # pylint: disable=import-outside-toplevel
    from s3rec_jax.data import dataset as data_lib  # pylint: disable=import-outside-toplevel
    ds = data_lib.load_dataset(config.data_dir, config.dataset, need_samples=False, log=log)
    negatives = data_lib.generate_sample_negatives(
        ds, config.sample.num_negatives, np.random.default_rng(config.sample.seed))
    os.makedirs(samples_dir, exist_ok=True)
    data_lib.write_sample_negatives(target, ds.user_ids, negatives)
    log(f"generated sampled negatives for {config.dataset}: {target}")
  return target, (f"{config.dataset}: no sample file ships with the data, so "
                  f"{config.sample.num_negatives} negatives per user were generated by "
                  f"s3rec_jax.data.dataset (numpy, seed {config.sample.seed}) into `{target}`; the "
                  "reference drew its own, so sampled figures differ from it by sampling noise.")


def convert_released(config, data_dir: str, out_dir: str, log=print) -> tuple[str | None, str]:
  """(checkpoint folder, .pt file) of the released checkpoint, converted once; None if absent."""
  found = sorted(glob.glob(os.path.join(data_dir, "reference_checkpoints",
                                        f"{config.dataset}-epochs-*.pt")))
  if not found:
    return None, ""
  source = found[-1]
  from s3rec_jax.model import checkpointing  # pylint: disable=import-outside-toplevel
  try:
    checkpointing.resolve(out_dir)
    log(f"reusing the converted checkpoint {out_dir}")
    return out_dir, source
  except checkpointing.CheckpointError:
    pass
  from s3rec_jax.data import dataset as data_lib  # pylint: disable=import-outside-toplevel
  from s3rec_jax.model import convert  # pylint: disable=import-outside-toplevel
  from s3rec_jax.model import encoder as model_lib  # pylint: disable=import-outside-toplevel
  ds = data_lib.load_dataset(data_dir, config.dataset, need_samples=False, log=log)
  mcfg = model_lib.model_config(config, ds, head_names=convert.REFERENCE_HEAD_NAMES)
  convert.convert_file(source, out_dir, mcfg, log=lambda _: None)
  log(f"converted {source} -> {out_dir}")
  return out_dir, source


def reproduce(settings: Settings, config_factory: Callable[[str], object] = load_config,
              on_row: Callable[[list[Row], list[str]], None] | None = None,
              log=print) -> tuple[list[Row], list[str]]:
  """Produces every requested row; returns (rows, per-dataset footnotes).

  `config_factory(dataset)` gives the base config (tests point it at a tiny
  synthetic one); `on_row(rows, notes)` is called after each row.
  """
  unknown = sorted(set(settings.rows) - set(ROW_KINDS)) + sorted(set(settings.protocols) - set(PROTOCOLS))
  if unknown:
    raise ValueError(f"unknown rows or protocols: {', '.join(unknown)}")
  workdir = settings.workdir
  rows: list[Row] = []
  notes: list[str] = []

  def add(new: Iterable[Row]) -> None:
    new = list(new)
    rows.extend(new)
    if new and on_row is not None:
      on_row(rows, notes)

  def base(dataset: str, protocol: str):
    config = config_factory(dataset)
    config.data_dir = settings.data_dir
    config.eval.protocol = protocol
    config.finetune.epochs = settings.finetune_epochs
    config.pretrain.epochs = 0
    config.finetune.init_checkpoint = ""
    return config

  for dataset in settings.datasets:
    real = dataset != "synthetic"
    sample_copy = None
    if real and "sampled" in settings.protocols and set(settings.rows) & set(ROW_KINDS[2:]):
      sample_copy, note = sample_file_note(base(dataset, "sampled"),
                                           os.path.join(workdir, "samples"), log)
      notes.append(note)
    first_pretrain: dict[str, str] = {}  # form -> pretrain folder of its first run.
    for kind in settings.rows:
      for protocol in settings.protocols:
        if kind == "paper":
          add(paper_rows(dataset, protocol))
          continue
        if kind == "reference_rerun":
          add(reference_log_rows(settings.data_dir, dataset, protocol) if real else [])
          continue
        config = base(dataset, protocol)
        label, source_note, pretrain_note = "", "", ""
        if kind == "sasrec":
          name, label = f"{dataset}-sasrec-{protocol}", "SASRec (ours)"
        elif kind == "released":
          label = "S3-Rec, released checkpoint (ours fine-tuned)"
          try:
            ckpt, pt = convert_released(config, settings.data_dir,
                                        os.path.abspath(os.path.join(workdir, "ckpt", dataset)), log)
          except Exception as e:  # pylint: disable=broad-except
            traceback.print_exc()
            add([Row(dataset, protocol, kind, label, f"FAILED conversion: {type(e).__name__}: {e}"[:300],
                     failed=True)])
            continue
          if ckpt is None:
            add([Row(dataset, protocol, kind, label, "no released checkpoint for this dataset")])
            continue
          config.finetune.init_checkpoint = ckpt
          name, source_note = f"{dataset}-released-{protocol}", f" from `{os.path.basename(pt)}`"
        else:
          form = kind.split("_", 1)[1]
          label = f"S3-Rec, ours pre-trained ({form} form)"
          name = f"{dataset}-scratch-{form}-{protocol}"
          config.pretrain.form = form
          if form in first_pretrain:
            config.finetune.init_checkpoint = first_pretrain[form]
            pretrain_note = " reused"
            source_note = f"; pre-training of `{os.path.basename(os.path.dirname(first_pretrain[form]))}`"
          elif form == "infonce" and settings.infonce_pretrain_epochs is not None:
            config.pretrain.epochs = settings.infonce_pretrain_epochs
          else:
            config.pretrain.epochs = settings.pretrain_epochs
        row_dir = os.path.join(workdir, name)
        if protocol == "sampled" and sample_copy is not None:
          os.makedirs(row_dir, exist_ok=True)
          shutil.copyfile(sample_copy, os.path.join(row_dir, os.path.basename(sample_copy)))
        log(f"\n=== {dataset} / {protocol} / {kind}: {row_dir}")
        row = measured_row(dataset, protocol, kind, label, config, row_dir, settings,
                           source_note, pretrain_note, log)
        if kind.startswith("scratch_") and not config.finetune.init_checkpoint and not row.failed:
          first_pretrain[config.pretrain.form] = os.path.abspath(os.path.join(row_dir, "pretrain"))
        add([row])
  return rows, notes


# --- rendering -----------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
  if seconds is None:
    return MISSING
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.2f} h"


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def render_table(rows: Sequence[Row], protocol: str) -> str:
  """One markdown table; rows' missing metrics show as –."""
  header = ["row", "source", *COLUMNS[protocol], "epochs", "wall time"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    values = [f"{row.metrics[c]:.4f}" if c in row.metrics else MISSING for c in COLUMNS[protocol]]
    cells = [row.label, row.source, *values, row.epochs, format_seconds(row.wall_seconds)]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  return "\n".join(lines)


FOOTNOTES = (
    "`published` rows are quoted, not measured: the published S3-Rec and SASRec figures as "
    "tabulated in the project's reference notes (docs/s3rec-reference.md).",
    "`reference log` rows are the final test line of the reference's own fine-tuning logs "
    "(`reference_logs/Finetune_sample-NAME-K.txt`, K = pre-training epochs, 0 = SASRec); the "
    "reference logged the sampled protocol only, with its own sampled negatives.",
    "Measured rows: one `run_lib.run` each (configs/<dataset>.py, overrides as in the command "
    "below); wall time is measured around it (data loading and compilation included; for a "
    "resumed run, its last invocation only), or read from the run's log (`done` record of "
    "log.jsonl) when a row is reused. The one-off conversion of a released checkpoint is not "
    "counted.",
    "epochs: `pre P + ft F (best B)`: pre-training epochs of the checkpoint used ('reused' = taken "
    "from the first protocol's run), fine-tuning epochs run before early stopping, best "
    "validation epoch.",
)


def render_markdown(rows: Sequence[Row], datasets: Sequence[str], protocols: Sequence[str],
                    notes: Sequence[str] = (), machine: str = "", command: str = "") -> str:
  """All tables (one per dataset and protocol), footnotes, machine and command."""
  parts = ["# S3-Rec reproduction", ""]
  for dataset in datasets:
    for protocol in protocols:
      chosen = [r for r in rows if r.dataset == dataset and r.protocol == protocol]
      if not chosen:
        continue
      parts += [f"## {dataset}, {PROTOCOL_TITLES[protocol]}", "", render_table(chosen, protocol), ""]
  parts += ["Notes:", ""] + [f"- {n}" for n in (*FOOTNOTES, *notes)] + [""]
  if machine:
    parts += [f"Machine: {machine}", ""]
  if command:
    parts += ["Reproduce with:", "", "```bash", command, "```", ""]
  return "\n".join(parts)


def write_atomic(path: str, text: str) -> None:
  from s3rec_jax.core import files  # pylint: disable=g-import-not-at-top
  files.write_text_atomic(path, text)


def describe_machine() -> str:
  import jax  # pylint: disable=import-outside-toplevel
  return f"jax {jax.__version__}, devices {jax.devices()}, os.cpu_count() = {os.cpu_count()}"


# --- command line --------------------------------------------------------------


def _list(text: str) -> list[str]:
  return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--datasets", type=_list, default=_list("LastFM,Beauty,Toys_and_Games"))
  parser.add_argument("--data_dir", default=fetch.default_data_dir())
  parser.add_argument("--workdir", default="runs/reproduce")
  parser.add_argument("--protocols", type=_list, default=list(PROTOCOLS))
  parser.add_argument("--rows", type=_list, default=list(ROW_KINDS),
                      help="comma-separated subset of " + ",".join(ROW_KINDS))
  parser.add_argument("--pretrain_epochs", type=int, default=150,
                      help="pre-training epochs of the scratch rows")
  parser.add_argument("--infonce_pretrain_epochs", type=int, default=None,
                      help="pre-training epochs of the scratch_infonce rows "
                           "(default: --pretrain_epochs)")
  parser.add_argument("--finetune_epochs", type=int, default=200)
  parser.add_argument("--devices", type=int, default=0,
                      help="N > 0: split the CPU into N XLA host devices")
  parser.add_argument("--output", default=None,
                      help="markdown file to write (default WORKDIR/table.md)")
  parser.add_argument("--skip_existing", action="store_true",
                      help="reuse rows whose workdir already has results.json")
  args = parser.parse_args(argv)
  args.output = args.output or os.path.join(args.workdir, "table.md")
  if min(args.pretrain_epochs, args.finetune_epochs, args.infonce_pretrain_epochs or 1) < 1:
    parser.error("--pretrain_epochs, --infonce_pretrain_epochs and --finetune_epochs must be "
                 "at least 1")
  for name, values, valid in (("--rows", args.rows, ROW_KINDS), ("--protocols", args.protocols, PROTOCOLS),
                              ("--datasets", args.datasets, tuple(CONFIG_FILES))):
    bad = [v for v in values if v not in valid]
    if bad:
      parser.error(f"{name}: unknown {', '.join(bad)}; valid: {', '.join(valid)}")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  if args.devices > 0:
    if "jax" in sys.modules:
      print("warning: jax is already imported; --devices has no effect", file=sys.stderr)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO.
  settings = Settings(datasets=args.datasets, protocols=args.protocols, rows=args.rows,
                      data_dir=args.data_dir, workdir=args.workdir,
                      pretrain_epochs=args.pretrain_epochs,
                      infonce_pretrain_epochs=args.infonce_pretrain_epochs,
                      finetune_epochs=args.finetune_epochs,
                      skip_existing=args.skip_existing)
  command = "python " + shlex.join(sys.argv if argv is None else ["benchmarks/reproduce.py", *argv])
  machine = describe_machine()

  def render(rows, notes):
    return render_markdown(rows, settings.datasets, settings.protocols, notes, machine, command)

  rows, notes = reproduce(settings, on_row=lambda r, n: write_atomic(args.output, render(r, n)))
  text = render(rows, notes)
  write_atomic(args.output, text)
  print("\n" + text)
  print(f"(written to {args.output})")
  return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
