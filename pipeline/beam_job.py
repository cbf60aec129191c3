"""The Beam job: planned elements -> checked, encoded records -> sharded TFRecords + metadata.

    file sources:    ReadShardPlans ----------------------------> WriteShards -> images-<split>.tfrecord-*
    archive sources: ReadArchives -> AssignSplits -> GroupByShard -/            -> WriteRejections (rejected.csv)
                                                                              -> WriteMetadata (tfrecords_info.json, TFDS's files)

No image is held beyond the one being written, and for file sources (image folders, path
lists) nothing goes through a grouping. Before the job, the launcher gives every planned path
its split and its shard (a hash of its key, shard_index) and writes one plan file per shard
(write_shard_plans); each shard's task reads its own plan and reads, checks, encodes and
streams that shard's images into its file (WriteShard). Runners buffer what passes through a
grouping (the DirectRunner in memory, about 2 KB a path when the paths went through one), so
the job's memory is one shard's plan, whatever the number of images (the launcher streams
the planners' spilled rows into the plan files, holding none). Archive sources
(CIFAR-100, tfds) yield pixels from a reader that holds the whole split in memory anyway (a
CIFAR split is 150 MB of pixels); their elements are grouped by shard inside the job.
Parallelism is one task per shard.

Each stage is a named, module-level `beam.ptransform_fn` (Beam pickles them, and the
multi-processing DirectRunner and remote runners import them); they are counted in the
`build_tfrecords` metrics namespace:

  examples/<split>               records written per split
  examples/<split>/<class name>  records written per split and class
  rejected/<reason>              inputs sent to rejected.csv instead of a shard
  converted/<kind>               images converted (grayscale, rgba, palette, ...,
                                 exif_orientation, animated_first_frame)
  excluded/class_subset          examples of classes left out by --classes/--num_classes
"""

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil  # TFRecord framing, as WriteToTFRecord
from apache_beam.metrics import Metrics

from pipeline import archives
from pipeline import dataset_info
from pipeline import features
from pipeline import images
from pipeline import job_metadata
from pipeline import job_progress
from pipeline import output_files
from pipeline import sources
from pipeline import splits

NAMESPACE = "build_tfrecords"
REJECTED = "rejected"
SHARD_FILES = "shard_files"
TEMP_PREFIX = output_files.TEMP_PREFIX  # + a unique id + the final name: a shard being written
PLAN_PREFIX = TEMP_PREFIX + "plan-"  # + ids + ".jsonl": one shard's planned paths (write_shard_plans)
# write_shard_plans' open files at a time (a process may open 1,024 by default).
MAX_OPEN_PLANS = 256
EXAMPLES_PER_SHARD = 5000  # ~10 MB of CIFAR-size JPEG/PNG per shard (TF guidance: >= 10 MB).


