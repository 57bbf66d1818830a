"""Tests for s3rec_jax.data.prepare: every source on tiny generated files, the core rules, bad input."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cli_runs
from s3rec_jax.data import dataset as data
from s3rec_jax.data import prepare
from s3rec_jax.data.sources import Interactions, codes_by_first_appearance, object_array

PROG = "s3rec-prepare"
NO_CORE = ["--min_user_interactions", "0", "--min_item_interactions", "0"]

# carol has 2 interactions, too few for a sequence; bob's kiwi and pear tie at
# time 10 and keep file order.
INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
bob\tapple\t5\t30
alice\tpear\t4\t10
bob\tkiwi\t3\t10
alice\tapple\t5\t20
bob\tpear\t1\t10
alice\tplum\t2\t5
carol\tkiwi\t1\t1
carol\tlime\t1\t2
alice\tfig\t3\t40
"""
# date is in no interaction; plum has no row; fig has empty cells.
ITEM = """item_id:token\ttags:token_seq\tmaker:token\tprice:float
pear\tsweet green\tAcme\t1.0
date\tsweet\tZed\t2.0
apple\tred  sweet\tAcme\t1.5
kiwi\tgreen\tBolt\t0.5
fig\t\t\t3.0
"""


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return path


def _snapshot(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
          for p in sorted(root.rglob("*"))}


def _read_outputs(directory: pathlib.Path, name: str) -> dict:
  return {
      "txt": (directory / f"{name}.txt").read_text(),
      "attrs": json.loads((directory / f"{name}_item2attributes.json").read_text()),
      "ids": json.loads((directory / f"{name}_ids.json").read_text()),
      "stats": json.loads((directory / f"{name}_stats.json").read_text()),
  }


def _fails(argv: list, root: pathlib.Path, capsys, *fragments: str) -> str:
  """Runs main(argv), which must exit 2 with one line naming `fragments` and write nothing."""
  before = _snapshot(root)
  assert prepare.main([str(a) for a in argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"{PROG}: error: ") and err.count("\n") == 1, err
  for fragment in fragments:
    assert fragment in err, (fragment, err)
  assert _snapshot(root) == before  # no output folder, no temp folder
  return err


def _atomic(tmp_path, inter=INTER, item=ITEM, extra=()):
  return ["atomic", "--inter", _write(tmp_path / "src" / "x.inter", inter),
          "--item", _write(tmp_path / "src" / "x.item", item), "--name", "X",
          "--output", tmp_path / "out"] + NO_CORE + list(extra)


# ----------------------------------------------------------------------------
# Each source, hand-checked.


def test_atomic_hand_checked(tmp_path, capsys):
  assert prepare.main([str(a) for a in _atomic(tmp_path)]) == 0
  printed = capsys.readouterr().out
  out = _read_outputs(tmp_path / "out", "X")
  # Users by first appearance (carol removed); items by first appearance in the output.
  assert out["txt"] == "1 1 2 3\n2 4 2 3 5\n"
  assert out["ids"] == {
      "format": "s3rec-jax ids v1", "users": ["bob", "alice"],
      "items": ["kiwi", "pear", "apple", "plum", "fig"],
      "attributes": [["tags", "green"], ["tags", "sweet"], ["tags", "red"],
                     ["maker", "Bolt"], ["maker", "Acme"]],
      "attribute_fields": {"tags": [1, 3], "maker": [4, 5]}}
  assert out["attrs"] == {"1": [1, 4], "2": [1, 2, 5], "3": [2, 3, 5], "4": [], "5": []}
  stats = out["stats"]
  sizes = (stats["users"], stats["items"], stats["interactions"], stats["attributes"])
  assert sizes == (2, 5, 7, 5)
  assert stats["avg_sequence_length"] == 3.5 and stats["avg_interactions_per_item"] == 1.4
  assert stats["attributes_per_field"] == {"tags": 3, "maker": 2}
  assert stats["avg_attributes_per_item"] == pytest.approx(1.6)
  assert stats["items_without_attributes"] == 2
  assert stats["sparsity"] == pytest.approx(0.3)
  assert stats["input"] == {"rows": 9, "users": 3, "items": 6}
  user_rule, item_rule = stats["removed"]
  assert user_rule["rule"] == "min_user_interactions" and user_rule["threshold"] == 3
  assert "raised to 3" in user_rule["note"]
  assert (user_rule["users"], user_rule["items"], user_rule["interactions"]) == (1, 1, 2)
  assert (item_rule["threshold"], item_rule["interactions"]) == (0, 0)
  assert stats["options"]["effective_min_user_interactions"] == 3
  assert stats["source"]["format"] == "atomic" and stats["source"]["time_field"] == "timestamp"
  assert "interactions              7" in printed and "wrote " in printed
  # The canonical reader takes the files as they are.
  ds = data.load_dataset(tmp_path / "out", "X", need_samples=False)
  assert ds.num_users == 2 and ds.max_item == 5 and ds.max_attr == 5
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
      "X.txt", "X_ids.json", "X_item2attributes.json", "X_stats.json"]


