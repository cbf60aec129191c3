"""Reads a data directory back and checks it against its tfrecords_info.json.

    report = verify.verify_data_dir("/data/cifar100")        # every record, every image
    report = verify.verify_data_dir(d, decode=False)           # CRCs, counts, labels only
    verify.check_data_dir(d, splits=("train", "validation"))  # raises DataError if bad

Checked, each problem named by shard and record index (and key, once it parses):
  * every record's CRC (a flipped byte or a cut shard is a DataLossError in TFRecordDataset);
  * every record parses with the schema in pipeline/features.py;
  * record counts per split and per class equal tfrecords_info.json's;
  * labels are in 0..num_classes-1, coarse labels in range (or -1 without coarse classes);
  * keys are unique across the checked splits (no example twice);
  * every record's image/format agrees with tfrecords_info.json's image_format (raw records
    where it says raw, and only there: the trainer reads raw ones with decode_raw), and a raw
    record holds height * width * 3 bytes (checked with decode=False too: it costs a length);
  * with decode=True, every image decodes to 3 channels at its recorded height and width,
    and at tfrecords_info.json's image_shape when it has one.

`tools/verify_tfrecords.py` is the command line around it; the trainer calls `check_data_dir`
with decode=False before training (a pass over the bytes: ~1 s for CIFAR's 150 MB locally), so a
corrupt shard is reported by name up front rather than as a DataLossError deep inside tf.data.
A missing or invalid tfrecords_info.json, or a listed shard that is missing, raises
dataset_info.DatasetInfoError from `dataset_info.load`.
"""

import collections
import concurrent.futures
import dataclasses
import re
import time

from pipeline import dataset_info
from pipeline import features

BATCH = 1024  # records read and parsed at a time; a corrupt batch is re-read one by one.
# Shards read at once. Reading, CRCs and parsing run in TensorFlow's C++ without the GIL, so
# threads overlap them (and the latency of remote storage); the per-record checks in Python
# are the serial part.
PARALLEL_SHARDS = 8


class DataError(dataset_info.DatasetInfoError):
  """The data directory's records do not match its tfrecords_info.json, or are corrupt."""


@dataclasses.dataclass
class SplitReport:
  name: str
  expected: int  # num_examples in tfrecords_info.json
  num_records: int = 0  # records read before the end of the split (or its first corrupt one)
  per_class: list = dataclasses.field(default_factory=list)
  unreadable: bool = False  # a shard could not be read to its end


@dataclasses.dataclass
class Report:
  data_dir: str
  splits: dict = dataclasses.field(default_factory=dict)  # name -> SplitReport
  errors: list = dataclasses.field(default_factory=list)  # one line each, naming the place
  truncated: int = 0  # errors beyond max_errors, not listed
  bytes_read: int = 0  # size of the shards checked
  seconds: float = 0.0  # wall time of the check

  @property
  def ok(self):
    return not self.errors

  def summary(self):
    # A rate says something only once reading dominates the fixed start-up costs.
    rate = (f", {self.seconds / (self.bytes_read / 1e9):.1f} s/GB"
            if self.bytes_read >= 100e6 else "")
    lines = [f"{self.data_dir}: {'OK' if self.ok else 'FAILED'} ({self.bytes_read / 1e6:,.0f} "
             f"MB of shards in {self.seconds:.1f} s{rate})"]
    for s in self.splits.values():
      lines.append(f"  {s.name:<10} {s.num_records:>8} records (tfrecords_info.json: "
                   f"{s.expected})")
    lines += [f"  ERROR {e}" for e in self.errors]
    if self.truncated:
      lines.append(f"  ... and {self.truncated} more errors")
    return "\n".join(lines)


class _Errors:
  def __init__(self, report, max_errors):
    self._report, self._max = report, max_errors

  def add(self, message):
    if len(self._report.errors) < self._max:
      self._report.errors.append(message)
    else:
      self._report.truncated += 1


