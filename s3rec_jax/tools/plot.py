"""Draws the training curves of train.py runs into one PNG, several runs overlaid.

  s3rec-plot runs/lastfm_pre runs/lastfm_sasrec --output curves.png
  s3rec-plot runs/a runs/b --labels S3-Rec,SASRec --metrics NDCG@20,HR@10 \\
      --output curves.png

Panels: one per pre-training objective and one for the weighted total (loss
per sequence against the global pre-training step: a line through the means
between host syncs, a dashed segment at each epoch's mean), the fine-tuning loss, and
one per validation metric against the fine-tuning epoch (a star marks the
test value, at the best epoch). A run without pre-training simply has no
line in the pre-training panels.

The curves come from each WORKDIR/log.jsonl, not from the TensorBoard event
files: train.py writes the same tags at the same steps to both, but log.jsonl
is the run's one file that is always there, plain JSON, and readable without
the tensorboard package.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
from typing import Sequence

from absl import flags

from s3rec_jax.core import command
from s3rec_jax.core import errors
from s3rec_jax.core import files
from s3rec_jax.training import metric_writers

PROG = "s3rec-plot"
# Tags under pretrain/ that are not losses (see metric_writers).
_PRETRAIN_SPEED_TAGS = ("pretrain/sequences_per_second", "pretrain/epoch_seconds")
_PANEL_COLUMNS = 4


@dataclasses.dataclass(frozen=True)
class RunCurves:
  """One run's scalars: tag -> (steps, values), steps ascending."""
  label: str
  scalars: dict[str, tuple[list[int], list[float]]]

  def has(self, tag: str) -> bool:
    return tag in self.scalars


def read_run(workdir: str, label: str | None = None) -> RunCurves:
  """Reads the scalars of WORKDIR/log.jsonl.

  A step written twice (a resumed run redoes the steps after its last
  checkpoint) keeps its last value. An incomplete last line, as a run killed
  while writing leaves it, is skipped.

  Args:
    workdir: A train.py workdir.
    label: The run's name in the legend; default: the folder's name.

  Raises:
    errors.UserError: The folder or its log is missing, unreadable, or holds no scalars.
  """
  if not os.path.isdir(workdir):
    raise errors.UserError(f"{workdir}: no such folder")
  path = os.path.join(workdir, metric_writers.LOG_FILE)
  if not os.path.isfile(path):
    raise errors.UserError(f"{path}: not found (is {workdir} a train.py workdir?)")
  try:
    with open(path) as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise errors.UserError(f"{path}: cannot read it ({e})") from e
  lines = text.split("\n")
  points = collections.defaultdict(dict)
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines):  # no newline after it: cut off by a killed run
        continue
      raise errors.UserError(f"{path}:{number}: not a JSON object ({e})") from e
    if not isinstance(record, dict):
      raise errors.UserError(f"{path}:{number}: not a JSON object")
    if record.get("phase") != metric_writers.SCALARS_PHASE:
      continue
    try:
      step = int(record["step"])
      for tag, value in record["scalars"].items():
        points[tag][step] = float(value)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise errors.UserError(f"{path}:{number}: a scalars line needs `step` and a `scalars` "
                             f"object of numbers ({e!r})") from e
  if not points:
    what = "is empty" if not text.strip() else "holds no scalars (phase \"scalars\" lines)"
    raise errors.UserError(f"{path}: {what}: nothing to plot")
  scalars = {tag: (sorted(by_step), [by_step[s] for s in sorted(by_step)])
             for tag, by_step in points.items()}
  return RunCurves(label or default_label(workdir), scalars)


def default_label(workdir: str) -> str:
  return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def _tags_in_order(runs: Sequence[RunCurves], prefix: str,
                   exclude: Sequence[str] = ()) -> list[str]:
  """Tags under `prefix` in the order the runs first wrote them."""
  seen = {}
  for run in runs:
    for tag in run.scalars:
      if tag.startswith(prefix) and tag not in exclude:
        seen.setdefault(tag, None)
  return list(seen)


def panel_tags(runs: Sequence[RunCurves], metrics: Sequence[str] | None = None) -> list[str]:
  """The panels' tags: pre-training losses (total last), fine-tuning loss, validation metrics.

  Args:
    runs: The runs to draw.
    metrics: Validation metrics to show, in this order; default: all the runs logged.

  Raises:
    errors.UserError: A metric in `metrics` that no run logged, or nothing to draw.
  """
  pretrain = _tags_in_order(runs, "pretrain/", _PRETRAIN_SPEED_TAGS)
  pretrain.sort(key=lambda tag: tag == "pretrain/loss")  # stable: objectives keep their order
  finetune = [tag for tag in ("finetune/loss",) if any(run.has(tag) for run in runs)]
  logged = _tags_in_order(runs, "valid/")
  if metrics is None:
    valid = logged
  else:
    valid = [f"valid/{name}" for name in metrics]
    missing = [tag for tag in valid if tag not in logged]
    if missing:
      raise errors.UserError(
          f"--metrics: no run logged {', '.join(t.split('/', 1)[1] for t in missing)} (logged: "
          f"{', '.join(t.split('/', 1)[1] for t in logged) or 'none'})")
  tags = pretrain + finetune + valid
  if not tags:
    raise errors.UserError("no run has pre-training, fine-tuning or validation curves to plot")
  return tags


