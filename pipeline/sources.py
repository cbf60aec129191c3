"""Sources: what a Beam job reads, planned before the job starts.

Planning lists the classes (the trainer needs one fixed class list, and a class subset must be
chosen before any example is labelled) and the work: for file sources, one element per image
path; for archive sources, one element per split, expanded inside the job by a module-level
reader (so that Beam can pickle it). Problems found while planning (a malformed CSV row, an
unknown label, a duplicated path) are returned as rejections, not raised, so they end up in
rejected.csv with everything else.

An element is a dict: key (stable, unique str), split ("train"/"test"), label (index into the
plan's class_names), coarse_label (int, -1 if none), and either path (a local path, gs:// or
http(s) address) or pixels (uint8 [H, W, 3]).

This module: the Plan, image folders and path lists, and reading one file (read_bytes). The
archive sources (CIFAR-100, TensorFlow Datasets) and their readers are pipeline/archives.py.
"""

import array
import csv
import dataclasses
import errno
import functools
import hashlib
import os
import posixpath
import stat

import fsspec

from pipeline import spill

NO_COARSE = -1
SPLIT_DIRS = ("train", "test")
# --max_image_bytes' default. The largest real photos (a 50-megapixel camera's JPEG) are about
# 30 MB; a file above this is a mistake (a video, a disk image, /dev/zero), and reading it
# would hold it whole in a Beam worker's memory.
MAX_IMAGE_BYTES = 64 << 20


class SourceError(ValueError):
  """A source cannot be read at all (as opposed to one bad example, which is rejected)."""


class RefusedFile(ValueError):
  """A path that is not read as an image: not a regular file, or too large. `reason` is the
  rejection slug (not_a_regular_file, file_too_large), `detail` for people."""

  def __init__(self, reason, detail):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass
class Plan:
  description: str
  class_names: list
  coarse_class_names: list = dataclasses.field(default_factory=list)
  has_test: bool = False
  elements: list = dataclasses.field(default_factory=list)  # path elements (file sources)
  reads: list = dataclasses.field(default_factory=list)  # (reader name, kwargs) for archives
  rejected: list = dataclasses.field(default_factory=list)  # (source, reason, detail)
  split_sizes: dict = dataclasses.field(default_factory=dict)  # estimates, for shard counts
  skipped: dict = dataclasses.field(default_factory=dict)  # reason -> count, logged


# --- image folders and path lists ---------------------------------------------------------------


def plan_image_dir(root):
  """Plans `<root>/<class>/<file>` or `<root>/{train,test}/<class>/<file>`.

  A folder that cannot be listed is never passed over: at the class level or above, its
  class would vanish and every later label shift, so planning stops naming it; deeper (where
  every file is rejected as not_in_class_folder anyway) it is a read_error row.

  The paths go to a spill.Spill as they are listed, and plan.elements is one: the launcher
  holds the folder names, not a row per image: local and gs:// trees alike are walked
  folder by folder.
  """
  fs, base = fsspec.core.url_to_fs(root)
  if not fs.isdir(base):
    raise SourceError(f"--image_dir={root}: no such directory")
  listed = spill.Spill()  # relative paths of everything that is not a folder
  unlisted = []
  if _is_remote(root):
    found = _walk_remote_tree(fs, base, unlisted)
  else:
    found = _walk_local_tree(base, unlisted)
  top = set()  # the first folder of every path that has one
  for rel in found:
    listed.append(rel)
    if "/" in rel:
      top.add(rel.split("/", 1)[0])
  unlisted.sort(key=lambda u: u[0])
  split_layout = "train" in top and top <= set(SPLIT_DIRS)
  depth = 3 if split_layout else 2
  plan = Plan(description=f"image_dir:{root}", class_names=[])
  class_level = [(rel, e) for rel, e in unlisted if rel.count("/") < depth - 1]
  if class_level:
    named = "; ".join(f"{_full(root, rel) if rel != '.' else root} ({_errno_text(e)})"
                      for rel, e in class_level[:5])
    raise SourceError(
        f"--image_dir={root}: cannot list {len(class_level)} folder(s): {named}. Their "
        "images would be left out and the class list would be wrong; make them readable "
        "or move them out of --image_dir")
  for rel, e in unlisted:
    if any(p.startswith(".") for p in rel.split("/")):
      plan.skipped["hidden_file"] = plan.skipped.get("hidden_file", 0) + 1
      continue
    plan.rejected.append((_full(root, rel), "read_error",
                          f"a folder that cannot be listed: {_errno_text(e)}"))
  planned = spill.Spill()  # [split, class name, relative path]
  class_names = set()
  for rel in listed:
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):
      plan.skipped["hidden_file"] = plan.skipped.get("hidden_file", 0) + 1
      continue
    split = parts[0] if split_layout else "train"
    if len(parts) != depth:
      plan.rejected.append((_full(root, rel), "not_in_class_folder",
                            f"expected {'<split>/' if split_layout else ''}<class>/<file>"))
      continue
    planned.append([split, parts[-2], rel])
    class_names.add(parts[-2])
    plan.split_sizes[split] = plan.split_sizes.get(split, 0) + 1
  listed.close()
  plan.class_names = sorted(class_names)
  if not plan.class_names:
    raise SourceError(f"--image_dir={root}: no <class>/<file> images found")
  planned.transform = functools.partial(
      _image_dir_element, root, {c: i for i, c in enumerate(plan.class_names)})
  plan.elements = planned
  plan.has_test = "test" in plan.split_sizes
  return plan