def test_atomic_field_order_and_no_time_column(tmp_path):
  inter = "".join(line.rsplit("\t", 1)[0] + "\n" for line in INTER.splitlines())
  prepared = prepare.prepare_atomic(
      _write(tmp_path / "x.inter", inter), _write(tmp_path / "x.item", ITEM), name="X",
      output=None, attribute_fields=["maker", "tags"],
      options=prepare.Options(min_user_interactions=0, min_item_interactions=0), log=_quiet)
  # File order: bob apple, kiwi, pear; alice pear, apple, plum, fig.
  assert prepared.item_ids == ("apple", "kiwi", "pear", "plum", "fig")
  assert prepared.attribute_fields == {"maker": (1, 2), "tags": (3, 5)}
  assert prepared.attributes[:2] == (("maker", "Acme"), ("maker", "Bolt"))
  assert prepared.stats["options"]["time_order"] == "source order"
  assert prepared.paths == ()


def _quiet(_):
  pass


MOVIES = [  # (user, movie, time)
    ("u1", "m_b", 3), ("u1", "m_a", 1), ("u2", "m_a", 2), ("u1", "m_c", 2),
    ("u2", "m_c", 5), ("u2", "m_b", 4), ("u3", "m_a", 1), ("u3", "m_d", 1), ("u3", "m_b", 0),
]
ITEMS = [  # (movie, genres, director, year)
    ("m_a", "Drama|Crime", "Lee", "1999"), ("m_b", "Crime", "Kim", "2001"),
    ("m_c", "", "Lee", "1999"), ("m_d", "Drama | Comedy|", "Roe", ""),
]


def _expected_table_result(prepared):
  # u3's m_a and m_d tie at time 1 and keep file order.
  assert [prepared.sequence(u).tolist() for u in (1, 2, 3)] == [[1, 2, 3], [1, 3, 2], [3, 1, 4]]
  assert prepared.user_ids == ("u1", "u2", "u3")
  assert prepared.item_ids == ("m_a", "m_c", "m_b", "m_d")
  assert prepared.attributes == (
      ("genres", "Drama"), ("genres", "Crime"), ("genres", "Comedy"),
      ("director", "Lee"), ("director", "Kim"), ("director", "Roe"),
      ("year", "1999"), ("year", "2001"))
  assert prepared.attribute_fields == {"genres": (1, 3), "director": (4, 6), "year": (7, 8)}
  attrs = [prepared.item_attributes(k).tolist() for k in (1, 2, 3, 4)]
  assert attrs == [[1, 2, 4, 7], [4, 7], [2, 5, 8], [1, 3, 6]]
  assert prepared.stats["attributes_per_field"] == {"genres": 3, "director": 3, "year": 2}
  assert prepared.stats["sparsity"] == pytest.approx(1 - 9 / 12)


def test_csv_hand_checked(tmp_path):
  interactions = _write(tmp_path / "ratings.csv", "user,movie,ts\n" + "".join(
      f"{u},{m},{t}\n" for u, m, t in MOVIES))
  items = _write(tmp_path / "movies.tsv", "movie\tgenres\tdirector\tyear\ttitle\n" + "".join(
      f"{m}\t{g}\t{d}\t{y}\t\"A, title\"\n" for m, g, d, y in ITEMS))
  prepared = prepare.prepare_table(
      interactions, user_col="user", item_col="movie", time_col="ts", items=items,
      attribute_cols=["genres", "director", "year"], list_sep="|", name="M",
      output=tmp_path / "out", options=prepare.Options(0, 0), log=_quiet)
  _expected_table_result(prepared)
  assert json.loads((tmp_path / "out" / "M_ids.json").read_text())["items"][0] == "m_a"


