"""The README demo over seeds: S3-Rec against plain SASRec on the long_tail synthetic set.

  s3rec-experiment experiments/synthetic_demo.py --workdir runs/synthetic_demo

Each cell trains once per seed (config.seed; the data stay those of
synthetic.seed 0); compare_to_sasrec is off here because SASRec is a cell.
"""


def get_spec():
  return {
      "config": "configs/synthetic.py",
      "overrides": {"compare_to_sasrec": False},
      "cells": {"S3-Rec": {}, "SASRec": {"pretrain.epochs": 0}},
      "seeds": [42, 1, 2],
      "metrics": ["HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "MRR"],
  }
