"""A run of ours against an encoder's authors' training log, epoch by epoch.

  python benchmarks/against_authors_log.py --authors BSARec_LastFM_best.log \\
      --run runs/leaderboard/LastFM_BSARec_ce/seed_42

The authors' logs (the BSARec and TV-Rec repositories ship them as `output/*_best.log`) print
`{'epoch': N, 'rec_loss': '...'}` after each training epoch (numbered from 0) and
`{'Epoch': N, ..., 'HR@20': '...', 'NDCG@20': '...'}` after each validation, then the test
scores last. Our run's `log.jsonl` has one `finetune` record per epoch (numbered from 1) with
its training loss and validation metrics. Printed: both per epoch, the mean relative gap of the
training losses over the epochs both ran, and each run's best validation NDCG@20 with its test.
A training loss that follows the authors' to a fraction of a percent says the layer, the
samples, the loss and the optimiser agree; validation and test are then a draw of the seed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import sys

_DICT = re.compile(r"(\{'[Ee]poch'.*\})\s*$")


def authors_log(path: str) -> tuple[list[float], list[dict], dict | None]:
  """(training loss per epoch, validation metrics per epoch, test metrics or None)."""
  losses, valid, test = [], [], None
  testing = False
  with open(path, encoding="utf-8") as f:
    for line in f:
      if "Test Score" in line:
        testing = True
      found = _DICT.search(line)
      if not found:
        continue
      record = ast.literal_eval(found.group(1))
      if "rec_loss" in record:
        losses.append(float(record["rec_loss"]))
      elif "NDCG@20" in record:
        metrics = {k: float(v) for k, v in record.items() if k != "Epoch"}
        if testing:
          test = test or metrics
        else:
          valid.append(metrics)
  return losses, valid, test


def our_run(run: str) -> tuple[list[float], list[dict], dict | None]:
  losses, valid = [], []
  with open(os.path.join(run, "log.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record.get("phase") == "finetune" and "valid" in record:
        losses.append(float(record["loss"]))   # the authors log the whole loss too
        valid.append(record["valid"])
  results = os.path.join(run, "results.json")
  test = None
  if os.path.exists(results):
    with open(results, encoding="utf-8") as f:
      test = json.load(f).get("test")
  return losses, valid, test


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--authors", required=True, help="the authors' *_best.log")
  parser.add_argument("--run", required=True, help="our run's workdir (its log.jsonl)")
  args = parser.parse_args(argv)
  try:
    theirs, ours = authors_log(args.authors), our_run(args.run)
  except (OSError, ValueError, SyntaxError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyError as e:   # a log.jsonl record without the field
    print(f"error: {os.path.join(args.run, 'log.jsonl')}: a finetune record has no {e}; "
          "expected this project's log", file=sys.stderr)
    return 2
  (their_loss, their_valid, their_test), (our_loss, our_valid, our_test) = theirs, ours
  if not their_loss or not our_loss:
    print("error: no epochs found in " + (args.authors if not their_loss else args.run),
          file=sys.stderr)
    return 2
  print("| epoch | training loss: authors | ours | validation NDCG@20: authors | ours |")
  print("| --- | --- | --- | --- | --- |")
  for epoch in range(max(len(their_loss), len(our_loss))):
    cells = [str(epoch + 1)]
    for series in (their_loss, our_loss):
      cells.append(f"{series[epoch]:.4f}" if epoch < len(series) else "")
    for series in (their_valid, our_valid):
      cells.append(f"{series[epoch]['NDCG@20']:.4f}" if epoch < len(series) else "")
    print("| " + " | ".join(cells) + " |")
  both = min(len(their_loss), len(our_loss))
  gap = sum(abs(o - t) / t for t, o in zip(their_loss[:both], our_loss[:both])) / both
  print(f"\ntraining loss over the {both} epochs both ran: mean relative gap {gap:.2%}")
  for who, valid, test in (("authors", their_valid, their_test), ("ours", our_valid, our_test)):
    best = max(range(len(valid)), key=lambda i: valid[i]["NDCG@20"])
    scores = (f"; test HR@20 {test['HR@20']:.4f} NDCG@20 {test['NDCG@20']:.4f}" if test
              else "")
    print(f"{who}: best validation NDCG@20 {valid[best]['NDCG@20']:.4f} at epoch {best + 1} "
          f"of {len(valid)}{scores}")
  print("\ncommand: python benchmarks/against_authors_log.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