def test_parquet_matches_csv_and_reads_typed_columns(tmp_path):
  users, movies, times = zip(*MOVIES)
  pq.write_table(pa.table({"user": users, "movie": movies, "ts": times}), tmp_path / "r.parquet")
  movie, genres, director, year = zip(*ITEMS)
  pq.write_table(pa.table({"movie": movie, "genres": genres, "director": director, "year": year}),
                 tmp_path / "m.parquet")
  prepared = prepare.prepare_table(
      tmp_path / "r.parquet", user_col="user", item_col="movie", time_col="ts",
      items=tmp_path / "m.parquet", attribute_cols=["genres", "director", "year"], list_sep="|",
      name="M", output=None, options=prepare.Options(0, 0), log=_quiet)
  _expected_table_result(prepared)
  # Integer ids come out as strings; a list column gives its elements.
  pq.write_table(pa.table({"u": [7, 7, 7, 8, 8, 8], "i": [10, 20, 30, 30, 20, 10],
                           "t": pa.array([1, 2, 3, 1, 2, 3], pa.timestamp("s"))}),
                 tmp_path / "n.parquet")
  pq.write_table(pa.table({"i": [20, 10], "tags": [["x", "y"], []]}), tmp_path / "t.parquet")
  typed = prepare.prepare_table(tmp_path / "n.parquet", user_col="u", item_col="i", time_col="t",
                                items=tmp_path / "t.parquet", attribute_cols=["tags"], name="N",
                                output=None, options=prepare.Options(0, 0), log=_quiet)
  assert typed.user_ids == ("7", "8") and typed.item_ids == ("10", "20", "30")
  assert typed.attributes == (("tags", "x"), ("tags", "y"))
  assert [typed.item_attributes(k).tolist() for k in (1, 2, 3)] == [[], [1, 2], []]


# Amazon: a cascade with thresholds 3/3. Pass 1 removes item q (2 reviews), so
# D and F drop to 2 and go in pass 2, which leaves item r with 1 review; it
# goes, E drops to 2 and goes in pass 3. G's only review is rated 0.
REVIEWS = [  # (user, item, rating, time)
    ("A", "x", 5, 3), ("A", "y", 4, 1), ("A", "z", 3, 2),
    ("B", "x", 5, 1), ("B", "y", 4, 2), ("B", "z", 3, 3),
    ("D", "q", 5, 1), ("D", "r", 5, 2), ("D", "x", 5, 3),
    ("C", "x", 5, 2), ("C", "y", 4, 2), ("C", "z", 3, 1),
    ("E", "r", 5, 1), ("E", "x", 5, 2), ("E", "y", 5, 3),
    ("F", "q", 5, 1), ("F", "r", 5, 2), ("F", "z", 5, 3),
    ("G", "x", 0, 9),
]
META = [
    "{'asin': 'y', 'categories': [['Beauty', 'Acme']], 'brand': 'Old'}",
    json.dumps({"asin": "x", "title": "It's", "categories": [["Beauty", "Skin Care", "Face"],
                                                              ["Beauty", "Makeup", "Face"]],
                "brand": "Acme"}),
    "{'asin': 'unreviewed', 'categories': [['Beauty', 'Nail']], 'brand': 'Nope'}",
    "{'asin': 'q', 'categories': [['Beauty', 'Hair']], 'brand': 'Q'}",
    "",
    "{'asin': 'y', 'categories': [['Beauty', 'Acme']], 'brand': 'Bolt', 'related': {'a': ['x']}}",
]


def _review_lines(reviews=REVIEWS) -> str:
  return "".join(json.dumps({"reviewerID": u, "asin": i, "overall": float(r),
                             "unixReviewTime": t, "reviewText": "ok"}) + "\n"
                 for u, i, r, t in reviews)


def _write_maybe_gz(path: pathlib.Path, text: str) -> pathlib.Path:
  if path.suffix == ".gz":
    path.write_bytes(gzip.compress(text.encode()))
  else:
    path.write_text(text)
  return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_amazon_k_core_cascade_and_attributes(tmp_path, suffix):
  reviews = _write_maybe_gz(tmp_path / f"reviews.json{suffix}", _review_lines())
  meta = _write_maybe_gz(tmp_path / f"meta.json{suffix}", "\n".join(META) + "\n")
  argv = ["amazon", "--reviews", reviews, "--meta", meta, "--name", "Beauty", "--output",
          tmp_path / "out", "--min_user_interactions", "3", "--min_item_interactions", "3"]
  assert prepare.main([str(a) for a in argv]) == 0
  out = _read_outputs(tmp_path / "out", "Beauty")
  # A: y(1) z(2) x(3); B: x y z; C: z, then x and y tie at 2 (file order).
  assert out["txt"] == "1 1 2 3\n2 3 1 2\n3 2 3 1\n"
  assert out["ids"]["users"] == ["A", "B", "C"] and out["ids"]["items"] == ["y", "z", "x"]
  # Categories skip each list's first entry; a later record of y replaces the first.
  assert out["ids"]["attributes"] == [["categories", "Acme"], ["categories", "Skin Care"],
                                      ["categories", "Face"], ["categories", "Makeup"],
                                      ["brand", "Bolt"], ["brand", "Acme"]]
  assert out["ids"]["attribute_fields"] == {"categories": [1, 4], "brand": [5, 6]}
  assert out["attrs"] == {"1": [1, 5], "2": [], "3": [2, 3, 4, 6]}
  stats = out["stats"]
  assert stats["k_core_passes"] == 3
  removed = {r["rule"]: (r["users"], r["items"], r["interactions"]) for r in stats["removed"]}
  assert removed == {"overall > 0": (1, 0, 1), "min_user_interactions": (3, 0, 6),
                     "min_item_interactions": (0, 2, 3)}
  assert stats["input"] == {"rows": 19, "users": 7, "items": 5}
  assert (stats["users"], stats["items"], stats["interactions"]) == (3, 3, 9)
  assert stats["attributes"] == 6 and stats["reference_attributes"] == 5  # "Acme" twice here