def write_shard_plans(output_dir, elements, *, kept, validation_fraction, test_fraction,
                      has_test, num_shards):
  """Gives each planned path element its split and class (assign) and its shard
  (shard_index), and writes one plan file per shard of every split, the empty ones too, as
  JSON lines: `<output_dir>/.temp-plan-<id>-<shard name>.jsonl`, where every worker can read
  it (local, gs://). Returns (shard_plans, excluded): [((split, index), plan path)] and the
  number of elements of classes not kept. The caller deletes the files after the job.

  Why files and not beam.Create of the elements: Create pickles every element into the
  pipeline itself, which the local runner holds in several copies (about 3.5 KB a path) and
  Dataflow refuses beyond its job-graph size limit; and why not one file grouped by shard in
  the job: the grouping is buffered by the runner (about 2 KB a path on the DirectRunner,
  BENCHMARKS.md).

  Memory: `elements` is read as it streams (the planners' spill.Spill), each line goes
  straight to its shard's open file, and at most MAX_OPEN_PLANS files are open at once (more
  shards: one more read of the elements per MAX_OPEN_PLANS). A remote output directory gets
  the files written locally first and uploaded one by one: a remote file system's writer
  buffers what it has not uploaded, and a few hundred of them would hold the whole plan.
  """
  new_label = {old: new for new, old in enumerate(kept)}
  fractions = (validation_fraction, test_fraction, has_test)
  shards = [(split, i) for split, n in num_shards.items() for i in range(n)]
  run = uuid.uuid4().hex
  paths = {(split, i): dataset_info.join(
      output_dir, f"{PLAN_PREFIX}{run}-{features.shard_name(split, i, num_shards[split])}.jsonl")
      for split, i in shards}
  remote = "://" in output_dir
  staging = tempfile.mkdtemp(prefix="shard-plans-") if remote else None
  if not remote:
    os.makedirs(output_dir, exist_ok=True)
  where = {shard: os.path.join(staging, str(n)) if remote else paths[shard]
           for n, shard in enumerate(shards)}
  excluded = 0
  try:
    for start in range(0, len(shards), MAX_OPEN_PLANS):
      files = {shard: open(where[shard], "wb")  # pylint: disable=consider-using-with
               for shard in shards[start:start + MAX_OPEN_PLANS]}
      try:
        for element in elements:
          element = assign(element, new_label, fractions)
          if element is None:
            if start == 0:  # counted on the first read only
              excluded += 1
            continue
          split = element["split"]
          out = files.get((split, shard_index(element["key"], num_shards[split])))
          if out is not None:
            out.write(json.dumps(element, sort_keys=True).encode() + b"\n")
      finally:
        for out in files.values():
          out.close()
    if remote:
      for shard in shards:
        with open(where[shard], "rb") as local, FileSystems.create(paths[shard]) as out:
          shutil.copyfileobj(local, out)
        os.remove(where[shard])
  finally:
    if staging:
      shutil.rmtree(staging, ignore_errors=True)
  return [(shard, paths[shard]) for shard in shards], excluded


def read_shard_plan(shard_plan):
  """((split, index), plan path) -> ((split, index), its elements), as WriteShard takes them."""
  shard, path = shard_plan
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return shard, [json.loads(line) for line in f.read().splitlines() if line]


def default_num_shards(num_examples):
  return max(1, math.ceil(num_examples / EXAMPLES_PER_SHARD))


def counter(name):
  return Metrics.counter(NAMESPACE, name)


def assign(element, new_label, fractions):
  """The element with its kept class's new label and its split (validation, and test when the
  source has none, held out of train by key hash), or None when its class is not kept.
  new_label: old label -> new; fractions: (validation, test, has_test)."""
  label = new_label.get(element["label"])
  if label is None:
    return None
  return dict(element, label=label,
              split=splits.assign_split(element["key"], element["split"], *fractions))


class AssignSplitAndClass(beam.DoFn):
  """assign, in the job (archive sources), counting the excluded elements."""

  def __init__(self, kept, validation_fraction, test_fraction, has_test):
    self._new_label = {old: new for new, old in enumerate(kept)}
    self._fractions = (validation_fraction, test_fraction, has_test)

  def process(self, element):
    element = assign(element, self._new_label, self._fractions)
    if element is None:
      counter("excluded/class_subset").inc()
      return
    yield element


def encode(element, class_names, image_size=None, max_image_bytes=sources.MAX_IMAGE_BYTES,
           image_format=features.SOURCE):
  """Reads, checks, converts and encodes one element's image, stored as `image_format`
  (features.IMAGE_FORMATS). Returns (record, example): the serialized tf.Example for the
  shard and the example for the Summary, {"split", "label", "shape": (height, width),
  "converted": (kind, ...)}. Raises images.BadImage."""
  if "pixels" in element:
    encoded, fmt, pixels = images.from_pixels(element["pixels"], image_size, image_format)
    kinds = ()
  else:
    encoded, fmt, pixels, kinds = images.prepare(
        _read(element["path"], max_image_bytes), image_size, image_format)
  for kind in kinds:
    counter(f"converted/{kind}").inc()
  split, label = element["split"], element["label"]
  height, width = pixels.shape[:2]
  record = features.encode_example(
      key=element["key"], image=encoded, image_format=fmt, height=height, width=width,
      label=label, coarse_label=element.get("coarse_label", features.NO_COARSE_LABEL))
  counter(f"examples/{split}").inc()
  counter(f"examples/{split}/{class_names[label]}").inc()
  return record, {"split": split, "label": label, "shape": (height, width), "converted": kinds}


