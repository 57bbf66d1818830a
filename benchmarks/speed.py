"""Speed of pre-training, fine-tuning and evaluation, packed vs padded layout.

  python benchmarks/speed.py --dataset Beauty --devices 4 --steps 50

Uses the reference hyper-parameters of configs/default.py (pre-training batch
100, L 50, hidden 64, 2 layers, 2 heads; fine-tuning batch 256). For each
layout (`packed`, this project's default, and `padded`, one sequence per row
as in the reference) it prints:

- pre-training: sequences/s over --steps timed steps (the median of three
  timed windows) and run serially (host
  batch building and device steps timed apart) and with
  `input_pipeline.prefetch` as train.py runs them; seconds per epoch; the jit
  compile time; XLA's FLOP count of the step and the FLOP/s it reaches, also
  as a fraction of a dense [2048, 2048] x [2048, 2048] float32 matmul on the
  same devices. The packed layout runs the micro-batches per device step
  that train.py would choose (or --micro_batches); the padded baseline runs
  one pass per step, as the reference does;
- with --without sp,aap,...: the packed pre-training step again with each
  named objective's weight 0, beside the full step: what each one costs;
- fine-tuning: seconds of one full epoch (compile excluded), for each loss of
  --finetune_losses (next-item forms and auxiliary terms), and each one's time
  relative to the first;
- evaluation: seconds of one validation pass, full ranking and sampled
  (median of three passes after a first one that compiles), with the batches
  kept placed from the first pass as fine-tuning runs it, and built anew;
- the process's peak RSS.

Then a markdown table, the command to reproduce and the machine.
"""

import argparse
import copy
import os
import shlex
import sys


from s3rec_jax.core import parallel as _parallel  # noqa: E402  (imports jax; no op runs yet)
from s3rec_jax.data import fetch  # noqa: E402  (no JAX)

_parallel.force_host_devices_from_argv(sys.argv[1:])  # --devices N, before JAX starts

# pylint: disable=wrong-import-position
import dataclasses  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s3rec_jax.configs import default as default_config  # noqa: E402
import gauges  # noqa: E402  (benchmarks/gauges.py)
from s3rec_jax.core import parallel  # noqa: E402
from s3rec_jax.data import dataset as data_lib  # noqa: E402
from s3rec_jax.data import input_pipeline  # noqa: E402
from s3rec_jax.evaluation import evaluator  # noqa: E402
from s3rec_jax.evaluation import metrics as metrics_lib  # noqa: E402
from s3rec_jax.model import encoder as model_lib  # noqa: E402
from s3rec_jax.model import encoder_registry  # noqa: E402
from s3rec_jax import objectives as objectives_lib  # noqa: E402
from s3rec_jax.training import metric_writers  # noqa: E402
from s3rec_jax.training import pretraining  # noqa: E402
from s3rec_jax.training import setup  # noqa: E402
from s3rec_jax.training import steps as train_steps  # noqa: E402