def test_amazon_defaults_are_the_papers_5_core(tmp_path):
  rng = np.random.default_rng(0)
  rows = [(f"U{u}", f"I{i}", 5, int(rng.integers(0, 9))) for u in range(20)
          for i in rng.choice(9, size=int(rng.integers(4, 9)), replace=False)]
  reviews = _write_maybe_gz(tmp_path / "r.json", _review_lines(rows))
  prepared = prepare.prepare_amazon(reviews, name="B", output=None, log=_quiet)
  assert prepared.stats["options"]["min_user_interactions"] == 5
  assert min(np.diff(prepared.offsets)) >= 5
  assert np.bincount(prepared.items)[1:].min() >= 5
  assert prepared.attributes == () and prepared.stats["source"]["meta"] is None


# ----------------------------------------------------------------------------
# The core rules.


def _interactions(rows, times=True) -> Interactions:
  users, user_names = codes_by_first_appearance(object_array(str(r[0]) for r in rows))
  items, item_names = codes_by_first_appearance(object_array(str(r[1]) for r in rows))
  return Interactions(users=users, user_names=user_names, items=items, item_names=item_names,
                      times=np.array([r[2] for r in rows], np.int64) if times else None,
                      source="rows")


def _naive_k_core(rows, user_min, item_min):
  """The textbook loop: drop whatever is below a threshold until nothing is."""
  rows = list(rows)
  while True:
    users = {u: sum(r[0] == u for r in rows) for u, _, _ in rows}
    items = {i: sum(r[1] == i for r in rows) for _, i, _ in rows}
    kept = [r for r in rows if users[r[0]] >= user_min and items[r[1]] >= item_min]
    if len(kept) == len(rows):
      return kept
    rows = kept


@pytest.mark.parametrize("seed", range(4))
def test_k_core_matches_naive_fixed_point(seed):
  rng = np.random.default_rng(seed)
  rows = [(int(u), int(i), k) for k, (u, i) in
          enumerate(zip(rng.integers(0, 30, 400), rng.zipf(1.6, 400) % 40))]
  for user_min, item_min in ((5, 5), (3, 8), (0, 2)):
    expected = _naive_k_core(rows, max(user_min, 3), item_min)
    options = prepare.Options(user_min, item_min)
    if not expected:
      with pytest.raises(data.DataError, match="no interactions left after filtering"):
        prepare.build(_interactions(rows), name="K", options=options)
      continue
    prepared = prepare.build(_interactions(rows), name="K", options=options)
    got = sorted((int(prepared.user_ids[u - 1]), int(prepared.item_ids[i - 1]))
                 for u in range(1, len(prepared.user_ids) + 1) for i in prepared.sequence(u))
    assert got == sorted((u, i) for u, i, _ in expected)
    removed = sum(r["interactions"] for r in prepared.stats["removed"])
    assert removed == len(rows) - len(expected)


def test_dedup_keeps_the_earliest_and_ties_keep_source_order():
  rows = [("u", "a", 5), ("u", "b", 2), ("u", "a", 1), ("u", "c", 2), ("u", "d", 9), ("v", "a", 1),
          ("v", "b", 1), ("v", "c", 1)]
  kept = prepare.build(_interactions(rows), name="D", options=prepare.Options(0, 0))
  names = lambda p, u: [p.item_ids[i - 1] for i in p.sequence(u)]
  assert names(kept, 1) == ["a", "b", "c", "a", "d"] and names(kept, 2) == ["a", "b", "c"]
  deduped = prepare.build(_interactions(rows), name="D",
                          options=prepare.Options(0, 0, dedup=True))
  assert names(deduped, 1) == ["a", "b", "c", "d"]
  assert deduped.stats["removed"][0] == {"rule": "dedup", "users": 0, "items": 0,
                                         "interactions": 1}
  no_time = prepare.build(_interactions(rows, times=False), name="D",
                          options=prepare.Options(0, 0, dedup=True))
  assert names(no_time, 1) == ["a", "b", "c", "d"]