def _image_dir_element(root, index, row):
  split, class_name, rel = row
  return {"key": rel, "split": split, "label": index[class_name], "coarse_label": NO_COARSE,
          "path": _full(root, rel)}


def _walk_local_tree(base, unlisted):
  """Yields the relative path of everything under base that is not a folder, each folder's
  entries in sorted order; appends (relative folder, OSError) to `unlisted` for each folder
  that could not be listed.

  Not fsspec's find, nor os.walk: both pass over a folder they cannot list as if it were
  empty. Everything that is not a folder is listed (FIFOs, sockets, devices too): the job
  rejects those as not_a_regular_file, so they are counted, not hidden. Symlinked folders
  are followed, each real folder once (a link loop ends). Memory: the folders still to walk
  and one folder's entries, not the tree.
  """
  seen = set()
  pending = ["."]
  while pending:
    rel = pending.pop()
    path = base if rel == "." else os.path.join(base, rel)
    try:
      st = os.stat(path)
      if (st.st_dev, st.st_ino) in seen:
        continue
      seen.add((st.st_dev, st.st_ino))
      with os.scandir(path) as entries:
        entries = sorted(entries, key=lambda entry: entry.name)
    except OSError as e:
      unlisted.append((rel, e))
      continue
    folders = []
    for entry in entries:
      child = entry.name if rel == "." else f"{rel}/{entry.name}"
      try:
        is_dir = entry.is_dir()  # follows symlinks
      except OSError:
        is_dir = False
      if is_dir:
        folders.append(child)
      else:
        yield child
    pending.extend(reversed(folders))  # walked in sorted order


def _walk_remote_tree(fs, base, unlisted):
  """_walk_local_tree for an fsspec file system such as gcsfs: the relative path of every
  object under `base`, folder by folder, each folder's entries in sorted order.

  Not fs.find: gcsfs lists the whole prefix into one list and keeps every entry (a dict of
  the object's metadata, about a kilobyte) in its listings cache, which for an ImageNet-sized
  bucket is gigabytes in the launcher. Here each folder is listed on its own and dropped from
  the cache once read, so memory is the folders still to walk and one folder's entries. A
  folder whose listing fails (a 403, say) goes to `unlisted` as (relative folder, error),
  as in _walk_local_tree, for plan_image_dir to refuse or record.
  """
  pending = [base.rstrip("/")]
  while pending:
    path = pending.pop()
    try:
      entries = fs.ls(path, detail=True, refresh=True)
    except Exception as e:  # pylint: disable=broad-except  # gcsfs's HttpError on a 403, say
      unlisted.append((posixpath.relpath(path, base.rstrip("/")), e))
      continue
    finally:
      fs.invalidate_cache(path)
    folders = []
    for entry in sorted(entries, key=lambda entry: entry["name"]):
      name = entry["name"].rstrip("/")
      if name == path:  # the folder's own placeholder object ("folder/")
        continue
      if entry["type"] == "directory":
        folders.append(name)
      else:
        yield posixpath.relpath(name, base)
    pending.extend(reversed(folders))


