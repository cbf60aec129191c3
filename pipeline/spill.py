"""A planner's rows on local disk instead of in memory: the launcher's memory stays flat.

A plan of an image folder or a path list has one row per image: at ImageNet's 1.28M images,
as Python dicts, about 0.9 GB in the launcher (BENCHMARKS.md, Beam job). The planners append
their rows to a Spill instead, one JSON line each in an unnamed temporary file (the OS deletes
it when it is closed, and when the process dies), and whoever needs them reads them back in
order, as often as needed. Memory: a file buffer, whatever the number of rows.

`transform`, when set, is applied to every row read back: the planners store compact rows
(a class name, a relative path) and turn them into elements only when they are read, after
planning has settled what needed every row first (the class list, the label numbers).
"""

import json
import os
import tempfile

_READ_CHUNK = 1 << 16  # bytes read at a time: what reading back holds


class Spill:
  """An append-only sequence of JSON-able rows in a temporary file. len() counts them;
  iterating reads them back in the order appended (while appending goes on, too: reads do
  not move the write position)."""

  def __init__(self, transform=None):
    self._file = tempfile.TemporaryFile()
    self._count = 0
    self.transform = transform

  def append(self, row):
    self._file.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    self._count += 1

  def __len__(self):
    return self._count

  def __bool__(self):
    return self._count > 0

  def __iter__(self):
    self._file.flush()
    fd, offset, rest = self._file.fileno(), 0, b""
    transform = self.transform
    end = os.fstat(fd).st_size  # the rows appended so far; later ones are not read
    while offset < end:
      chunk = os.pread(fd, min(_READ_CHUNK, end - offset), offset)
      if not chunk:
        break
      offset += len(chunk)
      lines = (rest + chunk).split(b"\n")
      rest = lines.pop()
      for line in lines:
        row = json.loads(line)
        yield transform(row) if transform else row
    if rest:
      raise ValueError(f"a spilled row is cut short at byte {offset - len(rest)}")

  def clear(self):
    """Deletes the rows (the file goes with them)."""
    self._file.seek(0)
    self._file.truncate()
    self._count = 0

  def close(self):
    self._file.close()
    self._count = 0