def test_min_attribute_count_drops_rare_values(tmp_path):
  prepared = prepare.prepare_atomic(
      _write(tmp_path / "x.inter", INTER), _write(tmp_path / "x.item", ITEM), name="X",
      output=None, options=prepare.Options(0, 0, min_attribute_count=2), log=_quiet)
  assert prepared.attributes == (("tags", "green"), ("tags", "sweet"), ("maker", "Acme"))
  assert [prepared.item_attributes(k).tolist() for k in range(1, 6)] == [
      [1], [1, 2, 3], [2, 3], [], []]


def test_existing_output_keeps_other_files_and_drops_a_stale_sample(tmp_path, capsys):
  out = tmp_path / "out"
  _write(out / "other.txt", "keep me")
  _write(out / "X_sample.txt", "1 2 3\n")
  _write(out / "X.txt", "old")
  assert prepare.main([str(a) for a in _atomic(tmp_path)]) == 0
  assert f"removed {out / 'X_sample.txt'}" in capsys.readouterr().out
  assert (out / "other.txt").read_text() == "keep me" and not (out / "X_sample.txt").exists()
  assert (out / "X.txt").read_text().startswith("1 1 2 3")
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
  def refuse(*_):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(prepare.os, "rename", refuse)
  with pytest.raises(data.DataError, match="No space left"):
    prepare.prepare_atomic(_write(tmp_path / "s" / "x.inter", INTER), name="X",
                           output=tmp_path / "out", options=prepare.Options(0, 0), log=_quiet)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


# ----------------------------------------------------------------------------
# Bad input: one line naming file, line and column; exit 2; nothing written.


def test_missing_file(tmp_path, capsys):
  _fails(["atomic", "--inter", tmp_path / "nope.inter", "--name", "X", "--output",
          tmp_path / "out"], tmp_path, capsys, f"{tmp_path / 'nope.inter'}: file not found")


def test_missing_column_names_the_columns(tmp_path, capsys):
  _fails(_atomic(tmp_path, extra=["--user_field", "uid"]), tmp_path, capsys,
         "x.inter:1: no column 'uid'", "'user_id:token', 'item_id:token', 'rating:float'")
  csv = _write(tmp_path / "r.csv", "user,movie\nu1,m1\n")
  _fails(["csv", "--interactions", csv, "--user_col", "user", "--item_col", "item", "--name", "X",
          "--output", tmp_path / "out"], tmp_path, capsys,
         "r.csv:1: no column 'item' (--item_col); columns are 'user', 'movie'")


def test_non_numeric_timestamp(tmp_path, capsys):
  inter = INTER.replace("alice\tapple\t5\t20", "alice\tapple\t5\tyesterday")
  _fails(_atomic(tmp_path, inter=inter), tmp_path, capsys,
         "x.inter:5: column 'timestamp:float': time 'yesterday' is not a number")
  pq.write_table(pa.table({"u": ["a", "b"], "i": ["x", "y"], "t": ["1", "2.5e"]}),
                 tmp_path / "r.parquet")
  _fails(["csv", "--interactions", tmp_path / "r.parquet", "--user_col", "u", "--item_col", "i",
          "--time_col", "t", "--name", "X", "--output", tmp_path / "out"], tmp_path, capsys,
         "r.parquet: row 2: column 't': time '2.5e' is not a number")


def test_header_type_recbole_does_not_define(tmp_path, capsys):
  inter = INTER.replace("rating:float", "rating:floot")
  _fails(_atomic(tmp_path, inter=inter), tmp_path, capsys,
         "x.inter:1: column 'rating:floot' has type 'floot'; expected one of token, token_seq, "
         "float, float_seq")
  _fails(_atomic(tmp_path, item=ITEM.replace("price:float", "price")), tmp_path, capsys,
         "x.item:1: column 'price' has no type")


def test_attribute_field_the_item_file_lacks(tmp_path, capsys):
  _fails(_atomic(tmp_path, extra=["--attribute_fields", "tags,colour"]), tmp_path, capsys,
         "x.item:1: no field 'colour' (--attribute_fields)", "'tags', 'maker'")
  _fails(_atomic(tmp_path, extra=["--attribute_fields", "price"]), tmp_path, capsys,
         "x.item:1: column 'price:float' has type 'float'; expected token or token_seq")