LAYOUTS = ("packed", "padded")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="Beauty", help="NAME of NAME.txt in --data_dir, or synthetic")
  p.add_argument("--data_dir", default=fetch.default_data_dir())
  p.add_argument("--devices", type=int, default=0,
                 help="XLA CPU host devices (set before JAX starts); on GPU/TPU the first N "
                      "visible devices; 0 = all visible devices")
  p.add_argument("--steps", type=int, default=50, help="timed pre-training steps")
  p.add_argument("--warmup", type=int, default=3, help="untimed pre-training steps after compiling")
  group = p.add_mutually_exclusive_group()
  group.add_argument("--layouts", default="packed,padded", help="comma list of packed, padded")
  group.add_argument("--pack", dest="layouts", action="store_const", const="packed",
                     help="only the packed layout")
  group.add_argument("--no-pack", dest="layouts", action="store_const", const="padded",
                     help="only the padded (reference) layout")
  p.add_argument("--form", default="reference", choices=objectives_lib.FORMS)
  p.add_argument("--micro_batches", type=int, default=0,
                 help="pre-training micro-batches per device step (packed layout); 0 = automatic, "
                      "as train.py chooses. The padded baseline always runs one pass per step, as "
                      "the reference does")
  p.add_argument("--finetune_losses", default="bce",
                 help="comma list of fine-tuning losses to time, one epoch each: a next-item "
                      "form (bce, ce, sampled_softmax), optionally +OBJECTIVE[:WEIGHT] terms, "
                      "e.g. bce,ce,ce+cl4srec,ce+duorec:0.1; ce@fused_cpu: ce with "
                      "settings.next_item.ce_method=fused_cpu")
  p.add_argument("--ce_chunk_size", type=int, default=0,
                 help="catalogue rows per chunk of the ce loss (0 = the config's)")
  p.add_argument("--loop_epochs", type=int, default=2,
                 help="epochs of train.py's own pre-training loop to run after the step "
                      "timing (its last epoch's logged rate is printed beside the step's); "
                      "0 = skip")
  p.add_argument("--rankings", default="scan",
                 help="comma list of full-ranking methods to time (config eval.ranking): scan, "
                      "fused_cpu")
  p.add_argument("--without", default="",
                 help="comma list of pre-training objectives (e.g. sp,aap): for each, the packed "
                      "pre-training step rate again with that objective's weight 0, beside the "
                      "rate with all of them, in the same run: what each objective costs")
  p.add_argument("--skip_finetune", action="store_true")
  p.add_argument("--skip_eval", action="store_true")
  p.add_argument("--encoder", default="sasrec",
                 help="config.model.encoder: an encoder that mixes a row's positions (bsarec, "
                      "tvrec) is never packed, so it takes --layouts padded")
  args = p.parse_args(argv)
  args.layouts = tuple(x.strip() for x in args.layouts.split(",") if x.strip())
  args.rankings = tuple(x.strip() for x in args.rankings.split(",") if x.strip())
  args.without = tuple(x.strip() for x in args.without.split(",") if x.strip())
  bad = [x for x in args.rankings if x not in metrics_lib.RANKING_METHODS]
  if bad or not args.rankings:
    p.error(f"--rankings: unknown {bad}; valid: {', '.join(metrics_lib.RANKING_METHODS)}")
  bad = [x for x in args.layouts if x not in LAYOUTS]
  if bad or not args.layouts:
    p.error(f"--layouts: unknown {bad}; valid: {', '.join(LAYOUTS)}")
  if args.encoder not in encoder_registry.names():
    p.error(f"--encoder: unknown {args.encoder!r}; valid: {', '.join(encoder_registry.names())}")
  if encoder_registry.get(args.encoder).mixes_positions and "packed" in args.layouts:
    p.error(f"--encoder {args.encoder} mixes a row's positions and is never packed: "
            "use --layouts padded")
  if args.steps < 1 or args.warmup < 0 or args.micro_batches < 0:
    p.error("--steps must be >= 1, --warmup >= 0 and --micro_batches >= 0")
  return args


def say(message: str) -> None:
  print(message, flush=True)


