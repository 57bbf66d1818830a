"""LastFM through `prepare atomic` and back: the same sequences and attribute sets, up to ids."""

import json

import numpy as np
import pytest

from s3rec_jax.data import dataset as data
from s3rec_jax.data import prepare


@pytest.mark.realdata
def test_lastfm_round_trip(shared_data_dir, tmp_path):
  user_ids, offsets, items = data.read_sequences(shared_data_dir / "LastFM.txt")
  shipped = json.loads((shared_data_dir / "LastFM_item2attributes.json").read_text())
  # The shipped lists repeat attributes; the model reads them as sets.
  shipped_sets = {int(k): set(v) for k, v in shipped.items()}
  sequences = {int(u): items[offsets[k]:offsets[k + 1]].tolist() for k, u in enumerate(user_ids)}

  # Rows in a shuffled order, with increasing times per user, so prepare must sort.
  rows = [(u, item, t) for u, seq in sequences.items() for t, item in enumerate(seq)]
  order = np.random.default_rng(0).permutation(len(rows))
  inter = tmp_path / "lastfm.inter"
  inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
      f"u{rows[k][0]}\ti{rows[k][1]}\t{1_000_000 + rows[k][2]}\n" for k in order))
  item = tmp_path / "lastfm.item"
  item.write_text("item_id:token\ttags:token_seq\n" + "".join(
      f"i{k}\t{' '.join(f't{a}' for a in v)}\n" for k, v in shipped.items()))
  assert prepare.main(["atomic", "--inter", str(inter), "--item", str(item), "--name", "LastFM",
                       "--output", str(tmp_path / "out"), "--min_user_interactions", "0",
                       "--min_item_interactions", "0"]) == 0

  out = tmp_path / "out"
  stats = json.loads((out / "LastFM_stats.json").read_text())
  ids = json.loads((out / "LastFM_ids.json").read_text())
  assert (stats["users"], stats["items"], stats["interactions"]) == (1090, 3646, 52551)
  # 388 is the largest attribute id of the shipped file, and also the number of
  # distinct attributes that its items (all of them in sequences) carry.
  used = set().union(*shipped_sets.values())
  assert max(used) == len(used) == 388
  assert stats["attributes"] == 388 and stats["attributes_per_field"] == {"tags": 388}
  assert ids["attribute_fields"] == {"tags": [1, 388]}
  assert sum(r["interactions"] for r in stats["removed"]) == 0

  prepared = data.load_dataset(out, "LastFM", need_samples=False)
  assert prepared.num_users == 1090 and prepared.max_item == 3646 and prepared.max_attr == 388
  original_item = [int(name[1:]) for name in ids["items"]]
  original_attr = [int(value[1:]) for field, value in ids["attributes"]]
  for k, user in enumerate(prepared.user_ids):
    name = ids["users"][int(user) - 1]
    got = [original_item[i - 1] for i in prepared.sequence(k)]
    assert got == sequences[int(name[1:])], name
  assert sorted(original_item) == sorted(shipped_sets)
  for dense, original in enumerate(original_item, start=1):
    row = prepared.attr_ids[dense]
    assert {original_attr[a - 1] for a in row[row > 0]} == shipped_sets[original], original