def test_empty_id_cell(tmp_path, capsys):
  inter = INTER.replace("bob\tkiwi", "\tkiwi")
  _fails(_atomic(tmp_path, inter=inter), tmp_path, capsys,
         "x.inter:4: column 'user_id:token' is empty; expected a user id")
  _fails(_atomic(tmp_path, item=ITEM.replace("kiwi\tgreen", " \tgreen")), tmp_path, capsys,
         "x.item:5: column 'item_id:token' is empty; expected an item id")


def test_other_malformed_rows(tmp_path, capsys):
  _fails(_atomic(tmp_path, inter=INTER.replace("alice\tplum\t2\t5", "alice\tplum\t2")), tmp_path,
         capsys, "x.inter:7: 3 columns in 'alice\\tplum\\t2'; expected 4")
  _fails(_atomic(tmp_path, item=ITEM + "pear\tx\tAcme\t1.0\n"), tmp_path, capsys,
         "x.item:7: column 'item_id:token': 'pear' appears again (first on line 2)")


def test_filtering_empties_the_dataset(tmp_path, capsys):
  argv = _atomic(tmp_path)
  argv[argv.index("--min_user_interactions") + 1] = "5"
  _fails(argv, tmp_path, capsys, "x.inter: no interactions left after filtering",
         "users need at least 5 interactions (--min_user_interactions 5",
         "min_user_interactions removed 9 interactions, 3 users")
  reviews = _write(tmp_path / "r.json", _review_lines([("A", "x", 0, 1)]))
  _fails(["amazon", "--reviews", reviews, "--name", "B", "--output", tmp_path / "out"], tmp_path,
         capsys, "r.json: no interactions left after the rule overall > 0")


@pytest.mark.parametrize("which", ["reviews", "meta"])
def test_malformed_amazon_line(tmp_path, capsys, which):
  reviews_text, meta_text = _review_lines(), "\n".join(META) + "\n"
  if which == "reviews":
    reviews_text = reviews_text.replace('"asin": "z"', '"asin": z"', 1)
  else:
    meta_text = meta_text.replace('"brand": "Acme"}', '"brand": "Acme"')
  reviews = _write_maybe_gz(tmp_path / "r.json.gz", reviews_text)
  meta = _write(tmp_path / "m.json", meta_text)
  line = 3 if which == "reviews" else 2
  path = reviews if which == "reviews" else meta
  _fails(["amazon", "--reviews", reviews, "--meta", meta, "--name", "B", "--output",
          tmp_path / "out"], tmp_path, capsys, f"{path}:{line}: malformed line (",
         "expected one JSON object or Python dict literal per line")


def test_amazon_bad_fields(tmp_path, capsys):
  rows = _review_lines().replace('"unixReviewTime": 2', '"unixReviewTime": "soon"', 1)
  _fails(["amazon", "--reviews", _write(tmp_path / "r.json", rows), "--name", "B", "--output",
          tmp_path / "out"], tmp_path, capsys,
         "r.json:3: field 'unixReviewTime' is 'soon'; expected an integer unix time")
  _fails(["amazon", "--reviews", _write(tmp_path / "r.json", '{"asin": "x"}\n'), "--name", "B",
          "--output", tmp_path / "out"], tmp_path, capsys, "r.json:1: no 'reviewerID' field")
  _fails(["amazon", "--reviews", _write(tmp_path / "r.json", _review_lines()), "--meta",
          _write(tmp_path / "m.json", META[0]), "--attribute_fields", "colour", "--name", "B",
          "--output", tmp_path / "out"], tmp_path, capsys, "no attribute field 'colour'")


