"""Checks a config before any work, with errors that name the field and what was expected."""

from __future__ import annotations

import ml_collections

from s3rec_jax.core import errors
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.model import encoder_registry
from s3rec_jax.model import item_table
from s3rec_jax.ops import methods
from s3rec_jax import objectives as objectives_lib
from s3rec_jax.objectives import next_item

PROTOCOLS = ("sampled", "full")
TARGETS = ("all_positions", "last_of_prefixes")


class ConfigError(errors.UserError):
  pass


def _get(config, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _positive_int(config, field: str) -> None:
  value = _get(config, field)
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"config.{field} must be a positive integer, got {value!r}")


def _probability(value, field: str) -> None:
  if not 0.0 <= float(value) <= 1.0:
    raise ConfigError(f"config.{field} must be a probability in [0, 1], got {value!r}")


def validate(config: ml_collections.ConfigDict) -> None:
  for field in ("max_seq_length", "model.hidden_size", "model.num_layers", "model.num_heads",
                "pretrain.batch_size", "finetune.batch_size", "eval.batch_size",
                "eval.chunk_size", "eval.top_k", "pretrain.save_every_epochs",
                "pretrain.log_every_steps", "finetune.patience", "sample.num_negatives"):
    _positive_int(config, field)
  # Fields added after the first configs were saved: an older config may lack them.
  late = ("pretrain.max_steps", "finetune.max_steps", "finetune.log_every_steps",
          "eval.max_users", "finetune.prefix_min_items")
  for field in ("pretrain.epochs", "finetune.epochs", "num_devices", "pretrain.mip_num_negatives",
                "pretrain.micro_batches", "finetune.min_epochs") + late:
    if field in late and field.split(".")[1] not in config[field.split(".")[0]]:
      continue
    value = _get(config, field)
    if not isinstance(value, int) or value < 0:
      raise ConfigError(f"config.{field} must be a non-negative integer, got {value!r}")
  if not isinstance(config.get("data_workers", -1), int) or config.get("data_workers", -1) < -1:
    raise ConfigError(f"config.data_workers={config.get('data_workers')!r}: expected -1 "
                      "(automatic) or a count >= 0")
  if config.finetune.epochs == 0:
    raise ConfigError("config.finetune.epochs must be at least 1 (the test uses the best epoch)")
  if config.model.hidden_size % config.model.num_heads:
    raise ConfigError(f"config.model.hidden_size={config.model.hidden_size} must be divisible by "
                      f"config.model.num_heads={config.model.num_heads}")
  for field in ("model.hidden_dropout", "model.attention_dropout", "pretrain.mask_p"):
    _probability(_get(config, field), field)
  if config.model.compute_dtype not in model_lib.COMPUTE_DTYPES:
    raise ConfigError(f"config.model.compute_dtype={config.model.compute_dtype!r} is unknown; "
                      "expected " + " or ".join(model_lib.COMPUTE_DTYPES))
  if config.model.item_table not in item_table.LAYOUTS:
    raise ConfigError(f"config.model.item_table={config.model.item_table!r} is unknown; "
                      "expected " + ", ".join(item_table.LAYOUTS))
  if not config.model.item_table_shard_above_mib > 0:
    raise ConfigError("config.model.item_table_shard_above_mib must be > 0, got "
                      f"{config.model.item_table_shard_above_mib}")
  if config.eval.protocol not in PROTOCOLS:
    raise ConfigError(f"config.eval.protocol={config.eval.protocol!r} is unknown; valid protocols: "
                      + ", ".join(PROTOCOLS))
  if config.finetune.loss not in next_item.FORMS:
    raise ConfigError(f"config.finetune.loss={config.finetune.loss!r} is unknown; valid losses: "
                      + ", ".join(next_item.FORMS))
  encoder = config.model.get("encoder", "sasrec")
  try:
    spec = encoder_registry.get(encoder)
  except ValueError as e:
    raise ConfigError(f"config.model.encoder: {e}") from None
  targets = config.finetune.get("targets", "all_positions")
  if targets not in TARGETS:
    raise ConfigError(f"config.finetune.targets={targets!r} is unknown; expected "
                      + " or ".join(TARGETS))
  if spec.mixes_positions and targets == "all_positions":
    raise ConfigError(f"config.model.encoder={encoder!r} mixes every position of a row, so "
                      "training all positions at once would show each one its answer: set "
                      "config.finetune.targets=last_of_prefixes")
  for phase in ("pretrain", "finetune"):
    if config[phase].objectives.get("encoder_penalty", 0.0) and spec.penalty is None:
      raise ConfigError(f"config.{phase}.objectives.encoder_penalty: encoder {encoder!r} has "
                        "no penalty (encoders with one: " + ", ".join(
                            n for n in encoder_registry.names()
                            if encoder_registry.get(n).penalty) + ")")
  # Every plug-in's settings, against the record it declares (names, types, ranges).
  objectives_lib.settings_tuple(config.settings.to_dict())
  # The method names and what they need of the model; whether they run here is checked
  # after start-up has set the devices (ops.methods.check_config).
  try:
    methods.check_config(config, backend=False)
  except methods.MethodError as e:
    raise ConfigError(str(e)) from None
  if config.dataset == "synthetic":
    s = config.synthetic
    if s.kind not in ("markov", "long_tail"):
      raise ConfigError(f"config.synthetic.kind={s.kind!r} is unknown; expected 'markov' or "
                        "'long_tail'")
    if s.kind == "long_tail" and not 2 <= s.num_categories < s.num_attributes:
      raise ConfigError(f"config.synthetic.num_categories={s.num_categories} must be at least 2 "
                        f"and below config.synthetic.num_attributes={s.num_attributes}")
    if s.num_items < 2 * (s.num_categories if s.kind == "long_tail" else 10):
      raise ConfigError(f"config.synthetic.num_items={s.num_items} is too small for the "
                        f"{s.kind} dataset")
  try:
    objectives_lib.resolve(config.finetune.objectives.to_dict(), {"next_item": config.finetune.loss},
                           phase="finetune")
  except ValueError as e:
    raise ConfigError(f"config.finetune.objectives: {e}") from None
  if config.pretrain.form not in objectives_lib.FORMS:
    raise ConfigError(f"config.pretrain.form={config.pretrain.form!r} is unknown; valid forms: "
                      + ", ".join(objectives_lib.FORMS))
  if config.pretrain.infonce_temperature <= 0:
    raise ConfigError("config.pretrain.infonce_temperature must be > 0")
  if config.pretrain.epochs > 0:
    try:
      chosen = objectives_lib.resolve(config.pretrain.objectives.to_dict(), config.pretrain.form,
                                      phase="pretrain")
    except ValueError as e:
      raise ConfigError(f"config.pretrain.objectives: {e}") from None
    if config.pretrain.micro_batches:   # 0 = automatic, which never splits such a batch
      try:
        objectives_lib.check_micro_batches(chosen, config.pretrain.micro_batches)
      except ValueError as e:
        raise ConfigError(f"config.pretrain.micro_batches={config.pretrain.micro_batches} "
                          f"({config.pretrain.form} form): {e}") from None


def validate_for_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Global batches are split evenly over the devices of the mesh."""
  for field in ("pretrain.batch_size", "finetune.batch_size", "eval.batch_size"):
    value = _get(config, field)
    if value % num_devices:
      raise ConfigError(f"config.{field}={value} is not divisible by the {num_devices} devices "
                        f"of the mesh; use a multiple of {num_devices} or set config.num_devices")
