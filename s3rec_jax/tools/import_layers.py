"""The package's layers, and a check that imports only run downwards.

  python -m s3rec_jax.tools.import_layers        # exit 1 and one line per violation

A module may import its own subpackage and the layers below it, never one above. Serving sits
beside training, not above it: a server loads a trained model without the training stack.
The map of modules is docs/design.md.
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Iterator, Sequence

PACKAGE = "s3rec_jax"
# Subpackage -> layer: lower numbers are imported by higher ones, never the other way.
LAYERS = {
    "core": 0,          # errors, files, devices, the workdir's file names
    "data": 1,          # datasets, sources, prepare, fetch, the input pipeline
    "model": 2,         # the encoder, the item table, checkpoints, weight import
    "ops": 3,           # the catalogue softmax and ranking kernels (the only home of fused_cpu)
    "objectives": 4,    # self-supervised and next-item objectives, and the views they need
    "evaluation": 5,    # metrics, the evaluation step, the evaluator
    "training": 6,      # steps, the loop, the phases, config validation, metric writers
    "serving": 6,       # recommend, export: beside training, never importing it
    "tools": 7,         # the command lines (train, evaluate, experiment, plot)
    "configs": 7,       # the packaged configs (read by the command lines)
}
# (importer, imported) pairs that are refused even though the layers would allow them.
FORBIDDEN = {("serving", "training")}


def _subpackage(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def _imports(path: str, module: str) -> Iterator[tuple[int, str]]:
  """(line, imported module) of every s3rec_jax import in a file, at any depth."""
  with open(path) as f:
    tree = ast.parse(f.read(), filename=path)
  package = module.rsplit(".", 1)[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:   # relative: resolve against the importing module's package
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      for alias in node.names:   # the name may be a module or an attribute: either is fine
        yield node.lineno, f"{base}.{alias.name}"


def modules(root: str) -> Iterator[tuple[str, str]]:
  """(path, dotted module name) of every .py file under the package folder `root`."""
  top = os.path.dirname(os.path.abspath(root))
  for folder, _, names in os.walk(root):
    for name in sorted(names):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, top)[:-3].replace(os.sep, ".")
        yield path, rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def violations(root: str) -> list[str]:
  """One line per import that runs upwards (or is forbidden), as path:line: message."""
  found = []
  for path, module in modules(root):
    importer = _subpackage(module)
    if importer is None:
      continue
    if importer not in LAYERS:
      found.append(f"{path}:1: subpackage {importer!r} has no layer in "
                   f"{PACKAGE}.tools.import_layers.LAYERS")
      continue
    for line, imported in _imports(path, module):
      target = _subpackage(imported)
      if target is None or target == importer:
        continue
      if target not in LAYERS:
        found.append(f"{path}:{line}: imports {imported}, which has no layer")
      elif (importer, target) in FORBIDDEN:
        found.append(f"{path}:{line}: {importer} imports {imported}: {importer} never imports "
                     f"{target}")
      elif LAYERS[target] > LAYERS[importer]:
        found.append(f"{path}:{line}: {importer} (layer {LAYERS[importer]}) imports {imported} "
                     f"({target}, layer {LAYERS[target]}): imports run downwards only")
  return found


def main(argv: Sequence[str] | None = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  root = args[0] if args else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  found = violations(root)
  for line in found:
    print(line)
  print(f"import layers: {len(found)} violation(s) in {root}", file=sys.stderr)
  return 1 if found else 0


if __name__ == "__main__":
  sys.exit(main())