def make_figure(runs: Sequence[RunCurves], metrics: Sequence[str] | None = None):
  """The figure of `runs`' curves, one panel per tag of `panel_tags` (titled with it).

  Each run has one colour; its lines carry its label. A legend at the top
  names the runs and the marks.

  Returns:
    A matplotlib Figure with an Agg canvas (no pyplot: no global state, no display).
  """
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg
  from matplotlib import figure as figure_lib
  from matplotlib import lines as lines_lib
  # pylint: enable=g-import-not-at-top

  tags = panel_tags(runs, metrics)
  columns = min(_PANEL_COLUMNS, len(tags))
  rows = -(-len(tags) // columns)
  fig = figure_lib.Figure(figsize=(4.0 * columns, 2.9 * rows + 0.6), layout="constrained")
  backend_agg.FigureCanvasAgg(fig)
  colors = [f"C{i % 10}" for i in range(len(runs))]
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax in axes[len(tags):]:
    ax.remove()
  for ax, tag in zip(axes, tags):
    ax.set_title(tag, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    kind, name = tag.split("/", 1)
    if kind == "pretrain":
      ax.set_xlabel("pre-training step", fontsize=8)
      ax.set_ylabel("loss per sequence", fontsize=8)
    else:
      ax.set_xlabel("fine-tuning epoch", fontsize=8)
      ax.xaxis.get_major_locator().set_params(integer=True)
    for run, color in zip(runs, colors):
      if not run.has(tag):
        continue
      steps, values = run.scalars[tag]
      ax.plot(steps, values, color=color, linewidth=1.2, label=run.label,
              marker="." if len(steps) <= 40 else None, markersize=4)  # few points: show them
      if kind == "pretrain" and run.has(f"pretrain_epoch/{name}"):
        # A flat segment over each epoch's steps: its mean belongs to the whole epoch.
        ends, means = run.scalars[f"pretrain_epoch/{name}"]
        ax.hlines(means, [0, *ends[:-1]], ends, colors=color, linestyles="--", linewidth=1.0,
                  alpha=0.8, label=run.label)
      if kind == "valid" and run.has(f"test/{name}"):
        ax.plot(*run.scalars[f"test/{name}"], color=color, linestyle="none", marker="*",
                markersize=11, markeredgecolor="black", markeredgewidth=0.5, label=run.label)

  handles = [lines_lib.Line2D([], [], color=color, linewidth=2, label=run.label)
             for run, color in zip(runs, colors)]
  marks = []
  if any(tag.startswith("pretrain/") for tag in tags):
    marks.append(lines_lib.Line2D([], [], color="gray", linestyle="--", linewidth=1.0,
                                  label="epoch mean (pre-training)"))
  if any(run.has(f"test/{tag.split('/', 1)[1]}") for run in runs for tag in tags
         if tag.startswith("valid/")):
    marks.append(lines_lib.Line2D([], [], color="gray", linestyle="none", marker="*",
                                  markersize=11, markeredgecolor="black", markeredgewidth=0.5,
                                  label="test (best epoch)"))
  fig.legend(handles=handles + marks, loc="outside upper center",
             ncols=min(len(handles) + len(marks), 6), fontsize=9, frameon=False)
  return fig


def save_png(fig, path: str) -> None:
  """Writes `fig` to `path` as a PNG, atomically."""
  files.save_figure_atomic(fig, path)


def _split_list(text: str | None) -> list[str] | None:
  return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def check_output(path: str) -> None:
  if not path.lower().endswith(".png"):
    raise errors.UserError(f"--output {path}: the figure is written as a PNG; name it FILE.png")
  if os.path.isdir(path):
    raise errors.UserError(f"--output {path}: is a folder; name a FILE.png in it")
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise errors.UserError(f"--output {path}: folder {directory} does not exist")


def plot(workdirs: Sequence[str], output: str, labels: Sequence[str] | None = None,
         metrics: Sequence[str] | None = None) -> None:
  """Reads the runs, draws them and writes the PNG; all checks run before anything is written."""
  check_output(output)
  if labels is not None and len(labels) != len(workdirs):
    raise errors.UserError(f"--labels: {len(labels)} label(s) for {len(workdirs)} WORKDIR(s)")
  if labels is None:
    labels = [default_label(w) for w in workdirs]
    if len(set(labels)) < len(labels):  # e.g. a/run and b/run: the paths tell them apart
      labels = list(workdirs)
  runs = [read_run(w, label) for w, label in zip(workdirs, labels)]
  save_png(make_figure(runs, metrics), output)


FLAGS = command.new_flags()
_OUTPUT = flags.DEFINE_string("output", None, "where the PNG goes: FILE.png", flag_values=FLAGS,
                              module_name=PROG, required=True)
_LABELS = flags.DEFINE_string("labels", None, "legend names, one per WORKDIR, as A,B,... "
                              "(default: the folder names)", flag_values=FLAGS, module_name=PROG)
_METRICS = flags.DEFINE_string("metrics", None, "validation metrics to draw, in this order, as "
                               "NDCG@20,HR@10,... (default: all logged)", flag_values=FLAGS,
                               module_name=PROG)

_USAGE = f"{PROG} WORKDIR [WORKDIR ...] --output FILE.png [flags]: " + __doc__


def _run(words: list[str]) -> int:
  if not words:
    raise errors.UsageError("name the train.py WORKDIR(s) to plot")
  plot(words, _OUTPUT.value, _split_list(_LABELS.value), _split_list(_METRICS.value))
  print(f"wrote {_OUTPUT.value}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (2 for a user error)."""
  return command.run(PROG, FLAGS, _run, argv, doc=_USAGE)


if __name__ == "__main__":
  sys.exit(main())
