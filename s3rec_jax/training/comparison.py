"""compare_to_sasrec: the same run without pre-training, and the two runs' test metrics side by side."""

from __future__ import annotations

import ml_collections


def sasrec_baseline(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same run with pre-training off: the baseline that pre-training must beat."""
  baseline = ml_collections.ConfigDict(config.to_dict())
  baseline.pretrain.epochs = 0
  baseline.finetune.init_checkpoint = ""
  baseline.compare_to_sasrec = False
  return baseline


def comparison_table(runs: dict[str, dict[str, float]], decide_by: str) -> str:
  """Test metrics of several runs, one row per metric, and which run won on `decide_by`."""
  names = list(runs)
  metrics = list(next(iter(runs.values())))
  width = max(10, *(len(n) for n in names))
  lines = ["test metrics, side by side", f"{'metric':>8} " + " ".join(f"{n:>{width}}" for n in names)]
  for m in metrics:
    lines.append(f"{m:>8} " + " ".join(f"{runs[n][m]:>{width}.4f}" for n in names))
  ranked = sorted(names, key=lambda n: runs[n][decide_by], reverse=True)
  best, runner_up = ranked[0], ranked[1]
  if runs[best][decide_by] == runs[runner_up][decide_by]:
    lines.append(f"{best} and {runner_up} tie on test {decide_by} ({runs[best][decide_by]:.4f})")
  else:
    lines.append(f"{best} wins on test {decide_by}: {runs[best][decide_by]:.4f} against "
                 f"{runs[runner_up][decide_by]:.4f} for {runner_up}")
  return "\n".join(lines)
