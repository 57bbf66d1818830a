"""Fixed shapes: after its first epoch a phase compiles nothing more, and the test pass
reuses validation's compiled evaluation step."""

import re
import subprocess

import cli_runs


def _compiles_after(lines, start, stop=None):
  """The 'Compiling ...' lines between the first line matching `start` and `stop`."""
  begun, found = False, []
  for line in lines:
    if stop is not None and begun and re.search(stop, line):
      break
    if re.search(start, line):
      begun = True
    elif begun and "Compiling " in line:
      found.append(line.strip()[:200])
  assert begun, f"no line matches {start!r}"
  return found


def test_no_compile_after_the_first_epoch_of_either_phase_nor_in_the_test_pass(tmp_path):
  env = cli_runs.env(devices=2, compilation_cache=None)
  env["JAX_LOG_COMPILES"] = "1"
  overrides = {"pretrain.epochs": 3, "finetune.epochs": 3, "finetune.patience": 5,
               "eval.protocol": "full", "pretrain.checkpoint_every_steps": 0,
               "max_seq_length": 24, "eval.batch_size": 32}
  result = subprocess.run(cli_runs.command(str(tmp_path / "run"), overrides), env=env,
                          cwd=cli_runs.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
  lines = result.stdout.splitlines()
  assert result.returncode == 0, result.stdout[-3000:]
  assert any("Compiling " in line for line in lines), "compile logging is off"
  # The first epoch's end writes the first checkpoint: orbax compiles its per-device slices
  # of each array shape once there. Nothing else compiles after the first epoch.
  first_save = [line for line in _compiles_after(lines, r"^pretrain epoch 1:", r"^pretrain epoch 2:")
                + _compiles_after(lines, r"^finetune epoch 1:", r"^finetune epoch 2:")
                if "Compiling jit(slice)" not in line]
  assert first_save == []
  assert _compiles_after(lines, r"^pretrain epoch 2:", r"^fine-tuning:") == []
  assert _compiles_after(lines, r"^finetune epoch 2:") == []