def xla_flops(compiled) -> float:
  """XLA's FLOP count of a compiled computation, per device (dict or list-of-dict result)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def block(tree) -> None:
  jax.block_until_ready(tree)


# --- setup -------------------------------------------------------------------


def load_dataset(args) -> data_lib.Dataset:
  """The dataset, with sampled-protocol negatives generated in memory if the file is absent."""
  if args.dataset != "synthetic":
    path = os.path.join(args.data_dir, f"{args.dataset}.txt")
    if not os.path.exists(path):
      say(f"note: {path} not found; falling back to --dataset synthetic")
      args.dataset = "synthetic"
  if args.dataset == "synthetic":
    return data_lib.synthetic_dataset()
  has_samples = os.path.exists(os.path.join(args.data_dir, f"{args.dataset}_sample.txt"))
  ds = data_lib.load_dataset(args.data_dir, args.dataset, need_samples=has_samples, log=say)
  if not has_samples:
    # Generated as load_dataset would, but never written into the shared data folder.
    negatives = data_lib.generate_sample_negatives(ds, 99, np.random.default_rng(12345))
    ds = dataclasses.replace(ds, sample_negatives=negatives)
    say(f"note: no {args.dataset}_sample.txt; sampled negatives generated in memory (seed 12345)")
  return ds


def pick_devices(requested: int) -> list:
  devices = jax.devices()
  if requested and devices[0].platform != "cpu":
    if requested > len(devices):
      say(f"note: --devices {requested} but {len(devices)} visible; using all")
    devices = devices[:requested]
  return devices


def make_config(args):
  config = default_config.get_config()
  config.dataset = args.dataset
  config.data_dir = args.data_dir
  config.pretrain.form = args.form
  config.pretrain.micro_batches = args.micro_batches
  config.model.encoder = args.encoder
  if args.ce_chunk_size:
    config.settings.next_item.chunk_size = args.ce_chunk_size
  return config


def pretrain_settings(config, ds, pack: bool) -> input_pipeline.PretrainSettings:
  pc = config.pretrain
  return input_pipeline.PretrainSettings(
      batch_size=pc.batch_size, max_len=config.max_seq_length, mask_p=pc.mask_p,
      negative_high=setup.negative_high(config, ds), pack=pack)


# --- pre-training ------------------------------------------------------------


def pretrain_stream(batches: input_pipeline.PretrainBatches, steps):
  """Host batches of epoch 0 for the given step indices (wrapping)."""
  order = batches.order(0)
  bs = batches.settings.batch_size
  for i in steps:
    s = i % batches.steps_per_epoch
    yield batches.batch(order[s * bs:(s + 1) * bs], 0)


def shape_key(batch: dict) -> tuple:
  return tuple(sorted((k, v.shape) for k, v in batch.items()))


class CompiledSteps:
  """One AOT-compiled step per batch shape (packed batches come in a few row counts).

  Compiling ahead of the timed loops keeps compile time out of the step
  times; `seconds` and `flops` record each shape's compile time and XLA FLOPs.
  XLA's cost analysis counts a loop body once, so a step that scans over
  micro-batches is counted through `flop_step_fn`: the same step in one
  pass, lowered (not compiled) for the same shapes, which does the same
  arithmetic.
  """

  def __init__(self, step_fn, mesh, make_args, flop_step_fn=None):
    self.step_fn, self.mesh, self.make_args = step_fn, mesh, make_args
    self.flop_step_fn = flop_step_fn
    self.compiled, self.seconds, self.flops = {}, {}, {}

  def __call__(self, batch: dict):
    key = shape_key(batch)
    if key not in self.compiled:
      t0 = time.perf_counter()
      args = self.make_args(parallel.shard_batch(batch, self.mesh))
      self.compiled[key] = self.step_fn.lower(*args).compile()
      self.seconds[key] = time.perf_counter() - t0
      counted = (self.compiled[key] if self.flop_step_fn is None
                 else self.flop_step_fn.lower(*args))
      self.flops[key] = xla_flops(counted) * self.mesh.size
    return self.compiled[key]


def bench_pretrain(config, ds, mesh, pack: bool, args) -> dict:
  pc = config.pretrain
  objectives = objectives_lib.resolve(pc.objectives.to_dict(), pc.form)
  mcfg = model_lib.model_config(config, ds, head_names=tuple(o.name for o, _ in objectives))
  micro, why = (setup.pretrain_micro_batches(config, ds, mesh, objectives) if pack
                else (1, "one pass per step, as the reference"))
  batches = input_pipeline.PretrainBatches(ds, pretrain_settings(config, ds, pack), config.seed,
                                           shards=setup.shards(mesh, micro))
  options = objectives_lib.ObjectiveOptions(
      mask_id=ds.mask_id, num_items=ds.max_item, temperature=pc.infonce_temperature,
      mip_num_negatives=pc.mip_num_negatives)
  tx = train_steps.make_optimizer(pc.learning_rate, pc.adam_b1, pc.adam_b2, pc.weight_decay)
  repl = parallel.replicated(mesh)
  params = model_lib.init_params(mcfg, jax.random.key(config.seed))
  state = train_steps.create_state(params, tx, mesh)
  tables = parallel.replicate({"attr_ids": ds.attr_ids}, mesh)
  step_fn = train_steps.make_pretrain_step(mcfg, objectives, options, tx, mesh, micro)
  k, w = args.steps, args.warmup
  base = jax.random.key(config.seed + 1)
  keys = [jax.device_put(train_steps.step_key(base, 0, i), repl) for i in range(w + k)]
  one_pass = (train_steps.make_pretrain_step(mcfg, objectives, options, tx, mesh)
              if micro > 1 else None)
  steps = CompiledSteps(step_fn, mesh, lambda b: (state, b, tables, keys[0]), one_pass)

  # Compile every shape the measured steps use, before any timing.
  host = list(pretrain_stream(batches, range(w + k)))
  for batch in host:
    steps(batch)
  for i in range(w):
    state, losses = steps(host[i])(state, parallel.shard_batch(host[i], mesh), tables, keys[i])
  block(state)

  # Serial: host batch building and device steps timed apart.
  build_s = step_s = flops = 0.0
  stream = pretrain_stream(batches, range(w, w + k))
  for i in range(w, w + k):
    t0 = time.perf_counter()
    batch = next(stream)
    t1 = time.perf_counter()
    state, losses = steps(batch)(state, parallel.shard_batch(batch, mesh), tables, keys[i])
    block((state, losses))
    t2 = time.perf_counter()
    build_s += t1 - t0
    step_s += t2 - t1
    flops += steps.flops[shape_key(batch)]

  # As train.py runs: batches built on a background thread, steps dispatched
  # asynchronously. Three timed windows over the same steps; the median one is
  # reported, since a shared (virtual) machine's speed drifts within seconds.
  windows = []
  for _ in range(3):
    pending = []
    t0 = time.perf_counter()
    stream = input_pipeline.prefetch(pretrain_stream(batches, range(w, w + k)))
    for i, batch in enumerate(stream, start=w):
      state, losses = steps(batch)(state, parallel.shard_batch(batch, mesh), tables, keys[i])
      pending.append(losses)
      parallel.bound_in_flight(pending)
    block((state, pending))
    windows.append(time.perf_counter() - t0)
  prefetch_s = statistics.median(windows)

  seqs = k * pc.batch_size
  seq_per_s = seqs / prefetch_s
  rows = [b["items"].shape[0] for b in host[w:]]
  real = [int((b["segment_ids"] > 0).sum()) for b in host[w:]]
  return {
      "rows": float(np.mean(rows)), "shapes": sorted(set(rows)),
      "fill": sum(real) / (sum(rows) * config.max_seq_length),
      "steps_per_epoch": batches.steps_per_epoch,
      "num_sequences": batches.num_sequences, "compile_s": float(np.mean(list(steps.seconds.values()))),
      "build_s": build_s, "step_s": step_s, "prefetch_s": prefetch_s, "windows": windows,
      "serial_seq_per_s": seqs / (build_s + step_s), "device_seq_per_s": seqs / step_s,
      "seq_per_s": seq_per_s, "epoch_s": batches.num_sequences / seq_per_s,
      "build_share": build_s / (build_s + step_s),
      # Time the prefetched run saved over the serial one, as a share of the build
      # time, capped to [0, 1]: async dispatch also saves the per-step sync, so the
      # raw ratio can exceed 1, and thread contention can make it negative.
      "hidden": min(max((build_s + step_s - prefetch_s) / build_s, 0.0), 1.0) if build_s else 0.0,
      "exposed_share": max(prefetch_s - step_s, 0.0) / prefetch_s,
      "flops_step": flops / k, "flops_per_s": flops / step_s,
      "tokens": float(np.mean(rows)) * config.max_seq_length, "state": state,
      "micro_batches": micro, "micro_why": why,
  }


class RecordingWriter(metric_writers.MetricWriter):
  """Keeps the records train_lib writes (the epochs' seconds), writes nothing."""

  def __init__(self):
    self.records = []

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_record(self, record):
    self.records.append(dict(record))


def bench_train_loop(config, ds, mesh, epochs: int) -> dict:
  """train.py's own pre-training (pretraining.pretrain: the loop with its host syncs,
  logging and resume checkpoints) for `epochs` epochs in a scratch workdir; the
  rate of its last epoch as it logs it (the first one compiles)."""
  loop_config = copy.deepcopy(config)
  loop_config.pretrain.epochs = epochs
  loop_config.pretrain.save_every_epochs = epochs
  writer = RecordingWriter()
  with tempfile.TemporaryDirectory() as workdir:
    pretraining.pretrain(loop_config, ds, workdir, mesh, writer)
  epochs_done = [r for r in writer.records if r.get("phase") == "pretrain"]
  last = epochs_done[-1]
  batches = input_pipeline.PretrainBatches(ds, pretrain_settings(config, ds, True), config.seed)
  return {"seq_per_s": batches.num_sequences / last["seconds"], "seconds": last["seconds"],
          "epoch": last["epoch"], "checkpoint_every_steps": config.pretrain.checkpoint_every_steps,
          "log_every_steps": config.pretrain.log_every_steps}


# --- fine-tuning and evaluation ---------------------------------------------


def bench_finetune(config, ds, splits, mesh, pack: bool, form: str = "bce") -> dict:
  fc = config.finetune
  mcfg = model_lib.model_config(config, ds)
  repl = parallel.replicated(mesh)
  tx = train_steps.make_optimizer(fc.learning_rate, fc.adam_b1, fc.adam_b2, fc.weight_decay)
  params = model_lib.init_params(mcfg, jax.random.key(config.seed))
  state = train_steps.create_state(params, tx, mesh)
  batches = input_pipeline.FinetuneBatches(ds, splits, fc.batch_size,
                                           setup.negative_high(config, ds), config.seed,
                                           pack, shards=setup.shards(mesh))
  # A spec is FORM[@CE_METHOD][+OBJECTIVE[:WEIGHT]...]: the next-item form (and for ce,
  # settings.next_item.ce_method), plus auxiliary terms.
  form, *extra = form.split("+")
  form, _, ce_method = form.partition("@")
  if ce_method:
    config = copy.deepcopy(config)
    config.settings.next_item.ce_method = ce_method
  weights = {"next_item": 1.0}
  for term in extra:
    name, _, weight = term.partition(":")
    weights[name] = float(weight or 0.1)
  objectives = objectives_lib.resolve(weights, {"next_item": form}, phase="finetune")
  step_fn = train_steps.make_finetune_step(mcfg, tx, mesh, objectives,
                                           setup.objective_options(config, ds))
  tables = parallel.replicate(setup.finetune_tables(objectives, ds, splits), mesh)
  base = jax.random.key(config.seed + 2)
  keys = [jax.device_put(train_steps.step_key(base, 0, i), repl)
          for i in range(batches.steps_per_epoch)]
  steps = CompiledSteps(step_fn, mesh, lambda b: (state, b, tables, keys[0]))
  rows = []
  for batch in batches.epoch(0):     # compile every shape of the epoch before timing it
    steps(batch)
    rows.append(batch["inputs"].shape[0])
  losses = []
  t0 = time.perf_counter()
  for step, batch in enumerate(input_pipeline.prefetch(batches.epoch(0))):
    state, out = steps(batch)(state, parallel.shard_batch(batch, mesh), tables, keys[step])
    losses.append(out["loss"])
    parallel.bound_in_flight(losses)
  block((state, losses))
  return {"epoch_s": time.perf_counter() - t0, "steps": batches.steps_per_epoch,
          "rows": float(np.mean(rows)), "shapes": sorted(set(rows)),
          "compile_s": sum(steps.seconds.values()), "params": state.params,
          "loss": float(np.mean(jax.device_get(losses)))}


def bench_eval(config, ds, splits, mesh, params, protocol: str, ranking: str = "scan") -> dict:
  """Seconds of a validation pass as fine-tuning runs it (the batches placed by
  the first pass are kept), and of one that builds and places its batches anew."""
  config = copy.deepcopy(config)
  config.eval.ranking = ranking
  mcfg = model_lib.model_config(config, ds)
  evaluate = evaluator.Evaluator(config, ds, splits, mcfg, mesh, protocol)
  t0 = time.perf_counter()
  metrics = evaluate(params, "valid")         # compiles, and keeps the placed batches
  first_s = time.perf_counter() - t0
  kept, rebuilt = [], []
  for _ in range(3):                          # alternately, so that drift hits both alike
    t0 = time.perf_counter()
    evaluate(params, "valid")
    kept.append(time.perf_counter() - t0)
    cached, limit = evaluate.cached, evaluate.cache_bytes
    evaluate.cached, evaluate.cache_bytes = {}, 0
    t0 = time.perf_counter()
    evaluate(params, "valid")
    rebuilt.append(time.perf_counter() - t0)
    evaluate.cached, evaluate.cache_bytes = cached, limit
  return {"first_s": first_s, "seconds": statistics.median(kept),
          "rebuilt_s": statistics.median(rebuilt), "metrics": metrics}


# --- reporting ---------------------------------------------------------------


def reproduce_command(args) -> str:
  parts = ["python", "benchmarks/speed.py", "--dataset", args.dataset, "--data_dir", args.data_dir,
           "--devices", str(args.devices), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--layouts", ",".join(args.layouts), "--form", args.form,
           "--micro_batches", str(args.micro_batches), "--finetune_losses", args.finetune_losses,
           "--ce_chunk_size", str(args.ce_chunk_size), "--rankings", ",".join(args.rankings)]
  parts += ["--loop_epochs", str(args.loop_epochs)]
  parts += ["--without", ",".join(args.without)] if args.without else []
  parts += ["--skip_finetune"] if args.skip_finetune else []
  parts += ["--skip_eval"] if args.skip_eval else []
  parts += ["--encoder", args.encoder] if args.encoder != "sasrec" else []
  return " ".join(shlex.quote(p) for p in parts)


def fmt(x: float | None, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def main(argv) -> int:
  args = parse_args(argv)
  ds = load_dataset(args)
  config = make_config(args)
  devices = pick_devices(args.devices)
  mesh = parallel.make_mesh(devices)
  say(f"dataset {args.dataset}: {ds.num_users} users, {ds.max_item} items, "
      f"{ds.num_interactions} interactions, {ds.max_attr} attributes")
  say(f"devices: {mesh.size} x {devices[0].platform}; form {args.form}; layouts "
      f"{', '.join(args.layouts)}; pre-training batch {config.pretrain.batch_size}, "
      f"L {config.max_seq_length}, hidden {config.model.hidden_size}, "
      f"{config.model.num_layers} layers, {config.model.num_heads} heads; "
      f"fine-tuning batch {config.finetune.batch_size}")
  for what, size in (("pre-training", config.pretrain.batch_size),
                     ("fine-tuning", config.finetune.batch_size),
                     ("evaluation", config.eval.batch_size)):
    if size % mesh.size:
      say(f"error: the {what} batch {size} does not divide over {mesh.size} devices; "
          f"choose --devices among the divisors")
      return 2

  unknown = [n for n in args.without if n not in config.pretrain.objectives]
  if unknown or any(config.pretrain.objectives[n] == 0 for n in args.without if n not in unknown):
    say(f"error: --without names {', '.join(args.without)}; expected enabled pre-training "
        f"objectives among {', '.join(k for k, v in config.pretrain.objectives.items() if v)}")
    return 2
  peak = gauges.matmul_flops_per_s(mesh)
  say(f"dense matmul [2048,2048]x[2048,2048] f32 on {mesh.size} device(s): "
      f"{peak / 1e9:.1f} GFLOP/s (best of 7)")
  splits = data_lib.finetune_splits(ds, config.max_seq_length)
  results = {}
  for layout in args.layouts:
    pack = layout == "packed"
    config.pack_sequences = pack
    r = bench_pretrain(config, ds, mesh, pack, args)
    seqs = args.steps * config.pretrain.batch_size
    say(f"[{layout}] pre-training: {r['seq_per_s']:.0f} seq/s with prefetch "
        f"({args.steps} steps x {config.pretrain.batch_size} sequences in {r['prefetch_s']:.2f}s; "
        f"{r['rows']:.1f} rows of {config.max_seq_length} per step on average, row counts "
        f"{r['shapes']}, {100 * r['fill']:.0f}% of slots real; {r['micro_batches']} "
        f"micro-batch(es) per device step: {r['micro_why']}); "
        f"epoch of {r['num_sequences']} sequences ({r['steps_per_epoch']} steps) "
        f"~ {r['epoch_s']:.1f}s; median of 3 windows: "
        + ", ".join(f"{seqs / t:.0f}" for t in r["windows"]) + " seq/s")
    say(f"[{layout}] pre-training serial: {r['serial_seq_per_s']:.0f} seq/s "
        f"(device only {r['device_seq_per_s']:.0f} seq/s); batch building "
        f"{1e3 * r['build_s'] / args.steps:.1f} ms/step vs device step "
        f"{1e3 * r['step_s'] / args.steps:.1f} ms/step = {100 * r['build_share']:.1f}% of serial time")
    say(f"[{layout}] pre-training overlap: prefetched {r['prefetch_s']:.2f}s vs serial "
        f"{r['build_s'] + r['step_s']:.2f}s (build {r['build_s']:.2f}s + device {r['step_s']:.2f}s): "
        f"prefetch hid {100 * r['hidden']:.0f}% of the build time (capped at 100%); "
        f"input-bound share of the prefetched run {100 * r['exposed_share']:.1f}%")
    say(f"[{layout}] pre-training compile: {r['compile_s']:.2f}s per shape; XLA flops/step "
        f"{r['flops_step'] / 1e9:.3f} GFLOP (summed over devices; "
        f"{r['flops_step'] / config.pretrain.batch_size / 1e6:.2f} MFLOP/sequence); achieved "
        f"{r['flops_per_s'] / 1e9:.2f} GFLOP/s = {100 * r['flops_per_s'] / peak:.1f}% of the matmul")
    r.pop("state")
    if pack:
      for name in args.without:
        reduced = copy.deepcopy(config)
        reduced.pretrain.objectives[name] = 0.0
        w = bench_pretrain(reduced, ds, mesh, pack, args)
        r[f"seq_per_s_without_{name}"] = w["seq_per_s"]
        say(f"[{layout}] pre-training without {name}: {w['seq_per_s']:.0f} seq/s with prefetch "
            f"= {w['seq_per_s'] / r['seq_per_s']:.2f}x the rate with it ({r['seq_per_s']:.0f}); "
            f"{name} takes {100 * (1 - r['seq_per_s'] / w['seq_per_s']):.0f}% of the step "
            f"({w['flops_step'] / 1e9:.3f} vs {r['flops_step'] / 1e9:.3f} GFLOP/step)")
    if pack and args.loop_epochs:
      t = bench_train_loop(config, ds, mesh, args.loop_epochs)
      r["loop_seq_per_s"] = t["seq_per_s"]
      say(f"[{layout}] train.py's loop: epoch {t['epoch']} logged {t['seq_per_s']:.0f} seq/s "
          f"({t['seconds']:.1f}s; host syncs every {t['log_every_steps']} steps, resume "
          f"checkpoints every {t['checkpoint_every_steps']} steps and at the epoch end) = "
          f"{100 * t['seq_per_s'] / r['seq_per_s']:.0f}% of the prefetched step rate above")
    if not args.skip_finetune:
      for form in args.finetune_losses.split(","):
        f = bench_finetune(config, ds, splits, mesh, pack, form)
        r.setdefault("finetune_s", f["epoch_s"])    # the first form goes into the table
        r[f"finetune_{form}_s"] = f["epoch_s"]
        say(f"[{layout}] fine-tuning ({form} loss): one epoch of {f['steps']} steps "
            f"({f['rows']:.1f} rows per step on average, row counts {f['shapes']}) "
            f"in {f['epoch_s']:.2f}s (compile {f['compile_s']:.2f}s excluded; mean loss "
            f"{f['loss']:.4f})")
        params = f["params"]
      forms = args.finetune_losses.split(",")
      if len(forms) > 1:
        say(f"[{layout}] fine-tuning epoch relative to {forms[0]}: " + ", ".join(
            f"{form} {r[f'finetune_{form}_s'] / r[f'finetune_{forms[0]}_s']:.2f}x"
            for form in forms[1:]))
    else:
      mcfg = model_lib.model_config(config, ds)
      params = jax.device_put(model_lib.init_params(mcfg, jax.random.key(config.seed)),
                              parallel.replicated(mesh))
    if not args.skip_eval:
      passes = [("full", ranking) for ranking in args.rankings] + [("sampled", "scan")]
      for protocol, ranking in passes:
        e = bench_eval(config, ds, splits, mesh, params, protocol, ranking)
        if protocol == "full":
          r[f"eval_full_{ranking}_s"] = e["seconds"]
        r.setdefault(f"eval_{protocol}_s", e["seconds"])
        main_metric = evaluator.early_stopping_metric(protocol)
        what = f"{protocol}, {ranking}" if protocol == "full" else protocol
        say(f"[{layout}] evaluation ({what}): validation pass over {ds.num_users} users in "
            f"{e['seconds']:.2f}s with the batches kept placed from the first pass, "
            f"{e['rebuilt_s']:.2f}s building them anew (medians of 3; first pass with compile "
            f"{e['first_s']:.2f}s; {main_metric}={e['metrics'][main_metric]:.4f})")
        if protocol == "full":
          work = gauges.scoring_flops(ds.num_users, ds.max_item, config.model.hidden_size)
          r.setdefault("eval_full_fraction", work / e["seconds"] / peak)
          bare = gauges.scoring_matmul_flops_per_s(
              mesh, config.eval.batch_size // mesh.size, ds.max_item, config.model.hidden_size)
          say(f"[{layout}] full ranking ({ranking}) against the matmul bound: {ds.num_users} users x "
              f"{ds.max_item} items x {config.model.hidden_size} = {work / 1e9:.1f} GFLOP of "
              f"scores in {e['seconds']:.2f}s = {work / e['seconds'] / 1e9:.1f} GFLOP/s = "
              f"{100 * work / e['seconds'] / peak:.0f}% of the [2048, 2048] matmul; the bare "
              f"scoring matmul of one batch ([{config.eval.batch_size}, "
              f"{config.model.hidden_size}] x [{config.model.hidden_size}, {ds.max_item}]) runs "
              f"at {bare / 1e9:.1f} GFLOP/s = {100 * bare / peak:.0f}% of it, so ranking is at "
              f"{100 * work / e['seconds'] / bare:.0f}% of its own shape's matmul")
          # The same ranking without the encoder: given user vectors, as the issue's
          # "ranking step" (the pass above also encodes every user's history).
          alone = gauges.ranking_step_seconds(
              mesh, ds.num_users, ds.max_item, config.model.hidden_size,
              batch=config.eval.batch_size, method=ranking, chunk_size=config.eval.chunk_size)
          r[f"rank_alone_{ranking}_s"] = alone
          say(f"[{layout}] the ranking step alone ({ranking}; {ds.num_users} given user vectors, "
              f"ranks only, as evaluation asks): {alone:.3f}s = {work / alone / 1e9:.1f} GFLOP/s "
              f"= {100 * work / alone / peak:.0f}% of the [2048, 2048] matmul; the encoder and "
              f"the batches take the other {e['seconds'] - alone:.2f}s of the pass")
    say(f"[{layout}] peak RSS so far: {gauges.peak_rss_gib():.2f} GiB")
    results[layout] = r

  if {"packed", "padded"} <= set(results):
    pk, pd = results["packed"], results["padded"]
    say(f"XLA flops per pre-training step: padded {pd['flops_step'] / 1e9:.3f} GFLOP vs packed "
        f"{pk['flops_step'] / 1e9:.3f} GFLOP (padded/packed = "
        f"{pd['flops_step'] / pk['flops_step']:.2f}x); tokens per step {pd['tokens']:.0f} vs "
        f"{pk['tokens']:.0f}; pre-training speed-up of packing {pk['seq_per_s'] / pd['seq_per_s']:.2f}x")
  rss = gauges.peak_rss_gib()
  say(f"peak RSS of the process: {rss:.2f} GiB (ru_maxrss, whole run)")

  say("")
  say("| dataset | devices | layout | pretrain seq/s | s/epoch | build share (serial) | "
      "build hidden by prefetch | compile s | GFLOP/step | GFLOP/s | % of matmul | "
      "finetune epoch s | eval full s | eval sampled s | peak RSS GiB |")
  say("|" + " --- |" * 15)
  for layout, r in results.items():
    say(f"| {args.dataset} | {mesh.size} x {devices[0].platform} | {layout} | "
        f"{r['seq_per_s']:.0f} | {r['epoch_s']:.1f} | {100 * r['build_share']:.1f}% | "
        f"{100 * r['hidden']:.0f}% | {r['compile_s']:.1f} | {r['flops_step'] / 1e9:.3f} | "
        f"{r['flops_per_s'] / 1e9:.2f} | {100 * r['flops_per_s'] / peak:.1f}% | "
        f"{fmt(r.get('finetune_s'), '.2f')} | {fmt(r.get('eval_full_s'), '.2f')} | "
        f"{fmt(r.get('eval_sampled_s'), '.2f')} | {rss:.2f} |")
  say("")
  say(f"reproduce: {reproduce_command(args)}")
  say(f"machine: {platform.platform()}; {gauges.cpu_model()}; os.cpu_count()={os.cpu_count()}; "
      f"jax {jax.__version__}, platform {devices[0].platform}; XLA_FLAGS="
      f"{os.environ.get('XLA_FLAGS', '')!r}")
  say(f"jax.devices(): {jax.devices()}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
