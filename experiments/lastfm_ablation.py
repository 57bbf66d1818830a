"""The paper's ablation on LastFM (sampled protocol): S3-Rec without each objective, and SASRec.

  s3rec-experiment experiments/lastfm_ablation.py --workdir runs/lastfm_ablation \\
      --ledger experiments/ledgers/lastfm_ablation.jsonl

15 runs of the reference schedule (150 pre-training epochs each, about 50 min on
2 CPU cores, SASRec a few minutes): about 10 h on such a machine, so it is
finished in parts: the ledger keeps every finished run. SASRec on
LastFM often early-stops on a validation plateau; the cell `SASRec, min 30
epochs` shows what `finetune.min_epochs` changes (and says so in the table).
"""


def get_spec():
  return {
      "config": "configs/lastfm.py",
      "cells": {
          "S3-Rec": {},
          "w/o AAP": {"pretrain.objectives.aap": 0.0},
          "w/o MIP": {"pretrain.objectives.mip": 0.0},
          "w/o MAP": {"pretrain.objectives.map": 0.0},
          "w/o SP": {"pretrain.objectives.sp": 0.0},
          "SASRec": {"pretrain.epochs": 0},
          "SASRec, min 30 epochs": {"pretrain.epochs": 0, "finetune.min_epochs": 30},
      },
      "seeds": [42, 1, 2],
      "metrics": ["HR@1", "HR@5", "HR@10", "NDCG@10", "MRR"],
      "published": {
          "S3-Rec (paper)": {"HR@1": 0.1743, "HR@5": 0.4523, "HR@10": 0.5835, "NDCG@10": 0.3583,
                             "MRR": 0.3072},
          "SASRec (paper)": {"HR@1": 0.1211, "HR@5": 0.3385, "HR@10": 0.4706, "NDCG@10": 0.2755,
                             "MRR": 0.2364},
      },
  }
