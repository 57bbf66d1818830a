"""s3rec-prepare reads its tables in blocks: the files do not depend on the block size."""

import bz2
import gzip
import lzma
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from s3rec_jax.data import prepare
from s3rec_jax.data.dataset import DataError
from s3rec_jax.data.sources import delimited
from s3rec_jax.data.sources import table

PROG = "s3rec-prepare"
NO_CORE = prepare.Options(0, 0)
SMALL = 150  # bytes a block: dozens of blocks for the tables below


def _quiet(_):
  pass


def _rows(num_rows=600, seed=0):
  """(user, item, time) rows: repeated ids, tied times, and float times only near the end."""
  rng = np.random.default_rng(seed)
  users = [f"user{k:03d}" for k in rng.integers(0, 40, num_rows)]
  items = [f"it{k}" for k in rng.zipf(1.5, num_rows) % 90]
  times = [str(t) for t in rng.integers(0, 50, num_rows)]
  for k in range(num_rows - 20, num_rows, 3):
    times[k] = f"{times[k]}.5"  # an int64 column for most blocks, float64 overall
  return list(zip(users, items, times))


def _item_rows():
  return [(f"it{k}", "|".join(f"g{(k * j) % 7}" for j in range(k % 4)), f"maker{k % 5}")
          for k in range(90) if k % 11]


def _write_tables(folder: pathlib.Path, suffix: str = "") -> tuple[pathlib.Path, pathlib.Path]:
  text = "ts,user,item,extra\n" + "".join(f"{t},{u},{i},x\n" for u, i, t in _rows())
  items = "item\tgenres\tmaker\n" + "".join(f"{i}\t{g}\t{m}\n" for i, g, m in _item_rows())
  opener = {"": open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix]
  folder.mkdir(parents=True, exist_ok=True)
  with opener(folder / f"r.csv{suffix}", "wt") as f:
    f.write(text + "\n\n")  # blank lines at the end are not rows
  with opener(folder / f"m.tsv{suffix}", "wt") as f:
    f.write(items)
  return folder / f"r.csv{suffix}", folder / f"m.tsv{suffix}"


def _prepare_table(interactions, items, output, block_bytes=None):
  return prepare.prepare_table(
      interactions, user_col="user", item_col="item", time_col="ts", items=items,
      item_key_col="item", attribute_cols=["genres", "maker"], list_sep="|", name="B",
      output=output, options=NO_CORE, log=_quiet, block_bytes=block_bytes)


def _files(folder: pathlib.Path) -> dict:
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _counting_blocks(monkeypatch) -> list:
  """Records the string bytes of every block of ids given to an id coder."""
  seen = []
  add = delimited.IdCoder.add

  def spy(self, block, column, what):
    seen.append(pc.sum(pc.binary_length(block.columns[column])).as_py() or 0)
    return add(self, block, column, what)

  monkeypatch.setattr(delimited.IdCoder, "add", spy)
  return seen


def _counting_groups(monkeypatch) -> list:
  """Records the number of blocks and the string bytes of every group an id coder encodes."""
  groups = []
  flush = delimited.IdCoder.flush

  def spy(self):
    if self._queued:  # pylint: disable=protected-access
      groups.append((len(self._queued),  # pylint: disable=protected-access
                     sum(pc.sum(pc.binary_length(a)).as_py() or 0
                         for a in self._queued)))  # pylint: disable=protected-access
    return flush(self)

  monkeypatch.setattr(delimited.IdCoder, "flush", spy)
  return groups


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz"])
def test_text_in_small_blocks_writes_the_same_files(tmp_path, monkeypatch, suffix):
  interactions, items = _write_tables(tmp_path / "src", suffix)
  whole = _prepare_table(interactions, items, tmp_path / "whole")
  seen = _counting_blocks(monkeypatch)
  blocks = _prepare_table(interactions, items, tmp_path / "blocks", block_bytes=SMALL)
  assert len(seen) > 40  # users and items of many interaction blocks, keys of item blocks
  assert _files(tmp_path / "blocks") == _files(tmp_path / "whole")
  assert blocks.stats["input"] == {"rows": 600, "users": 40, "items": whole.stats["input"]["items"]}
  assert whole.stats["attributes_per_field"]["genres"] > 0


def test_no_block_holds_more_than_the_block_size(tmp_path, monkeypatch):
  interactions, items = _write_tables(tmp_path / "src")
  _prepare_table(interactions, items, tmp_path / "whole")
  records = table.read_interactions(interactions, user_col="user", item_col="item", time_col="ts")
  monkeypatch.setattr(delimited, "BLOCK_BYTES", SMALL)
  seen = _counting_blocks(monkeypatch)
  groups = _counting_groups(monkeypatch)
  _prepare_table(interactions, items, tmp_path / "blocks")
  # A block is cut at a line end at most BLOCK_BYTES in: its cells hold fewer bytes.
  assert len(seen) > 40 and max(seen) < SMALL
  # Far below GROUP_BYTES: each column (users, items, item keys) is one group of many blocks.
  assert len(groups) == 3 and min(blocks for blocks, _ in groups) >= 10
  assert _files(tmp_path / "blocks") == _files(tmp_path / "whole")
  again = table.read_interactions(interactions, user_col="user", item_col="item", time_col="ts")
  for field in ("users", "user_names", "items", "item_names", "times"):
    np.testing.assert_array_equal(getattr(again, field), getattr(records, field))
  assert again.times.dtype == np.float64 and again.users.dtype == np.int32   # codes fit
  assert again.user_names.dtype == object


