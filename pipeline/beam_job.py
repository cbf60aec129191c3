"""The Beam job: planned elements -> checked, encoded records -> sharded TFRecords + metadata.

    ReadInputs -> AssignSplits -> EncodeImages -> WriteShards       (<split>-*.tfrecord)
                                               -> WriteRejections   (rejected.csv)
                                               -> WriteMetadata     (dataset_info.json)

Each stage is a named, module-level `beam.ptransform_fn` (Beam pickles them, and the
multi-processing DirectRunner and remote runners import them); they are counted in the
`build_tfrecords` metrics namespace:

  examples/<split>               records written per split
  examples/<split>/<class name>  records written per split and class
  rejected/<reason>              inputs sent to rejected.csv instead of a shard
  converted/<kind>               images converted to 8-bit RGB (grayscale, rgba, palette, ...)
  excluded/class_subset          examples of classes left out by --classes/--num_classes
"""

import collections
import csv
import io
import logging
import math
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import dataset_info
from pipeline import features
from pipeline import images
from pipeline import sources
from pipeline import splits

NAMESPACE = "build_tfrecords"
REJECTED = "rejected"
EXAMPLES_PER_SHARD = 5000  # ~10 MB of CIFAR-size JPEG/PNG per shard (TF guidance: >= 10 MB).
FAILED_INFO_FILE = "dataset_info.failed.json"


class CreateElements(beam.Create):
  """beam.Create of planned element dicts without per-element type inference.

  beam.Create infers the PCollection's type as the Union of every element's type, which
  walks every dict, several times while the pipeline is built: about a third of the whole
  job's time for 10,000 images on the DirectRunner (BENCHMARKS.md). The elements are
  plain dicts of str/int values; the default (pickling) coder handles them either way.
  """

  def infer_output_type(self, unused_input_type):
    return beam.typehints.Dict[str, beam.typehints.Any]


def default_num_shards(num_examples):
  return max(1, math.ceil(num_examples / EXAMPLES_PER_SHARD))


def counter(name):
  return Metrics.counter(NAMESPACE, name)


class AssignSplitAndClass(beam.DoFn):
  """Holds out validation (and test, when the source has none) by key hash; remaps labels."""

  def __init__(self, kept, validation_fraction, test_fraction, has_test):
    self._new_label = {old: new for new, old in enumerate(kept)}
    self._fractions = (validation_fraction, test_fraction, has_test)

  def process(self, element):
    new_label = self._new_label.get(element["label"])
    if new_label is None:
      counter("excluded/class_subset").inc()
      return
    element = dict(element, label=new_label)
    element["split"] = splits.assign_split(element["key"], element["split"], *self._fractions)
    yield element


class Summary:
  """What dataset_info.json needs from the written examples: counts per (split, label), the
  image shapes and conversions."""

  def __init__(self):
    self.counts = collections.Counter()  # (split, label) -> examples
    self.shapes = set()  # (height, width)
    self.converted = collections.Counter()  # kind -> images

  def add(self, example):
    self.counts[(example["split"], example["label"])] += 1
    self.shapes.add(example["shape"])
    if example["converted"]:
      self.converted[example["converted"]] += 1

  def merge(self, other):
    self.counts.update(other.counts)
    self.shapes |= other.shapes
    self.converted.update(other.converted)
    return self


class SummarizeExamples(beam.CombineFn):
  """Encoded examples -> one Summary. Beam lifts the adding into the stage that encodes (a
  partial Summary per bundle, as a hand-kept per-bundle accumulator would), and merges the
  partial ones after one small shuffle."""

  def create_accumulator(self):
    return Summary()

  def add_input(self, summary, example):
    summary.add(example)
    return summary

  def merge_accumulators(self, summaries):
    summaries = iter(summaries)
    total = next(summaries)
    for s in summaries:
      total.merge(s)
    return total

  def extract_output(self, summary):
    return summary


