"""core/command.py: the one command-line idiom (own flag set, one-line errors, exit status)."""

from absl import flags
import pytest

from s3rec_jax.core import command
from s3rec_jax.core import errors


def _command():
  flag_values = command.new_flags()
  flags.DEFINE_string("output", None, "Where to write.", flag_values=flag_values,
                      module_name="output", required=True)
  flags.DEFINE_integer("count", 3, "How many.", flag_values=flag_values, module_name="input")
  flags.DEFINE_bool("fast", False, "Go fast.", flag_values=flag_values, module_name="input")
  flags.DEFINE_multi_string("item", [], "An item; repeat.", flag_values=flag_values,
                            module_name="input")
  seen = []

  def body(words):
    seen.append((list(words), flag_values.output, flag_values.count, flag_values.fast,
                 list(flag_values.item)))
    if words and words[0] == "usage":
      raise errors.UsageError("--count and --fast do not go together")
    if words and words[0] == "bad":
      raise errors.UserError("data.txt:3: expected an integer")
    if words and words[0] == "status":
      return 7
    return None

  return flag_values, body, seen


def test_flags_and_words_reach_the_body_and_a_second_run_starts_from_defaults():
  flag_values, body, seen = _command()
  assert command.run("prog", flag_values, body,
                     ["a", "--output", "o", "--count=5", "--fast", "--item=x", "--item", "y",
                      "b"]) == 0
  assert command.run("prog", flag_values, body, ["--output=p"]) == 0
  assert seen == [(["a", "b"], "o", 5, True, ["x", "y"]), ([], "p", 3, False, [])]
  assert command.run("prog", flag_values, body, ["status", "--output=o"]) == 7


@pytest.mark.parametrize("argv, expected", [
    ([], "prog: error: --output is required (see prog --help)"),
    (["--output=o", "--cont=2"], "prog: error: unknown flag --cont; did you mean --count? "
                                 "(see prog --help)"),
    (["--output=o", "--count=two"], "--count"),
    (["usage", "--output=o"], "prog: error: --count and --fast do not go together "
                              "(see prog --help)"),
    (["bad", "--output=o"], "prog: error: data.txt:3: expected an integer"),
])
def test_every_mistake_is_one_line_and_status_2(capsys, argv, expected):
  flag_values, body, _ = _command()
  assert command.run("prog", flag_values, body, argv) == 2
  captured = capsys.readouterr()
  lines = captured.err.splitlines()
  assert len(lines) == 1 and expected in lines[0], captured.err
  assert lines[0].startswith("prog: error: ") and captured.out == ""


def test_help_lists_sections_in_definition_order_and_wins_over_mistakes(capsys):
  flag_values, body, seen = _command()
  assert command.run("prog", flag_values, body, ["--nosuch", "-h"], doc="Does things.") == 0
  out = capsys.readouterr().out
  assert out.startswith("Does things.\n\noutput:\n  --output\n")
  assert out.index("output:") < out.index("input:") < out.index("--[no]help, -h")
  assert "  --count\n      How many. (default: 3)" in out and "--[no]fast" in out
  assert "--flagfile" not in out and not seen


def test_put_in_section_moves_a_flag():
  flag_values, _, _ = _command()
  command.put_in_section(flag_values, "count", "output")
  text = command.usage("prog", flag_values)
  assert text.index("--count") < text.index("input:") and text.count("--count") == 1


def test_refuse_flags_and_only_words():
  flag_values, _, _ = _command()
  flag_values(["prog", "--output=o", "--fast"])
  command.refuse_flags(flag_values, ["count"], "here")
  with pytest.raises(errors.UsageError, match=r"--fast: not used with list"):
    command.refuse_flags(flag_values, ["count", "fast"], "with list")
  command.only_words(["a"], 1)
  with pytest.raises(errors.UsageError, match=r"unexpected argument 'b c'; expected one NAME"):
    command.only_words(["a", "b", "c"], 1, "one NAME")