def verify_data_dir(data_dir, splits=None, decode=True, max_errors=20,
                    parallel_shards=PARALLEL_SHARDS):
  """Reads every record of `splits` (default: all in tfrecords_info.json), `parallel_shards`
  shards at a time. Returns a Report; raises dataset_info.DatasetInfoError when
  tfrecords_info.json or a listed shard is missing."""
  import tensorflow as tf
  started = time.time()
  info = _load(data_dir)
  names = list(info.splits) if splits is None else list(splits)
  for name in names:
    info.split(name)  # Raises, naming the splits there are.
  report = Report(data_dir=data_dir)
  errors = _Errors(report, max_errors)
  keys = {}
  shards = [(name, shard) for name in names for shard in info.split(name).shards]
  report.bytes_read = sum(tf.io.gfile.stat(shard).length for _, shard in shards)
  workers = max(1, min(parallel_shards, len(shards)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    # map keeps the shards' order: the report reads the same whatever finishes first.
    results = pool.map(lambda s: _verify_shard(s[1], info, decode), shards)
    by_split = {name: [] for name in names}
    for (name, shard), result in zip(shards, results):
      by_split[name].append((shard, result))
  for name in names:
    split = info.split(name)
    r = report.splits[name] = SplitReport(name, split.num_examples,
                                          per_class=[0] * info.num_classes)
    for shard, result in by_split[name]:
      _merge_shard(shard, result, r, keys, errors)
    if r.unreadable:
      pass  # The count is short because of the corrupt shard reported above.
    elif r.num_records != split.num_examples:
      errors.add(f"split {name}: {r.num_records} records in {len(split.shards)} shards, but "
                 f"tfrecords_info.json says num_examples={split.num_examples}")
    elif split.per_class and list(split.per_class) != r.per_class:
      errors.add(f"split {name}: records per class {r.per_class}, but tfrecords_info.json says "
                 f"per_class={list(split.per_class)}")
  report.seconds = time.time() - started
  return report


def _load(data_dir):
  """dataset_info.load, with TensorFlow's file system errors (an unreachable or forbidden
  gs:// bucket, say) turned into a DataError naming the directory, not a stack trace."""
  import tensorflow as tf
  try:
    return dataset_info.load(data_dir)
  except tf.errors.OpError as e:
    raise DataError(f"--data_dir={data_dir}: cannot be read ({type(e).__name__}: "
                    f"{_message(e)})") from None


def check_data_dir(data_dir, splits=None, decode=False):
  """verify_data_dir, raising DataError with the report's summary when anything is wrong."""
  report = verify_data_dir(data_dir, splits=splits, decode=decode)
  if not report.ok:
    raise DataError(f"--data_dir={data_dir} does not match its {features.INFO_FILE}:\n"
                    + report.summary())
  return report


@dataclasses.dataclass
class _ShardResult:
  """What one shard holds, checked on its own (keys are compared across shards on merge)."""
  num_records: int = 0
  per_class: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  unreadable: bool = False
  keys: list = dataclasses.field(default_factory=list)  # (key, record index), in order
  errors: list = dataclasses.field(default_factory=list)  # (record index, message)

  def add(self, message, index=-1):
    self.errors.append((index, message))


def _merge_shard(shard, result, r, keys, errors):
  """Adds one shard's result to its split's report; duplicate keys across shards are found
  here, in shard order, and listed in record order with the shard's own errors."""
  r.num_records += result.num_records
  r.unreadable |= result.unreadable
  for label, count in result.per_class.items():
    r.per_class[label] += count
  found = list(result.errors)
  for key, index in result.keys:
    if key in keys:
      found.append((index, f"{shard}: record {index} (key {key!r}): key also in {keys[key]}"))
    else:
      keys[key] = f"{shard}: record {index}"
  for _, message in sorted(found, key=lambda e: e[0]):
    errors.add(message)


def _verify_shard(shard, info, decode):
  """Reads and checks one shard; returns its _ShardResult."""
  import tensorflow as tf
  r = _ShardResult()
  start = 0
  dataset = iter(tf.data.TFRecordDataset(shard).batch(BATCH))
  while True:
    try:
      batch = next(dataset)
    except StopIteration:
      return r
    except tf.errors.OpError as e:  # DataLossError: CRC mismatch, cut record.
      index = start + _count_readable(shard, start)
      r.num_records += index - start
      r.unreadable = True
      r.add(f"{shard}: record {index}: cannot be read, the shard is corrupt "
            f"({type(e).__name__}: {_message(e)}); rebuild it with "
            "`python -m pipeline.build_tfrecords`", index)
      return r
    try:
      parsed = features.parse_batch(batch)
    except tf.errors.OpError as e:
      r.add(f"{shard}: records {start}..{start + len(batch) - 1}: do not parse as "
            f"tf.train.Example with the schema in pipeline/features.py ({_message(e)})", start)
      r.num_records += len(batch)
      start += len(batch)
      continue
    # numpy per record: ~50x faster. The image bytes only when they are decoded (copying
    # them out costs a third of a --nodecode pass over 224-px records).
    arrays = {k: v.numpy() for k, v in parsed.items() if decode or k != features.IMAGE}
    lengths = tf.strings.length(parsed[features.IMAGE]).numpy()  # bytes of each image
    shapes = (_decoded_shapes(parsed[features.IMAGE], parsed[features.FORMAT]) if decode
              else None)
    for i in range(len(batch)):
      _verify_record(shard, start + i, {k: v[i] for k, v in arrays.items()}, info, r,
                     decode, shape=None if shapes is None else tuple(shapes[i]),
                     length=int(lengths[i]))
    r.num_records += len(batch)
    start += len(batch)


def _decoded_shapes(encoded, formats):
  """[N, 3] shapes of a batch of encoded images, decoded in parallel in one tf.data pass; None
  when one of them does not decode (the caller then decodes one by one to name it). Raw
  records are not decoded here (their shape is their length: _verify_record)."""
  import tensorflow as tf

  def shape(image, image_format):
    return tf.cond(
        tf.equal(image_format, features.RAW), lambda: tf.zeros([3], tf.int32),
        lambda: tf.shape(tf.io.decode_image(image, channels=3, expand_animations=False)))
  ds = tf.data.Dataset.from_tensor_slices((encoded, formats)).map(
      shape, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(BATCH)
  try:
    return next(iter(ds)).numpy()
  except tf.errors.OpError:
    return None


def _message(error):
  """TensorFlow's error text without its `{{function_node ...}}` prefix and `[Op:...]` tail."""
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message.splitlines()[0] if error.message else "")
  return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip()


def _count_readable(shard, start):
  """How many records after the first `start` read cleanly (to name the bad one exactly)."""
  import tensorflow as tf
  count = 0
  try:
    for _ in tf.data.TFRecordDataset(shard).skip(start):
      count += 1
  except tf.errors.OpError:
    pass
  return count


def _verify_record(shard, index, ex, info, r, decode, shape=None, length=None):
  import tensorflow as tf
  key = ex[features.KEY].decode(errors="replace")
  where = f"{shard}: record {index} (key {key!r})"
  label = int(ex[features.LABEL])
  if 0 <= label < info.num_classes:
    r.per_class[label] += 1
  else:
    r.add(f"{where}: label {label} is outside 0..{info.num_classes - 1} "
          f"({info.num_classes} classes in {features.INFO_FILE})", index)
  coarse = int(ex[features.COARSE_LABEL])
  num_coarse = len(info.coarse_class_names)
  if not (coarse == features.NO_COARSE_LABEL if not num_coarse else 0 <= coarse < num_coarse):
    r.add(f"{where}: coarse label {coarse} is outside "
          f"{'0..%d' % (num_coarse - 1) if num_coarse else '-1 (no coarse classes)'}", index)
  r.keys.append((key, index))
  height, width = int(ex[features.HEIGHT]), int(ex[features.WIDTH])
  raw = ex[features.FORMAT] == features.RAW.encode()
  if raw != (info.image_format == features.RAW):
    r.add(f"{where}: image format {ex[features.FORMAT].decode(errors='replace')!r}, but "
          f"{features.INFO_FILE} says image_format={info.image_format!r}", index)
    return
  if raw:
    if length != height * width * 3:
      r.add(f"{where}: raw image of {length} bytes, but the record says height={height} "
            f"width={width}: {height * width * 3} bytes (height * width * 3)", index)
      return
    shape = (height, width, 3)
  if not decode:
    return
  if shape is None:  # Its batch had an image that does not decode: is it this one?
    try:
      shape = tuple(tf.io.decode_image(ex[features.IMAGE], channels=3,
                                       expand_animations=False).shape)
    except tf.errors.OpError as e:
      r.add(f"{where}: image does not decode ({_message(e)})", index)
      return
  shape = tuple(int(x) for x in shape)
  if shape != (height, width, 3):
    r.add(f"{where}: image decodes to {shape}, but the record says "
          f"height={height} width={width}", index)
  elif info.image_shape and shape != tuple(info.image_shape):
    r.add(f"{where}: image is {shape}, but {features.INFO_FILE} says "
          f"image_shape={list(info.image_shape)}", index)