def _errno_text(e):
  """'Permission denied (EACCES)' for an OSError; 'HttpError: ...' for another error (an
  object store's)."""
  if not isinstance(e, OSError):
    return f"{type(e).__name__}: {e}"
  name = errno.errorcode.get(e.errno, "") if e.errno else ""
  return f"{e.strerror or e}" + (f" ({name})" if name else "")


def _full(root, rel):
  return root.rstrip("/") + "/" + rel


def _is_remote(path):
  return "://" in path


def plan_path_list(csv_path, *, class_names_file=""):
  """Plans a CSV `path,label[,split]`; relative paths are relative to the CSV's folder.

  The CSV is read row by row into a spill.Spill, then read back once to find repeated paths
  and check labels, into the Spill that is plan.elements. What the launcher holds per row is
  8 bytes, a digest of its path (to find the paths that repeat), not the row.
  """
  base = csv_path.rsplit("/", 1)[0] if "/" in csv_path else "."
  plan = Plan(description=f"path_list:{csv_path}", class_names=[])
  rows = spill.Spill()  # [line number, full path, path as written, label, split]
  digests = array.array("Q")
  try:
    # utf-8-sig: spreadsheet exports start with a byte-order mark, which would otherwise
    # become part of the first column's name. Bytes that are not UTF-8 become U+FFFD and the
    # rows that hold them are rejected below, rather than the whole list failing to decode.
    with fsspec.open(csv_path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
      reader = csv.DictReader(f)
      header = reader.fieldnames or []
      missing = [c for c in ("path", "label") if c not in header]
      if missing:
        raise SourceError(f"--path_list={csv_path}: header {header} lacks column(s) "
                          f"{missing}; expected path,label[,split]")
      last_line = reader.line_num
      for row in reader:
        # A row starts on the line after the previous one ended (a quoted field can span
        # lines).
        line_no, last_line = last_line + 1, reader.line_num
        path, label, split = _fields(row)
        problem = _row_problem(row, header, path, label, split)
        if problem:
          plan.rejected.append((f"{csv_path}:{line_no}", "malformed_row", problem))
          continue
        full = _normalize(path if (_is_remote(path) or os.path.isabs(path))
                          else base + "/" + path)
        rows.append([line_no, full, path, label, split])
        digests.append(_digest(full))
  except FileNotFoundError:
    raise SourceError(f"--path_list={csv_path}: no such file") from None
  repeated = _repeated(digests)
  del digests
  if class_names_file:
    plan.class_names = _read_class_names(class_names_file)
  index = {c: i for i, c in enumerate(plan.class_names)}
  first_line = {}  # full path -> line of its first row, for the paths whose digest repeats
  labels = {}  # label -> [rows, the first rows' places], when the labels make the classes
  kept = spill.Spill()  # [path as written, full path, label, split]
  for line_no, full, path, label, split in rows:
    if repeated and _digest(full) in repeated:
      if full in first_line:
        plan.rejected.append((full, "duplicate_path",
                              f"line {line_no} repeats line {first_line[full]}"))
        continue
      first_line[full] = line_no
    if class_names_file:
      if _label_index(index, label) is None:
        plan.rejected.append((full, *_label_rejection(label, plan.class_names, csv_path,
                                                      line_no)))
        continue
    else:
      seen = labels.setdefault(label, [0, []])
      seen[0] += 1
      if len(seen[1]) < 5:
        seen[1].append(f"{csv_path}:{line_no}")
    kept.append([path, full, label, split])
    plan.split_sizes[split] = plan.split_sizes.get(split, 0) + 1
  rows.close()
  if not class_names_file:
    if labels and all(l.isdigit() for l in labels):
      plan.class_names = _integer_classes(csv_path, labels)
    else:
      plan.class_names = sorted(labels)
    index = {c: i for i, c in enumerate(plan.class_names)}
  if not plan.class_names:
    raise SourceError(f"--path_list={csv_path}: no usable rows")
  kept.transform = functools.partial(_path_list_element, index)
  plan.elements = kept
  plan.has_test = plan.split_sizes.get("test", 0) > 0
  return plan


def _fields(row):
  """(path, label, split) of a CSV row, stripped; split defaults to train."""
  return ((row.get("path") or "").strip(), (row.get("label") or "").strip(),
          (row.get("split") or "train").strip() or "train")


def _row_problem(row, header, path, label, split):
  """Why a CSV row (its _fields: path, label, split) is malformed, or None."""
  if None in row or None in row.values():
    return f"{len(header)} columns expected: {_raw_row(row)}"
  if "\ufffd" in _raw_row(row):
    return f"not valid UTF-8: {_raw_row(row)}"
  if not path or not label:
    return f"empty path or label: {_raw_row(row)}"
  if any(ord(c) < 32 for c in path):
    return f"control character in path {path!r}"
  if split not in SPLIT_DIRS:
    return f"split {split!r} is not train or test"
  return None


def _digest(path):
  return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogatepass"),
                                        digest_size=8).digest(), "big")


