"""Prints the figures of finished train.py runs: pre-training loss curves and test metrics.

  python benchmarks/summarize_runs.py runs/lastfm_sasrec runs/lastfm_pre_reference ...

Reads each workdir's log.jsonl and results.json (written by train.py), so every
figure quoted from a run can be reproduced from its workdir.
"""

import json
import os
import sys


def _load(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  records = []
  log_path = os.path.join(workdir, "log.jsonl")
  if os.path.exists(log_path):
    with open(log_path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  return results, records


def summarize(workdir: str) -> str:
  results, records = _load(workdir)
  cfg = results["config"]
  lines = [f"## {workdir}",
           f"dataset {results['dataset']}, protocol {results['protocol']}, "
           f"pre-training epochs {cfg['pretrain']['epochs']} (form {cfg['pretrain']['form']}), "
           f"init checkpoint {results['pretrain_checkpoint'] and results['pretrain_checkpoint']['path']}"]
  pre = [r for r in records if r["phase"] == "pretrain"]
  if pre:
    names = [k for k in pre[0] if k not in ("phase", "epoch", "seconds")]
    lines.append("pre-training loss per sequence by epoch: " + "; ".join(
        f"{n}: " + " -> ".join(f"{r[n]:.4f}" for r in pre) for n in names))
    lines.append("pre-training seconds per epoch: " + ", ".join(f"{r['seconds']:.1f}" for r in pre))
  fine = [r for r in records if r["phase"] == "finetune"]
  if fine:
    lines.append(f"fine-tuning: {len(fine)} epochs, mean {sum(r['seconds'] for r in fine) / len(fine):.1f} s/epoch, "
                 f"best epoch {results['best_epoch']}")
  lines.append("test: " + ", ".join(f"{k} {v:.4f}" for k, v in results["test"].items()))
  lines.append("valid (best epoch): " + ", ".join(f"{k} {v:.4f}" for k, v in results["valid"].items()))
  done = [r for r in records if r["phase"] == "done"]
  if done:
    lines.append(f"wall time: {done[-1]['wall_seconds'] / 60:.1f} min")
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  print("\n\n".join(summarize(w) for w in sys.argv[1:]))
  print(f"\n(reproduce: python benchmarks/summarize_runs.py {' '.join(sys.argv[1:])})")
