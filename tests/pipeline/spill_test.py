"""spill.Spill: rows on disk, read back in order, as often as needed."""

import pytest

from pipeline import spill


def test_rows_come_back_in_order_every_time_and_through_the_transform():
  rows = spill.Spill()
  expected = [[i, f"train/cät/{i:05d}.jpg", "ü\u2603" * (i % 3)] for i in range(30_000)]
  for row in expected:
    rows.append(row)
  assert len(rows) == 30_000 and rows
  assert list(rows) == expected  # rows cross the 64 KiB read chunks
  assert list(rows) == expected  # and read again
  rows.transform = lambda row: row[1]
  assert next(iter(rows)) == "train/cät/00000.jpg"
  rows.clear()
  assert len(rows) == 0 and not rows and list(rows) == []
  rows.transform = None
  rows.append({"key": "a"})  # after a clear, only what came since
  assert list(rows) == [{"key": "a"}]


def test_reading_while_appending_sees_the_rows_appended_before_the_read_began():
  rows = spill.Spill()
  for i in range(5):
    rows.append(i)
  seen = []
  for row in rows:
    seen.append(row)
    rows.append(row + 100)  # does not move where the read is
  assert seen == [0, 1, 2, 3, 4]
  assert list(rows) == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]


def test_a_closed_spill_cannot_take_rows():
  rows = spill.Spill()
  rows.close()
  with pytest.raises(ValueError):
    rows.append(1)