def _repeated(digests):
  """The values that occur more than once in an array of digests."""
  import numpy as np  # Beam's dependency; here only for one sort of 8 bytes a row.
  values = np.sort(np.frombuffer(digests, dtype=np.uint64)) if digests else np.zeros(0)
  return set(np.unique(values[1:][values[1:] == values[:-1]]).tolist())


def _label_index(index, label):
  """A row's label -> its class index (a class name, or its number), or None."""
  label_index = index.get(label)
  if label_index is None and label.isdigit() and int(label) < len(index):
    label_index = int(label)
  return label_index


def _label_rejection(label, class_names, csv_path, line_no):
  if label.isdigit():
    return ("label_out_of_range",
            f"label {label} is outside 0..{len(class_names) - 1} ({csv_path}:{line_no}; "
            f"--class_names_file names {len(class_names)} classes)")
  return "unknown_label", f"{label!r} is not among the {len(class_names)} classes"


def _path_list_element(index, row):
  path, full, label, split = row
  return {"key": path, "split": split, "label": _label_index(index, label),
          "coarse_label": NO_COARSE, "path": full}


def _integer_classes(csv_path, labels):
  """Integer labels mean classes 0..max. Returns their names "0".."max", or raises
  SourceError when some of those classes have no row: one typo (`100000` among 0 and 1)
  would otherwise make 100,001 classes, most of them empty, which the trainer cannot learn
  and fails on far from the cause. Names the empty classes and the rows whose labels lie
  above the first empty one (the likely typos). labels: label -> [rows, the first rows'
  places]."""
  by_label = {}  # number -> [rows, places]
  for label, (count, places) in labels.items():
    seen = by_label.setdefault(int(label), [0, []])
    seen[0] += count
    seen[1].extend(places)
  present = sorted(by_label)
  gaps = [(a + 1, b - 1) for a, b in zip([-1] + present, present) if b - a > 1]
  if not gaps:
    return [str(i) for i in range(present[-1] + 1)]
  empty = sum(b - a + 1 for a, b in gaps)
  first_empty = gaps[0][0]
  spans = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in gaps[:5])
  spans += f" and {len(gaps) - 5} more ranges" if len(gaps) > 5 else ""
  if first_empty == 0:
    # Every row lies above the gap: listing them would not help. Labels counted from 1?
    culprits = "No row has label 0: are the labels counted from 1? Renumber them from 0"
  else:
    higher = [label for label in present if label > first_empty]
    above = [(where, label) for label in higher for where in sorted(
        by_label[label][1], key=lambda w: int(w.rsplit(":", 1)[1]))]
    count = sum(by_label[label][0] for label in higher)
    culprits = ", ".join(f"{where} (label {label})" for where, label in above[:5])
    culprits += f" and {count - 5} more" if count > 5 else ""
    culprits = f"Rows with labels above {first_empty - 1}: {culprits}. Fix those labels"
  raise SourceError(
      f"--path_list={csv_path}: integer labels make the classes 0..{present[-1]}, but "
      f"{empty} of them have no rows ({spans}). {culprits}, or give the classes with "
      "--class_names_file (rows with labels outside it are then rejected as "
      "label_out_of_range)")