def test_ids_beyond_one_group_are_encoded_group_by_group(tmp_path, monkeypatch):
  """More id text than one pyarrow array may hold, in small: GROUP_BYTES lowered to 400 bytes.

  No dictionary is built over more than a group (plus one block), and the
  codes, names and files are those of one group.
  """
  interactions, items = _write_tables(tmp_path / "src")
  _prepare_table(interactions, items, tmp_path / "whole")
  monkeypatch.setattr(delimited, "GROUP_BYTES", 400)
  groups = _counting_groups(monkeypatch)
  _prepare_table(interactions, items, tmp_path / "groups", block_bytes=SMALL)
  assert len(groups) >= 20
  assert max(text for _, text in groups) < 400 + SMALL
  assert _files(tmp_path / "groups") == _files(tmp_path / "whole")


def test_atomic_in_small_blocks_writes_the_same_files(tmp_path):
  inter = tmp_path / "x.inter"
  inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
      f"{u}\t{i}\t{t}\n" for u, i, t in _rows()))
  item = tmp_path / "x.item"
  item.write_text("item_id:token\tgenres:token_seq\tmaker:token\n" + "".join(
      f"{i}\t{g.replace('|', ' ')}\t{m}\n" for i, g, m in _item_rows()))
  for block_bytes, out in ((None, "whole"), (SMALL, "blocks")):
    prepare.prepare_atomic(inter, item, name="A", output=tmp_path / out, options=NO_CORE,
                           log=_quiet, block_bytes=block_bytes)
  assert _files(tmp_path / "blocks") == _files(tmp_path / "whole")


def _parquet_tables(tmp_path):
  users, items, times = zip(*_rows())
  interactions = pa.table({"user": users, "item": items,
                           "ts": pa.array([float(t) for t in times], pa.float64())})
  item, genres, maker = zip(*_item_rows())
  item_table = pa.table({"item": item, "genres": genres, "maker": maker})
  return interactions, item_table


def test_parquet_file_and_folder_in_small_batches(tmp_path, capsys):
  interactions, items = _parquet_tables(tmp_path)
  pq.write_table(interactions, tmp_path / "r.parquet", row_group_size=100)
  pq.write_table(items, tmp_path / "m.parquet")
  _prepare_table(tmp_path / "r.parquet", tmp_path / "m.parquet", tmp_path / "whole")
  _prepare_table(tmp_path / "r.parquet", tmp_path / "m.parquet", tmp_path / "blocks",
                 block_bytes=SMALL)
  assert _files(tmp_path / "blocks") == _files(tmp_path / "whole")
  # A folder as Spark writes it: parts in name order, bookkeeping files beside them.
  parts = tmp_path / "r_parts"
  parts.mkdir()
  for k, start in enumerate(range(0, interactions.num_rows, 170)):
    name = f"part-{k:05d}-5a1c0de7-c000.snappy.parquet"
    pq.write_table(interactions.slice(start, 170), parts / name)
    (parts / f".{name}.crc").write_bytes(b"\0crc")
  (parts / "_SUCCESS").write_bytes(b"")
  (parts / "_committed_123").write_text("{}")
  (parts / "._SUCCESS.crc").write_bytes(b"\0crc")
  argv = ["csv", "--interactions", f"{parts}/", "--user_col", "user", "--item_col", "item",
          "--time_col", "ts", "--items", tmp_path / "m.parquet", "--attribute_cols",
          "genres,maker", "--list_sep", "|", "--name", "B", "--output", tmp_path / "folder",
          "--min_user_interactions", "0", "--min_item_interactions", "0"]
  assert prepare.main([str(a) for a in argv]) == 0
  capsys.readouterr()
  folder, whole = _files(tmp_path / "folder"), _files(tmp_path / "whole")
  for name in ("B.txt", "B_item2attributes.json", "B_ids.json"):
    assert folder[name] == whole[name]