@pytest.mark.parametrize("argv, expected", [
    (["--name", "X", "--output", "o"], "name a source: atomic, csv, amazon"),
    (["parquet", "--name", "X", "--output", "o"],
     "unknown source 'parquet'; expected one of atomic, csv, amazon"),
    (["csv", "--interactions", "r.csv", "--user_col", "u", "--item_col", "i", "--reviews", "r",
      "--name", "X", "--output", "o"], "--reviews: not used with `s3rec-prepare csv`"),
    (["amazon", "--reviews", "r", "--inter", "x", "--list_sep", "|", "--name", "X", "--output",
      "o"], "--inter, --list_sep: not used with `s3rec-prepare amazon`"),
    (["atomic", "--inter", "x.inter", "--output", "o"],
     "--name is required with `s3rec-prepare atomic`"),
    (["csv", "--interactions", "r.csv", "--name", "X", "--output", "o"],
     "--user_col, --item_col are required with `s3rec-prepare csv`"),
    (["amazon", "--name", "X", "--output", "o"],
     "--reviews is required with `s3rec-prepare amazon`"),
    (["atomic", "--inter", "x", "--name", "X", "--output", "o", "--min_user_interactoins", "3"],
     "unknown flag --min_user_interactoins; did you mean --min_user_interactions?"),
    (["atomic", "--intr", "x", "--name", "X", "--output", "o"],
     "unknown flag --intr; did you mean --inter?"),
    (["atomic", "x.inter", "--inter", "x", "--name", "X", "--output", "o"],
     "unexpected argument 'x.inter'"),
    (["atomic", "--inter", "x", "--name", "X", "--output", "o", "--min_item_interactions", "-1"],
     "--min_item_interactions=-1: '-1' is not an integer >= 0"),
    (["atomic", "--inter", "x", "--name", "X", "--output", "o", "--min_attribute_count=two"],
     "--min_attribute_count=two: 'two' is not an integer >= 0"),
    (["atomic", "--inter", "x", "--name", "X", "--output", "o", "--attribute_fields", "a"],
     "--attribute_fields needs --item"),
    (["amazon", "--reviews", "r", "--name", "X", "--output", "o", "--attribute_fields", "brand"],
     "--attribute_fields needs --meta"),
    (["csv", "--interactions", "r.csv", "--user_col", "u", "--item_col", "i", "--items", "m.csv",
      "--name", "X", "--output", "o"], "--items needs --attribute_cols"),
    (["csv", "--interactions", "r.csv", "--user_col", "u", "--item_col", "i", "--item_key_col",
      "k", "--name", "X", "--output", "o"], "--attribute_cols and --item_key_col need --items"),
])
def test_bad_usage_is_one_line_and_returns_2(tmp_path, capsys, monkeypatch, argv, expected):
  monkeypatch.chdir(tmp_path)
  assert prepare.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"{PROG}: error: ") and expected in err, err
  assert err.endswith(f"(see {PROG} --help)\n") and len(err.splitlines()) == 1, err
  assert not list(tmp_path.iterdir())  # nothing written


def test_help_lists_every_source_and_its_flags(capsys):
  assert prepare.main(["--help"]) == 0
  captured = capsys.readouterr()
  assert captured.err == ""
  out = captured.out
  assert out.startswith(f"{PROG} SOURCE")
  for section in ("every source:", "atomic source:", "csv source:", "amazon source:",
                  "atomic and amazon sources:"):
    assert f"\n{section}\n" in out, section
  for source in prepare.SOURCES:
    assert f"  {source} " in out, source
  for flag in ("--name", "--output", "--[no]dedup", "--min_user_interactions", "--inter",
               "--attribute_fields", "--interactions", "--attribute_cols", "--delimiter",
               "--reviews", "--rating_above"):
    assert f"  {flag}\n" in out, flag
  assert "(default: 5)" in out and "(default: user_id)" in out
  assert prepare.main(["atomic", "--intr", "x", "-h"]) == 0  # help wins over a mistake


def test_flag_forms_and_lists(tmp_path, capsys):
  # --flag=value, --noflag, a tab given as 'tab', and empty entries of a list are dropped.
  interactions = _write(tmp_path / "r.txt", "user\tmovie\tts\n" + "".join(
      f"{u}\t{m}\t{t}\n" for u, m, t in MOVIES))
  items = _write(tmp_path / "m.txt", "movie\tgenres\tdirector\n" + "".join(
      f"{m}\t{g}\t{d}\n" for m, g, d, _ in ITEMS))
  argv = ["csv", f"--interactions={interactions}", "--user_col=user", "--item_col", "movie",
          "--time_col=ts", "--items", items, "--attribute_cols=genres,,director,",
          "--list_sep=|", "--delimiter", "tab", "--nodedup", "--name=M",
          f"--output={tmp_path / 'out'}", "--min_user_interactions=0",
          "--min_item_interactions", "0"]
  assert prepare.main([str(a) for a in argv]) == 0
  stats = json.loads((tmp_path / "out" / "M_stats.json").read_text())
  assert stats["source"]["attribute_cols"] == ["genres", "director"]
  assert stats["source"]["delimiter"] == "\t" and stats["options"]["dedup"] is False
  assert stats["attributes_per_field"] == {"genres": 3, "director": 3}
  capsys.readouterr()
  # A second run in the same process starts from the defaults (no --dedup left over).
  assert prepare.main([str(a) for a in _atomic(tmp_path, extra=["--dedup"])]) == 0
  assert prepare.main([str(a) for a in _atomic(tmp_path)]) == 0
  assert json.loads((tmp_path / "out" / "X_stats.json").read_text())["options"]["dedup"] is False