def _normalize(path):
  """One spelling per file, so that `a.jpg`, `./a.jpg` and `x/../a.jpg` count as duplicates.
  Local and gs:// paths only: an http(s) address may carry a query that is not a path."""
  if path.startswith("gs://"):
    return "gs://" + posixpath.normpath(path[len("gs://"):])
  if _is_remote(path):
    return path
  return posixpath.normpath(path)


def _read_class_names(class_names_file):
  try:
    with fsspec.open(class_names_file, "rb") as f:
      text = f.read().decode("utf-8-sig", errors="replace")
  except FileNotFoundError:
    raise SourceError(f"--class_names_file={class_names_file}: no such file") from None
  names = [line.strip() for line in text.splitlines() if line.strip()]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise SourceError(f"--class_names_file={class_names_file} repeats {repeated}: "
                      "each class must be named once (its line number is its label)")
  if not names:
    raise SourceError(f"--class_names_file={class_names_file} names no classes")
  return names


def _raw_row(row):
  values = [v for k, v in row.items() if k is not None]
  values += row.get(None) or []
  return ",".join("" if v is None else str(v) for v in values)[:200]


def read_bytes(path, max_bytes=MAX_IMAGE_BYTES):
  """The bytes of a local file, gs:// object or http(s) address.

  Only a regular file is read, and only up to max_bytes (None: no limit); anything else
  raises RefusedFile before it is read: a FIFO would block the reader forever (nothing
  writes to it), /dev/zero would be read until memory runs out. For gs:// and http(s) the
  size is the one the file system reports; the read is cut at max_bytes + 1 regardless, in
  case that is missing or wrong.
  """
  limit = -1 if max_bytes is None else max_bytes + 1
  if "://" not in path:
    # Local: plain os calls. fsspec resolves a file system per call, which costs as much as
    # reading a CIFAR-size JPEG (BENCHMARKS.md, Beam job).
    _check_file(path, os.stat(path), max_bytes)
    # O_NONBLOCK: if the path became a FIFO since the stat, opening it must not wait for a
    # writer (for a regular file the flag changes nothing).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
      _check_file(path, os.fstat(fd), max_bytes)
      data = f.read(limit)
  else:
    fs, where = fsspec.core.url_to_fs(path)
    info = fs.info(where)
    if info.get("type") == "directory":
      raise RefusedFile("not_a_regular_file", "a directory")
    if max_bytes is not None and (info.get("size") or 0) > max_bytes:
      raise RefusedFile("file_too_large", _too_large(info["size"], max_bytes))
    with fs.open(where, "rb") as f:
      data = f.read(limit)
  if max_bytes is not None and len(data) > max_bytes:
    raise RefusedFile("file_too_large", f"more than --max_image_bytes={max_bytes} bytes "
                      "could be read (more than its reported size)")
  return data


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _check_file(path, st, max_bytes):
  if not stat.S_ISREG(st.st_mode):
    kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
    raise RefusedFile("not_a_regular_file", kind)
  if max_bytes is not None and st.st_size > max_bytes:
    raise RefusedFile("file_too_large", _too_large(st.st_size, max_bytes))


def _too_large(size, max_bytes):
  return f"{size:,} bytes, more than --max_image_bytes={max_bytes}"