class EncodeExample(beam.DoFn):
  """Reads, checks, converts and encodes one image; bad inputs go to the `rejected` output.

  An example is {"split", "label", "shape": (height, width), "converted": kind or None,
  "record": serialized tf.Example}: the record for the shards, the rest for the summary.
  """

  def __init__(self, class_names, image_size=None):
    self._class_names = class_names
    self._image_size = image_size

  def setup(self):
    self._done = 0
    self._start = time.time()

  def process(self, element):
    source = element.get("path") or element["key"]
    try:
      if "pixels" in element:
        encoded, fmt, pixels = images.from_pixels(element["pixels"], self._image_size)
        kind = None
      else:
        encoded, fmt, pixels, kind = images.prepare(_read(element["path"]), self._image_size)
    except images.BadImage as e:
      counter(f"rejected/{e.reason}").inc()
      yield beam.pvalue.TaggedOutput(REJECTED, (source, e.reason, e.detail))
      return
    if kind:
      counter(f"converted/{kind}").inc()
    split, label = element["split"], element["label"]
    height, width = pixels.shape[:2]
    record = features.encode_example(
        key=element["key"], image=encoded, image_format=fmt, height=height, width=width,
        label=label, coarse_label=element.get("coarse_label", features.NO_COARSE_LABEL))
    counter(f"examples/{split}").inc()
    counter(f"examples/{split}/{self._class_names[label]}").inc()
    self._done += 1
    if self._done % 5000 == 0:  # Progress: the DirectRunner shows none of its own.
      logging.info("encoded %d images in this worker (%.0f/s)", self._done,
                   self._done / (time.time() - self._start))
    yield {"split": split, "label": label, "shape": (height, width), "converted": kind,
           "record": record}


def _read(path):
  try:
    return sources.read_bytes(path)
  except FileNotFoundError:
    raise images.BadImage("missing_file", "no such file") from None
  except IsADirectoryError:
    raise images.BadImage("not_an_image", "a directory") from None
  except Exception as e:  # pylint: disable=broad-except
    # OSError, but also what remote file systems raise of their own (gcsfs's HttpError on a
    # 403, say) and ValueError for a path fsspec cannot parse: all mean "could not read it".
    raise images.BadImage("read_error", f"{type(e).__name__}: {e}"[:500]) from None


def rejected_csv_line(rejection):
  buf = io.StringIO()
  csv.writer(buf, lineterminator="").writerow(rejection)
  return buf.getvalue()


def split_of(example, num_partitions, split_names):
  return split_names.index(example["split"])


def get_record(example):
  return example["record"]


def reason_one(rejection):
  return rejection[1], 1


def _count_planned_rejection(rejection):
  counter(f"rejected/{rejection[1]}").inc()


def write_info(summary, *, output_dir, meta, split_names, files, rejected,
               max_reject_fraction):
  """Assembles dataset_info.json from the job's Summary and side outputs and writes it.
  Returns the name written: dataset_info.json, or the failed variant when too much was
  rejected."""
  num_classes = len(meta["class_names"])
  shard_names = sorted(f.rsplit("/", 1)[-1] for f in files)
  split_infos = {}
  for split in split_names:
    per_class = [0] * num_classes
    for (s, label), n in summary.counts.items():
      if s == split:
        per_class[label] = n
    shards = [f for f in shard_names if f.startswith(split + "-")]
    split_infos[split] = dataset_info.split_info(output_dir, shards, per_class)
  shapes = sorted(summary.shapes)
  written = sum(s.num_examples for s in split_infos.values())
  info = dataset_info.DatasetInfo(
      data_dir=output_dir, splits=split_infos,
      image_shape=(shapes[0][0], shapes[0][1], 3) if len(shapes) == 1 else None,
      rejected=dataset_info.rejected_summary(dict(rejected), written),
      converted=dict(sorted(summary.converted.items())), **meta)
  ok = info.rejected["fraction"] <= max_reject_fraction
  name = features.INFO_FILE if ok else FAILED_INFO_FILE
  dataset_info.write(info, name=name, create=FileSystems.create)
  return name


# --- the stages, in the order the job runs them ------------------------------------------------
# Named as Beam and TFX name transforms, in CamelCase.
# pylint: disable=invalid-name


