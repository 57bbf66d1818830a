"""The files and folders of a run's workdir: written by training, read by serving and tools."""

from __future__ import annotations


PRETRAIN_DIR = "pretrain"                 # hand-off checkpoints, one per saved epoch


PRETRAIN_RESUME_DIR = "pretrain_resume"   # rolling checkpoints to resume within an epoch


FINETUNE_BEST_DIR = "finetune_best"       # the best state on validation (used for the test)


FINETUNE_RESUME_DIR = "finetune_resume"   # state + early-stopping record after every epoch


SASREC_DIR = "sasrec"


COMPARISON_FILE = "comparison.md"


RESULTS_FILE = "results.json"


RUN_FILE = "run.json"     # what serving needs: config, sizes, where the data came from


IDS_FILE = "ids.json"     # copy of the dataset's NAME_ids.json (original <-> dense ids), if any