def test_user_errors_are_one_line_without_the_help_hint(tmp_path, capsys):
  err = _fails(_atomic(tmp_path, extra=["--name", "synthetic"]), tmp_path, capsys,
               "built-in dataset")
  assert "--help" not in err


def test_cli_subprocess_one_line_no_traceback(tmp_path):
  inter = _write(tmp_path / "x.inter", INTER.replace("rating:float", "rating:floot"))
  result = subprocess.run([sys.executable, "-m", "s3rec_jax.data.prepare", "atomic", "--inter",
                           str(inter), "--name", "X", "--output", str(tmp_path / "out")],
                          cwd=cli_runs.REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.startswith(f"{PROG}: error: {inter}:1: column 'rating:floot'")
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------
# End to end: prepare, then train.py on the result.


def _generated_rows(seed=0, num_users=70, num_items=45):
  rng = np.random.default_rng(seed)
  rows = []
  for u in range(num_users):
    for k, i in enumerate(rng.choice(num_items, size=int(rng.integers(4, 9)), replace=False)):
      rows.append((f"user{u:03d}", f"item-{i}", 1_600_000_000 + 60 * k))
  order = rng.permutation(len(rows))  # files need not be sorted
  return [rows[k] for k in order]


def _train(tmp_path, data_dir, name, **overrides):
  settings = {k: v for k, v in cli_runs.TINY.items() if not k.startswith("synthetic.")}
  settings.update(overrides)
  workdir = tmp_path / "run"
  command = ([sys.executable, os.path.join(cli_runs.REPO, "train.py"),
              "--config=" + os.path.join(cli_runs.REPO, "configs", "default.py"),
              f"--workdir={workdir}", f"--config.dataset={name}", f"--config.data_dir={data_dir}"]
             + [f"--config.{k}={v}" for k, v in settings.items()])
  result = subprocess.run(command, env=cli_runs.env(2), cwd=cli_runs.REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  results = cli_runs.read_results(str(workdir))
  assert {"HR@1", "NDCG@10", "MRR"} <= set(results["test"]), results["test"]
  ids = json.loads((workdir / "ids.json").read_text())
  assert ids == json.loads((data_dir / f"{name}_ids.json").read_text())
  stats = json.loads((data_dir / f"{name}_stats.json").read_text())
  run = json.loads((workdir / "run.json").read_text())
  assert stats["attributes"] > 0
  assert (run["max_item"], run["attribute_size"]) == (stats["items"], stats["attributes"] + 1)
  # The run says where and with what it ran (2 forced host devices here).
  assert run["made_by"]["devices"] == "2 x cpu"
  assert {"commit", "cpu", "jax", "flax", "optax"} <= set(run["made_by"])


@pytest.mark.slow
def test_end_to_end_atomic(tmp_path):
  rows = _generated_rows(seed=1)
  inter = _write(tmp_path / "g.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
                 + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
  item = _write(tmp_path / "g.item", "item_id:token\tgenre:token_seq\tmaker:token\n" + "".join(
      f"item-{i}\tg{i % 4} g{i % 7}\tm{i % 5}\n" for i in range(45)))
  assert prepare.main(["atomic", "--inter", str(inter), "--item", str(item), "--name", "Gen",
                       "--output", str(tmp_path / "data"), "--min_user_interactions", "4",
                       "--min_item_interactions", "2"]) == 0
  _train(tmp_path, tmp_path / "data", "Gen")  # pre-training reads the attributes too


@pytest.mark.slow
def test_end_to_end_csv(tmp_path):
  rows = _generated_rows(seed=2)
  interactions = _write(tmp_path / "g.csv", "user,item,time\n" + "".join(
      f"{u},{i},{t}\n" for u, i, t in rows))
  items = _write(tmp_path / "items.csv", "item,genres,maker,decade\n" + "".join(
      f"item-{i},g{i % 4}|g{i % 7},m{i % 5},{1950 + 10 * (i % 6)}\n" for i in range(45)))
  assert prepare.main(["csv", "--interactions", str(interactions), "--user_col", "user",
                       "--item_col", "item", "--time_col", "time", "--items", str(items),
                       "--attribute_cols", "genres,maker,decade", "--list_sep", "|",
                       "--name", "Gen", "--output", str(tmp_path / "data"),
                       "--min_user_interactions", "4", "--min_item_interactions", "2"]) == 0
  # Fine-tuning only: the atomic test covers pre-training, and this saves its compile time.
  _train(tmp_path, tmp_path / "data", "Gen", **{"pretrain.epochs": 0})