@beam.ptransform_fn
def ReadInputs(pipeline, plan):
  """The plan -> (elements, rejections found while planning, counted here)."""
  planned = []
  if plan.elements:
    # Planned paths come sorted by folder, i.e. by class, and Reshuffle keeps their order on
    # the local runners, so shards would hold long runs of one class: readers then see a
    # class-skewed stream that no shuffle buffer smaller than the split can fix. Order them
    # by key hash instead: mixed, and the same on every rerun.
    mixed = sorted(plan.elements, key=lambda e: splits.key_fraction(e["key"]))
    planned.append(pipeline | "PathElements" >> CreateElements(mixed, reshuffle=False))
  if plan.reads:
    planned.append(pipeline | "ArchiveReads" >> beam.Create(plan.reads)
                   | "ReadArchives" >> beam.FlatMap(sources.run_read))
  if not planned:
    planned.append(pipeline | "NoElements" >> beam.Create([]))
  elements = planned | "All" >> beam.Flatten()
  rejections = pipeline | "PlanRejections" >> beam.Create(plan.rejected)
  _ = rejections | "CountPlanned" >> beam.Map(_count_planned_rejection)
  return elements, rejections


@beam.ptransform_fn
def AssignSplits(elements, kept, validation_fraction, test_fraction, has_test):
  """Elements -> elements of the kept classes, relabelled, with their split."""
  return elements | "AssignSplitAndClass" >> beam.ParDo(AssignSplitAndClass(
      kept, validation_fraction, test_fraction, has_test))


@beam.ptransform_fn
def EncodeImages(elements, class_names, image_size):
  """Elements -> (examples, rejections): see EncodeExample."""
  encoded = (
      elements
      # Spread the expensive reads and decodes over workers (path lists arrive as one bundle).
      | "Spread" >> beam.Reshuffle()
      | "Encode" >> beam.ParDo(EncodeExample(class_names, image_size)).with_outputs(
          REJECTED, main="examples"))
  return encoded.examples, encoded[REJECTED]


@beam.ptransform_fn
def WriteSplit(examples, output_dir, split, num_shards):
  """One split's records -> `<output_dir>/<split>-NNNNN-of-MMMMM.tfrecord`."""
  return (examples
          | "Records" >> beam.Map(get_record)
          | "Write" >> beam.io.WriteToTFRecord(
              dataset_info.join(output_dir, split), file_name_suffix=".tfrecord",
              num_shards=num_shards, shard_name_template="-SSSSS-of-NNNNN"))


@beam.ptransform_fn
def WriteShards(examples, output_dir, split_names, num_shards):
  """Examples -> the shard files of every split (the names written)."""
  parts = examples | "BySplit" >> beam.Partition(split_of, len(split_names), split_names)
  files = [parts[i] | f"Write_{split}" >> WriteSplit(output_dir, split, num_shards[split])
           for i, split in enumerate(split_names)]
  return files | "ShardFiles" >> beam.Flatten()


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
  """Examples, shard files and rejection counts -> dataset_info.json (or the failed variant);
  returns the name written."""
  # CombineGlobally yields one Summary even of no examples, so the file is always written.
  return (examples
          | "Summarize" >> beam.CombineGlobally(SummarizeExamples())
          | "WriteInfo" >> beam.Map(
              write_info, output_dir=output_dir, meta=meta, split_names=split_names,
              files=beam.pvalue.AsList(files), rejected=beam.pvalue.AsList(reason_counts),
              max_reject_fraction=max_reject_fraction))


# pylint: enable=invalid-name


def build(pipeline, plan, *, output_dir, split_names, num_shards, kept, validation_fraction,
          test_fraction, image_size, max_reject_fraction, command):
  """Adds the whole job to `pipeline`. num_shards: split -> count."""
  p = pipeline
  class_names = [plan.class_names[i] for i in kept]
  elements, planned_rejections = p | "ReadInputs" >> ReadInputs(plan)
  examples, rejections = (
      elements
      | "AssignSplits" >> AssignSplits(kept, validation_fraction, test_fraction, plan.has_test)
      | "EncodeImages" >> EncodeImages(class_names, image_size))
  files = examples | "WriteShards" >> WriteShards(output_dir, split_names, num_shards)
  reason_counts = ((planned_rejections, rejections)
                   | "WriteRejections" >> WriteRejections(output_dir))
  meta = {"source": plan.description, "class_names": tuple(class_names),
          "coarse_class_names": tuple(plan.coarse_class_names), "command": command,
          "skipped": dict(plan.skipped)}
  return examples | "WriteMetadata" >> WriteMetadata(
      files, reason_counts, output_dir=output_dir, meta=meta, split_names=split_names,
      max_reject_fraction=max_reject_fraction)
