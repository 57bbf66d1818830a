"""One command-line idiom for every s3rec command: absl flags, one-line errors, an exit status.

A command module keeps its flags on its own `absl.flags.FlagValues`, made by `new_flags()`,
and its `main(argv=None) -> int` is `command.run(PROG, FLAGS, body, argv, doc=__doc__)`:

  FLAGS = command.new_flags()
  _OUTPUT = flags.DEFINE_string("output", None, "...", flag_values=FLAGS, required=True)

  def main(argv=None) -> int:
    return command.run(PROG, FLAGS, _body, argv, doc=__doc__)

Own flag sets, not absl's global `FLAGS`, because the package is also a library: importing
it must not define flags in its user's own absl program, and every command can be imported
and run in one process (tests, notebooks) although several define `--workdir` or `--output`.
Flags are `--name=value` or `--name value`, booleans `--name`/`--noname`, lists repeat the
flag; words that are not flags (a subcommand, file names) reach the body in order.

Whatever goes wrong on the user's side prints one line, `PROG: error: ...`, and returns 2:
a flag mistake (with the close match of a misspelt name) and `errors.UsageError` (both
pointing to `PROG --help`), and any `errors.UserError` the body raises (bad data, config or
checkpoint). `--help` (or `-h`) prints the usage and the flags by section, and returns 0.
"""

from __future__ import annotations

import difflib
import re
import sys
import textwrap
from typing import Callable, Sequence

from absl import flags

from s3rec_jax.core import errors

# Exceptions of parsing that are not absl's own (a config file's code failing to load) may be
# explained by the command: (error, argv) -> the message, or None to let it propagate.
ExplainParseError = Callable[[Exception, Sequence[str]], "str | None"]

# Flags that libraries define on a command's flag set; not the command's own to list.
_LIBRARY_MODULES = ("absl.", "ml_collections.")
_REQUIRED = re.compile(r"flag --(\w+)=None: Flag --\w+ must have a value other than None")
_UNKNOWN = re.compile(r"Unknown command line flag '([^']+)'")


def new_flags() -> flags.FlagValues:
  """A command's own flag set, with --help/-h."""
  flag_values = flags.FlagValues()
  flags.DEFINE_bool("help", False, "Show this help and exit.", short_name="h",
                    flag_values=flag_values, module_name="help")
  return flag_values


def usage(prog: str, flag_values: flags.FlagValues, doc: str = "") -> str:
  """The command's description and its flags, by section in the order they were defined."""
  sections = []
  by_module = flag_values.flags_by_module_dict()
  for module in sorted(by_module, key=lambda m: m == "help"):   # stable: definition order
    if module.startswith(_LIBRARY_MODULES):
      continue   # absl's --flagfile/--undefok, ml_collections' per-field overrides
    lines = [_flag_line(flag) for flag in sorted(by_module[module], key=lambda f: f.name)]
    if not lines:
      continue
    title = "" if module == "help" else f"{module}:\n"
    sections.append(title + "\n".join(lines))
  return (doc.strip() + "\n\n" if doc else f"{prog}\n\n") + "\n\n".join(sections) + "\n"


def put_in_section(flag_values: flags.FlagValues, name: str, section: str) -> None:
  """Lists flag `name` under `section` of the help only (e.g. a flag a library defined)."""
  flag = flag_values[name]
  for flags_of_module in flag_values.flags_by_module_dict().values():
    if flag in flags_of_module:
      flags_of_module.remove(flag)
  flag_values.register_flag_by_module(section, flag)


def _flag_line(flag) -> str:
  name = f"--[no]{flag.name}" if isinstance(flag, flags.BooleanFlag) else f"--{flag.name}"
  if flag.short_name:
    name += f", -{flag.short_name}"
  default = flag.default
  shown = "" if default in (None, False, [], "") or flag.name == "help" else (
      f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})")
  text = " ".join((flag.help + shown).split())   # absl's own additions bring odd spacing
  return f"  {name}\n" + textwrap.fill(text, width=88, initial_indent=" " * 6,
                                        subsequent_indent=" " * 6)


def fail(prog: str, message: str, hint: bool = True) -> int:
  """Prints `PROG: error: message` on one line (pointing to --help) and returns 2."""
  suffix = f" (see {prog} --help)" if hint else ""
  print(f"{prog}: error: {errors.one_line(message)}{suffix}", file=sys.stderr, flush=True)
  return errors.EXIT_USER_ERROR


def _flag_error(error: flags.Error, flag_values: flags.FlagValues) -> str:
  text = errors.one_line(str(error))
  required = _REQUIRED.match(text)
  if required:
    return f"--{required.group(1)} is required"
  unknown = _UNKNOWN.search(text)
  if unknown:
    name = unknown.group(1).split("=")[0]
    names = [n for n in flag_values if n not in ("flagfile", "undefok")]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean --{close[0]}?" if close else ""
    return f"unknown flag --{name}{hint}"
  return text


def _asks_help(argv: Sequence[str]) -> bool:
  return any(a in ("-h", "--help", "-help") for a in argv)


def run(prog: str, flag_values: flags.FlagValues, body: Callable[[list[str]], "int | None"],
        argv: Sequence[str] | None = None, doc: str = "",
        explain: ExplainParseError | None = None) -> int:
  """Parses argv (default: sys.argv[1:]) into flag_values, runs body(words), returns the status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  flag_values.unparse_flags()   # a command run twice in one process starts from its defaults
  try:
    words = flag_values([prog, *argv])[1:]
  except flags.Error as e:
    if not _asks_help(argv):   # help asked for beside a mistake: the help wins
      return fail(prog, _flag_error(e, flag_values))
    words = []
  except Exception as e:  # pylint: disable=broad-except
    message = explain(e, argv) if explain is not None else None
    if message is None:
      raise
    return fail(prog, message)
  if _asks_help(argv):
    print(usage(prog, flag_values, doc), end="", flush=True)
    return 0
  # absl logging and grain read absl's global flags; a command that runs is past parsing.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  try:
    status = body(list(words))
  except errors.UsageError as e:
    return fail(prog, str(e))
  except errors.UserError as e:
    errors.report(prog, e)
    return errors.EXIT_USER_ERROR
  return 0 if status is None else int(status)


def refuse_flags(flag_values: flags.FlagValues, names: Sequence[str], where: str) -> None:
  """A usage error if any of the named flags was given (it has no meaning `where`)."""
  given = [f"--{name}" for name in names if flag_values[name].present]
  if given:
    raise errors.UsageError(f"{', '.join(given)}: not used {where}")


def only_words(words: Sequence[str], expected: int = 0, what: str = "") -> None:
  """Refuses words beyond the `expected` leading ones (a stray argument is a usage error)."""
  if len(words) > expected:
    extra = " ".join(words[expected:])
    raise errors.UsageError(f"unexpected argument {extra!r}" + (f"; expected {what}" if what else ""))