def test_folder_errors_name_the_file(tmp_path):
  interactions, _ = _parquet_tables(tmp_path)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "_SUCCESS").write_bytes(b"")
  with pytest.raises(DataError, match=r"empty: no data files in this folder; expected the "
                                      r"interactions table as Parquet files"):
    table.read_interactions(empty, user_col="user", item_col="item")
  parts = tmp_path / "parts"
  parts.mkdir()
  pq.write_table(interactions.slice(0, 300), parts / "part-00000.parquet")
  pq.write_table(interactions.slice(300).rename_columns(["uid", "item", "ts"]),
                 parts / "part-00001.parquet")
  with pytest.raises(DataError, match=r"part-00001.parquet: no column 'user' \(--user_col\)"):
    table.read_interactions(parts, user_col="user", item_col="item")
  (parts / "part-00001.parquet").write_text("not parquet")
  with pytest.raises(DataError, match=r"part-00001.parquet: cannot read as Parquet"):
    table.read_interactions(parts, user_col="user", item_col="item")
  pq.write_table(interactions.slice(300).set_column(0, "user", pa.array(
      ["ok"] * 5 + [""] + ["ok"] * 294)), parts / "part-00001.parquet")
  with pytest.raises(DataError, match=r"part-00001.parquet: row 6: column 'user' is empty"):
    table.read_interactions(parts, user_col="user", item_col="item", block_bytes=SMALL)


# ----------------------------------------------------------------------------
# Bad input far into the file: the file's line, not the block's.


def _csv(tmp_path, lines: dict[int, str], extra: str = "") -> pathlib.Path:
  """The interactions of _rows() with some lines (1 = the header) replaced."""
  text = ["user,item,ts\n"] + [f"{u},{i},{t}\n" for u, i, t in _rows()]
  for line, replacement in lines.items():
    text[line - 1] = replacement
  path = tmp_path / "r.csv"
  path.write_text("".join(text) + extra)
  return path


@pytest.mark.parametrize("lines,expected", [
    ({401: ",it3,5\n"}, "r.csv:401: column 'user' is empty; expected a user id"),
    ({402: "u1, \t,5\n"}, "r.csv:402: column 'item' is empty; expected an item id"),
    ({403: "u1,it3\n"}, "r.csv:403: 2 columns in 'u1,it3'; expected 3, as in the header"),
    ({404: "u1,it3,soon\n"}, "r.csv:404: column 'ts': time 'soon' is not a number"),
    ({405: "\n"}, "r.csv:405: column 'user' is empty"),  # a blank line with rows after it
])
def test_errors_give_the_line_in_the_file(tmp_path, lines, expected):
  path = _csv(tmp_path, lines)
  for block_bytes in (None, SMALL):
    with pytest.raises(DataError) as raised:
      table.read_interactions(path, user_col="user", item_col="item", time_col="ts",
                              block_bytes=block_bytes)
    assert f"{tmp_path}/{expected}" in str(raised.value), (block_bytes, str(raised.value))


def test_blank_lines_at_the_end_are_not_rows(tmp_path):
  path = _csv(tmp_path, {}, extra="\n" * 400)  # blocks of nothing but blank lines
  records = table.read_interactions(path, user_col="user", item_col="item", block_bytes=SMALL)
  assert records.num_rows == 600


@pytest.mark.parametrize("group_bytes", [None, 300])
def test_repeated_item_in_a_later_block(tmp_path, monkeypatch, group_bytes):
  if group_bytes is not None:
    monkeypatch.setattr(delimited, "GROUP_BYTES", group_bytes)
  rows = _item_rows()
  path = tmp_path / "m.tsv"
  path.write_text("item\tgenres\tmaker\n" + "".join(f"{i}\t{g}\t{m}\n" for i, g, m in rows)
                  + f"{rows[2][0]}\tx\ty\n")
  with pytest.raises(DataError, match=rf"m.tsv:{len(rows) + 2}: column 'item': 'it3' appears "
                                      rf"again \(first on line 4\); expected each item once"):
    table.read_items(path, item_key_col="item", attribute_cols=["genres"], block_bytes=SMALL)


def test_repeated_item_in_a_later_file_of_a_folder(tmp_path):
  _, items = _parquet_tables(tmp_path)
  parts = tmp_path / "items"
  parts.mkdir()
  pq.write_table(items.slice(0, 40), parts / "part-0.parquet")
  pq.write_table(items.slice(40), parts / "part-1.parquet")
  records = table.read_items(parts, item_key_col="item", attribute_cols=["genres", "maker"],
                             list_sep="|", block_bytes=SMALL)
  assert records.item_names.tolist() == items.column("item").to_pylist()
  pq.write_table(pa.concat_tables([items.slice(40), items.slice(7, 1)]), parts / "part-1.parquet")
  with pytest.raises(DataError, match=rf"part-1.parquet: row {items.num_rows - 39}: column "
                                      rf"'item': 'it8' appears again \(first on row 8 of "
                                      rf"{parts / 'part-0.parquet'}\)"):
    table.read_items(parts, item_key_col="item", attribute_cols=["genres"], block_bytes=SMALL)


def test_a_line_longer_than_a_block(tmp_path):
  path = _csv(tmp_path, {300: "u1," + "i" * 400 + ",5\n"})
  with pytest.raises(DataError, match=r"r.csv: a line after line \d+ is longer than the block "
                                      r"size \(150 bytes\)"):
    table.read_interactions(path, user_col="user", item_col="item", block_bytes=SMALL)
