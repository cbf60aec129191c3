"""The job's metadata: what the written examples add up to (Summary, a CombineFn over them), and
tfrecords_info.json and TFDS's metadata written from it once every shard is in place."""

import collections

import apache_beam as beam

from pipeline import dataset_info
from pipeline import features
from pipeline import tfds_metadata

FAILED_INFO_FILE = "tfrecords_info.failed.json"
LEGACY_FAILED_INFO_FILE = "dataset_info.failed.json"  # its name before 2026-12-02


class Summary:
  """What the metadata needs from the written examples: counts per (split, label) and per
  (split, shard), bytes per split, the image shapes and conversions."""

  def __init__(self):
    self.counts = collections.Counter()  # (split, label) -> examples
    self.shard_counts = collections.Counter()  # (split, shard index) -> examples
    self.bytes = collections.Counter()  # split -> bytes of its serialized examples
    self.shapes = set()  # (height, width)
    self.converted = collections.Counter()  # kind -> images (an image may have two kinds)

  def add(self, example):
    self.counts[(example["split"], example["label"])] += 1
    self.shard_counts[(example["split"], example["shard"])] += 1
    self.bytes[example["split"]] += example["bytes"]
    self.shapes.add(example["shape"])
    self.converted.update(example["converted"])

  def merge(self, other):
    self.counts.update(other.counts)
    self.shard_counts.update(other.shard_counts)
    self.bytes.update(other.bytes)
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


def write_info(summary, *, output_dir, meta, split_names, files, rejected,
               max_reject_fraction):
  """Assembles tfrecords_info.json from the job's Summary and side outputs and writes it,
  after TFDS's metadata (tfds_metadata.py), so that a directory with tfrecords_info.json
  is complete. Returns the name written: tfrecords_info.json, or the failed variant (and no
  TFDS metadata) when too much was rejected."""
  num_classes = len(meta["class_names"])
  shard_names = sorted(f.rsplit("/", 1)[-1] for f in files)
  split_infos = {}
  for split in split_names:
    per_class = [0] * num_classes
    for (s, label), n in summary.counts.items():
      if s == split:
        per_class[label] = n
    shards = [f for f in shard_names if f.startswith(features.shard_prefix(split))]
    split_infos[split] = dataset_info.split_info(output_dir, shards, per_class)
  shapes = sorted(summary.shapes)
  written = sum(s.num_examples for s in split_infos.values())
  info = dataset_info.DatasetInfo(
      data_dir=output_dir, splits=split_infos,
      image_shape=(shapes[0][0], shapes[0][1], 3) if len(shapes) == 1 else None,
      rejected=dataset_info.rejected_summary(dict(rejected), written),
      converted=dict(sorted(summary.converted.items())), **meta)
  ok = info.rejected["fraction"] <= max_reject_fraction
  if ok:
    lengths = {split: [summary.shard_counts[(split, i)] for i in range(len(s.shards))]
               for split, s in split_infos.items()}
    tfds_metadata.write(
        output_dir, info.class_names, info.image_shape,
        {split: (lengths[split], summary.bytes[split]) for split in split_infos},
        description=f"Written by `{info.command}` from {info.source}." if info.command
        else f"Written by pipeline.build_tfrecords from {info.source}.", beam=True,
        image_format=info.image_format)
  name = features.INFO_FILE if ok else FAILED_INFO_FILE
  dataset_info.write(info, name=name, beam=True)
  return name
