"""Base configuration: the reference's hyper-parameters. Dataset files override a few fields.

Every field can be overridden on the command line, e.g.
  s3rec-train --config=lastfm --workdir=runs/lastfm --config.pretrain.epochs=0
"""

import ml_collections

from s3rec_jax import objectives  # noqa: F401  (registers every plug-in and its settings)
from s3rec_jax.core import settings as plugin_settings
from s3rec_jax.model import encoder_registry

encoder_registry.load_built_ins()   # every encoder and its settings record


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 42                       # fixes every random draw (JAX keys and numpy generators)
  c.dataset = "synthetic"           # NAME of NAME.txt in data_dir, or "synthetic" (built in)
  c.data_dir = "data"               # folder with NAME.txt, NAME_item2attributes.json[, NAME_sample.txt]
  c.max_seq_length = 50
  c.num_devices = 0                 # devices of the data-parallel mesh; 0 = all
  # Pack several short sequences into one row of max_seq_length tokens (each
  # keeps its absolute positions and sees only itself): the same losses and
  # scores as the reference's one-sequence-per-row padding, with far fewer
  # rows. False = the reference's padded layout (dropout draws differ).
  c.pack_sequences = True
  # Worker processes that build training batches ahead (grain): -1 = the cores the process
  # can spare (0 on CPU devices, which XLA keeps busy; the host's cores but one, at most 8, on
  # accelerators). The batches, and so the results, are the same for any count.
  c.data_workers = -1

  # After a run with pre-training, also train plain SASRec (the same config with
  # pre-training off) in WORKDIR/sasrec and print both runs' test metrics side by side.
  c.compare_to_sasrec = False

  # Built-in synthetic dataset (used when dataset == "synthetic").
  # kind "markov": dense item-level Markov chains (small and fast; the tests' data).
  # kind "long_tail": short histories, rare items, successors that follow the
  # item categories (configs/synthetic.py: where attribute pre-training pays).
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.kind = "markov"
  c.synthetic.num_users = 500
  c.synthetic.num_items = 300
  c.synthetic.num_attributes = 30
  c.synthetic.num_categories = 25   # long_tail only: the informative attributes
  c.synthetic.seed = 0

  # Negatives of the sampled protocol: read from NAME_sample.txt, or generated.
  c.sample = ml_collections.ConfigDict()
  c.sample.num_negatives = 99
  c.sample.seed = 12345

  # Reference quirk: training negatives are drawn from 1..item_size-1, which
  # includes the mask token. False draws from the real items 1..max_item only.
  c.negatives_include_mask_id = True

  c.model = ml_collections.ConfigDict()
  c.model.hidden_size = 64
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.hidden_dropout = 0.5
  c.model.attention_dropout = 0.5
  c.model.initializer_range = 0.02
  # The layer the encoder stacks (model/encoder_registry.py): "sasrec" (the reference's
  # transformer) or "bsarec" (attention blended with a Fourier filter; settings.bsarec).
  # An encoder that mixes every position of a row (bsarec) trains on prefixes
  # (finetune.targets=last_of_prefixes) on one left-padded sequence per row.
  c.model.encoder = "sasrec"
  # "bfloat16": matmuls and attention in bfloat16; parameters, optimiser state,
  # LayerNorm statistics, softmaxes and losses stay float32 (for accelerators).
  c.model.compute_dtype = "float32"
  # The item embedding table: "replicated" on every device, "sharded" by rows
  # over them (the table and its optimiser state at 1/N per device), or "auto":
  # sharded once the float32 table reaches item_table_shard_above_mib MiB.
  c.model.item_table = "auto"
  c.model.item_table_shard_above_mib = 128.0

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.epochs = 0             # 0 = no pre-training (plain SASRec)
  c.pretrain.batch_size = 100
  c.pretrain.learning_rate = 1e-3
  c.pretrain.adam_b1 = 0.9
  c.pretrain.adam_b2 = 0.999
  c.pretrain.weight_decay = 0.0
  c.pretrain.mask_p = 0.2
  # Objective name -> weight; 0 disables one. A new objective is a registered
  # function in s3rec_jax/objectives/ plus an entry here.
  c.pretrain.objectives = ml_collections.ConfigDict(
      {"aap": 0.2, "mip": 1.0, "map": 1.0, "sp": 0.5, "cl4srec": 0.0, "duorec": 0.0,
       "encoder_penalty": 0.0})
  c.pretrain.form = "reference"     # "reference" (sigmoid forms) or "infonce"
  c.pretrain.infonce_temperature = 1.0
  c.pretrain.mip_num_negatives = 0  # infonce MIP: 0 = whole catalogue, K = K sampled items
  c.pretrain.save_every_epochs = 10   # hand-off checkpoints WORKDIR/pretrain/EPOCH
  c.pretrain.checkpoint_every_steps = 500  # resume checkpoints within an epoch (0 = epoch ends only)
  c.pretrain.log_every_steps = 50
  # End pre-training after this many steps in all (0 = no limit): pod runs are planned in
  # steps. The epoch it falls in ends there (hand-off checkpoint, log line).
  c.pretrain.max_steps = 0
  # Micro-batches per device step: each device runs its share of a batch in
  # this many pieces, one after another, summing the gradients (the same
  # update up to float summation order). 0 = automatic: on a CPU host, pieces
  # of about parallel.CPU_MICRO_BATCH_ROWS packed rows (a small working set is
  # much faster there); 1 on accelerators.
  c.pretrain.micro_batches = 0

  c.finetune = ml_collections.ConfigDict()
  c.finetune.epochs = 200
  c.finetune.batch_size = 256
  c.finetune.learning_rate = 1e-3
  c.finetune.adam_b1 = 0.9
  c.finetune.adam_b2 = 0.999
  c.finetune.weight_decay = 0.0
  c.finetune.patience = 10          # early stopping on MRR (sampled) / NDCG@20 (full)
  # End fine-tuning after this many steps in all (0 = no limit); validation and the test
  # still run, and the log says the phase was cut.
  c.finetune.max_steps = 0
  # Host syncs every this many steps: losses are checked for NaN/Inf and only this many
  # steps' batches are kept for a diagnosis (0 = at epoch ends only).
  c.finetune.log_every_steps = 50
  # Epochs before early stopping may stop a run (0 = the reference: from the
  # first epoch). For datasets whose validation metric plateaus early.
  c.finetune.min_epochs = 0
  # The form of the next-item loss: "bce" (the reference's: one sampled
  # negative per position), "ce" (softmax over the whole catalogue, in chunks
  # of settings.next_item.chunk_size items, so memory does not grow with the
  # catalogue) or "sampled_softmax" (settings.next_item.num_negatives shared
  # negatives drawn by training frequency, log-Q corrected).
  c.finetune.loss = "bce"
  # Which positions are trained: "all_positions" (the reference's: every position of the
  # causal encoding predicts its next item) or "last_of_prefixes" (every prefix of a
  # training sequence is a sample and only its last position predicts: the way filter
  # encoders such as bsarec train, since their positions see later items).
  c.finetune.targets = "all_positions"
  # last_of_prefixes: the samples predict the last max_seq_length items of a training part,
  # each from the items before it in a window of max_seq_length + prefix_min_items items;
  # the fewest items a sample's input holds. 0: BSARec's code (the window's first target is
  # predicted from no items); 1: TV-Rec's (one item more of context, no empty input).
  c.finetune.prefix_min_items = 0
  # last_of_prefixes: run each prefix row on its last 8, 16, 32, ... columns where that holds
  # it, for an encoder whose newest position reads no padding (tvrec): the same
  # losses up to float rounding, for a fraction of the tokens (data/prefix_widths.py).
  # Ignored, with a line in the log, where the encoder reads the padding (sasrec, bsarec).
  c.finetune.trim_padding = False
  # Objective name -> weight of fine-tuning's loss: next_item, plus any
  # self-supervised objective as an auxiliary term (CL4SRec, DuoRec). Each is
  # a mean (over target positions or sequences) before weighting. encoder_penalty: the
  # encoder's own regulariser, if it has one (tvrec: its basis' orthogonality).
  c.finetune.objectives = ml_collections.ConfigDict(
      {"next_item": 1.0, "cl4srec": 0.0, "duorec": 0.0, "encoder_penalty": 0.0})
  # Pre-training checkpoint to start from: a checkpoint folder (latest step)
  # or one of its step folders. "" = this run's own pre-training, if any.
  c.finetune.init_checkpoint = ""
  # Load the tensors init_checkpoint has and start the others fresh (another encoder's own,
  # e.g. bsarec's filter branch over a sasrec checkpoint); False: a missing one is an error.
  c.finetune.init_partial = False

  # Settings of plug-ins (objectives, view builders), by plug-in name. Each plug-in declares
  # its fields, their types, ranges and defaults in one record where it is defined (see
  # s3rec_jax/core/settings.py): next_item (objectives/next_item.py: ce's chunk_size and
  # ce_method, sampled_softmax's num_negatives), augment (objectives/views.py: CL4SRec's
  # crop/mask/reorder ratios), cl4srec and duorec (temperature, similarity), infonce
  # (objectives/s3rec.py: the infonce forms' attribute_reduction and SP negatives).
  c.settings = ml_collections.ConfigDict(plugin_settings.defaults())

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = "sampled"       # "sampled" (answer + 99 negatives) or "full" (all items)
  c.eval.batch_size = 1024         # users per step (any value: the metrics do not depend on it)
  c.eval.chunk_size = 2048          # catalogue rows scored at a time in full ranking
  # Evaluate the first N users (file order) only; 0 = all. For runs at scale, where ranking
  # every user against the catalogue at each validation would outlast the training.
  c.eval.max_users = 0
  # How full ranking runs: "scan" (XLA, a scan over catalogue chunks) or
  # "fused_cpu" (a native CPU kernel compiled on first use with the system's
  # C++ compiler: scores, counts and top-k fused, never storing a score; on
  # CPUs only). The same metrics up to last-bit rounding of the scores.
  c.eval.ranking = "scan"
  c.eval.top_k = 20               # no effect (kept for older configs): evaluation needs ranks only
  return c