def shard_index(key, num_shards):
  """Which of its split's `num_shards` shards an example goes to: a hash of its stable key,
  so every rerun, runner and worker count puts it in the same shard. Bytes 8-16 of the key's
  sha256: independent of the first 8, which chose its split (splits.key_fraction), so every
  shard of a split gets a share of it."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[8:16], "big") % num_shards


def record_order(element):
  """The order of records within a shard: by key hash, so classes are mixed (file sources
  plan their paths by folder, i.e. by class; readers of a shard written in that order see a
  class-skewed stream that no shuffle buffer smaller than the split can fix), and the same on
  every rerun."""
  return splits.key_fraction(element["key"]), element["key"]


class WriteShard(beam.DoFn):
  """((split, shard index), elements) -> one shard file, written record by record.

  The shard's images are read, checked and encoded here, one at a time, and each record is
  written to the file as soon as it is encoded: no stage holds more than one image, whatever
  the size of the split. The file is written under a temporary name in the output directory
  (TEMP_PREFIX, hidden) and renamed to its final name once complete, so a job killed
  mid-write leaves no partial shard under a final name (the next run deletes the leftovers;
  build_tfrecords.remove_stale_outputs). A retried or duplicated write renames the same
  bytes over the same name.

  Outputs: examples (for the Summary), REJECTED (source, reason, detail), SHARD_FILES (the
  final name).

  progress: a job_progress.Plan: every image written or rejected is counted in this worker
  process's job_progress.Counter, which logs a line every plan.every_seconds (None: no
  lines). image_format: what the records store (encode).
  """

  def __init__(self, output_dir, num_shards, class_names, image_size=None,
               max_image_bytes=sources.MAX_IMAGE_BYTES, progress=None,
               image_format=features.SOURCE):
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._class_names = class_names
    self._image_size = image_size
    self._max_image_bytes = max_image_bytes
    self._progress = progress
    self._image_format = image_format

  def process(self, shard):
    (split, index), elements = shard
    # Here, not in setup: the process's count (and its rate's clock) starts with its first
    # shard, not with the worker's start-up.
    self._counter = job_progress.process_counter(self._progress) if self._progress else None
    elements = sorted((e for e in elements if e is not None), key=record_order)
    name = features.shard_name(split, index, self._num_shards[split])
    final = dataset_info.join(self._output_dir, name)
    temp = dataset_info.join(self._output_dir, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")
    out = FileSystems.create(temp, mime_type="application/octet-stream",
                             compression_type=CompressionTypes.UNCOMPRESSED)
    try:
      for element in elements:
        try:
          record, example = encode(element, self._class_names, self._image_size,
                                   self._max_image_bytes, self._image_format)
        except images.BadImage as e:
          counter(f"rejected/{e.reason}").inc()
          self._count_done()
          yield beam.pvalue.TaggedOutput(
              REJECTED, (element.get("path") or element["key"], e.reason, e.detail))
          continue
        _TFRecordUtil.write_record(out, record)  # the framing WriteToTFRecord writes
        # bytes: of the serialized example, as TFDS counts a split's num_bytes (the file
        # adds 16 a record of framing: length, its CRC, the data's CRC).
        self._count_done()
        yield dict(example, shard=index, bytes=len(record))
      out.close()
    except BaseException:
      try:
        out.close()  # On a full disk this fails too (its buffer cannot be flushed).
      except OSError:
        pass
      FileSystems.delete([temp])
      raise
    FileSystems.rename([temp], [final])
    yield beam.pvalue.TaggedOutput(SHARD_FILES, final)

  def _count_done(self):
    if self._counter is not None:
      self._counter.add()


def _read(path, max_bytes):
  try:
    return sources.read_bytes(path, max_bytes)
  except sources.RefusedFile as e:  # not_a_regular_file, file_too_large: not read at all
    raise images.BadImage(e.reason, e.detail) from None
  except FileNotFoundError:
    raise images.BadImage("missing_file", "no such file") from None
  except IsADirectoryError:
    raise images.BadImage("not_a_regular_file", "a directory") from None
  except Exception as e:  # pylint: disable=broad-except
    # OSError, but also what remote file systems raise of their own (gcsfs's HttpError on a
    # 403, say) and ValueError for a path fsspec cannot parse: all mean "could not read it".
    raise images.BadImage("read_error", f"{type(e).__name__}: {e}"[:500]) from None


def rejected_csv_line(rejection):
  buf = io.StringIO()
  csv.writer(buf, lineterminator="").writerow(rejection)
  return buf.getvalue()


def key_by_shard(element, num_shards):
  split = element["split"]
  return (split, shard_index(element["key"], num_shards[split])), element


def reason_one(rejection):
  return rejection[1], 1


def _count_planned_rejection(rejection):
  counter(f"rejected/{rejection[1]}").inc()


def _count_excluded(n):
  counter("excluded/class_subset").inc(n)


# --- the stages, in the order the job runs them ------------------------------------------------
# Named as Beam and TFX name transforms, in CamelCase.
# pylint: disable=invalid-name


@beam.ptransform_fn
def ReadShardPlans(pipeline, shard_plans, excluded):
  """write_shard_plans' output -> ((split, index), elements) for every shard. Each shard's
  elements are read from its plan file by the task that writes the shard (the read fuses with
  WriteShards): nothing is grouped."""
  _ = (pipeline | "Excluded" >> beam.Create([excluded] if excluded else [])
       | "CountExcluded" >> beam.Map(_count_excluded))
  return (pipeline | "ShardPlans" >> beam.Create(shard_plans)
          | "Reshuffle" >> beam.Reshuffle()  # one task per shard, also on remote runners
          | "ReadShardPlan" >> beam.Map(read_shard_plan))


@beam.ptransform_fn
def ReadArchives(pipeline, reads):
  """Archive reads (CIFAR-100, tfds) -> their elements, pixels included."""
  return (pipeline | "ArchiveReads" >> beam.Create(reads)
          | "Read" >> beam.FlatMap(archives.run_read))


@beam.ptransform_fn
def PlanRejections(pipeline, rejected):
  """The inputs rejected while planning, counted."""
  rejections = pipeline | "Rejected" >> beam.Create(rejected)
  _ = rejections | "Count" >> beam.Map(_count_planned_rejection)
  return rejections


@beam.ptransform_fn
def AssignSplits(elements, kept, validation_fraction, test_fraction, has_test):
  """Elements -> elements of the kept classes, relabelled, with their split."""
  return elements | "AssignSplitAndClass" >> beam.ParDo(AssignSplitAndClass(
      kept, validation_fraction, test_fraction, has_test))


@beam.ptransform_fn
def GroupByShard(elements, num_shards):
  """Elements -> ((split, shard index), elements) for every shard of every split, the empty
  ones too (so that every shard file exists, as tfrecords_info.json lists them).

  The one grouping of the job: elements of file sources are metadata (key, path, label,
  split), a few hundred bytes each, so what a runner buffers here stays small; the images
  are read after it, by the stage that writes their shard. Elements of archive sources
  (CIFAR-100, tfds) carry their pixels, which their reader holds in memory anyway.
  """
  keyed = elements | "KeyByShard" >> beam.Map(key_by_shard, num_shards)
  every = elements.pipeline | "EveryShard" >> beam.Create(
      [((split, i), None) for split, n in num_shards.items() for i in range(n)])
  return (keyed, every) | "WithEmptyShards" >> beam.Flatten() | "Group" >> beam.GroupByKey()


@beam.ptransform_fn
def WriteShards(shards, output_dir, num_shards, class_names, image_size,
                max_image_bytes=sources.MAX_IMAGE_BYTES, progress=None,
                image_format=features.SOURCE):
  """Grouped shards -> (examples, rejections, shard file names): see WriteShard."""
  written = shards | "Write" >> beam.ParDo(WriteShard(
      output_dir, num_shards, class_names, image_size, max_image_bytes, progress,
      image_format)).with_outputs(REJECTED, SHARD_FILES, main="examples")
  return written.examples, written[REJECTED], written[SHARD_FILES]


@beam.ptransform_fn
def WriteRejections(rejection_lists, output_dir):
  """(rejection PCollections) -> rejected.csv; returns (reason, count) per reason."""
  rejected = rejection_lists | "AllRejections" >> beam.Flatten()
  _ = (rejected
       | "RejectedLines" >> beam.Map(rejected_csv_line)
       | "WriteRejected" >> beam.io.WriteToText(
           dataset_info.join(output_dir, "rejected"), file_name_suffix=".csv", num_shards=1,
           shard_name_template="", header="source,reason,detail"))
  return (rejected | "Reason" >> beam.Map(reason_one)
          | "CountReasons" >> beam.CombinePerKey(sum))


@beam.ptransform_fn
def WriteMetadata(examples, files, reason_counts, *, output_dir, meta, split_names,
                  max_reject_fraction):
  """Examples, shard files and rejection counts -> tfrecords_info.json and TFDS's metadata
  (or the failed variant); returns the name written."""
  # CombineGlobally yields one Summary even of no examples, so the file is always written.
  return (examples
          | "Summarize" >> beam.CombineGlobally(job_metadata.SummarizeExamples())
          | "WriteInfo" >> beam.Map(
              job_metadata.write_info, output_dir=output_dir, meta=meta, split_names=split_names,
              files=beam.pvalue.AsList(files), rejected=beam.pvalue.AsList(reason_counts),
              max_reject_fraction=max_reject_fraction))


# pylint: enable=invalid-name


def build(pipeline, plan, *, output_dir, split_names, num_shards, kept, validation_fraction,
          test_fraction, image_size, max_reject_fraction, command, shard_plans=(), excluded=0,
          max_image_bytes=sources.MAX_IMAGE_BYTES, progress=None,
          image_format=features.SOURCE):
  """Adds the whole job to `pipeline`. num_shards: split -> count. shard_plans, excluded:
  what write_shard_plans returned for plan.elements (required when there are any).
  max_image_bytes: larger files are rejected as file_too_large unread (None: no limit).
  progress: a job_progress.Plan for the shard writers' progress lines (None: none).
  image_format: what the records store (features.IMAGE_FORMATS), also written into
  tfrecords_info.json."""
  if plan.elements and not shard_plans:
    raise ValueError("the plan has path elements: write them with write_shard_plans first")
  p = pipeline
  class_names = [plan.class_names[i] for i in kept]
  num_shards = {split: num_shards[split] for split in split_names}
  shards = []
  if plan.elements:
    shards.append(p | "ReadShardPlans" >> ReadShardPlans(shard_plans, excluded))
  if plan.reads or not plan.elements:  # Without either, one grouping still makes every shard.
    shards.append(
        p | "ReadArchives" >> ReadArchives(plan.reads)
        | "AssignSplits" >> AssignSplits(kept, validation_fraction, test_fraction, plan.has_test)
        | "GroupByShard" >> GroupByShard(num_shards))
  examples, rejections, files = (
      shards | "AllShards" >> beam.Flatten()
      | "WriteShards" >> WriteShards(output_dir, num_shards, class_names, image_size,
                                     max_image_bytes, progress, image_format))
  planned_rejections = p | "PlanRejections" >> PlanRejections(plan.rejected)
  reason_counts = ((planned_rejections, rejections)
                   | "WriteRejections" >> WriteRejections(output_dir))
  meta = {"source": plan.description, "class_names": tuple(class_names),
          "coarse_class_names": tuple(plan.coarse_class_names), "command": command,
          "skipped": dict(plan.skipped), "image_format": image_format}
  return examples | "WriteMetadata" >> WriteMetadata(
      files, reason_counts, output_dir=output_dir, meta=meta, split_names=split_names,
      max_reject_fraction=max_reject_fraction)
