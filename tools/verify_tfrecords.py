r"""Reads every record of a data directory and checks it against its tfrecords_info.json.

  python -m tools.verify_tfrecords /tmp/cifar10_sample
  python -m tools.verify_tfrecords gs://bucket/cifar100 --splits=train,validation --nodecode

Checks CRCs, record counts per split and class, label ranges, unique keys, that raw records
(--image_format=raw) hold height*width*3 bytes, and (unless --nodecode) that every image
decodes at its recorded size; see pipeline/verify.py. Reads
--parallel_shards shards at once. Prints how many MB it read in how long, one line per split
and one per problem, naming the shard and record index.

Exit status: 0 all good; 1 the records do not match tfrecords_info.json or are corrupt;
2 there is no readable tfrecords_info.json, or a shard it lists is missing. A usage mistake
(no data directory, a bad flag) is one line `tools.verify_tfrecords: error: ...`, exit 1.
"""

import sys

from absl import flags

from tools import cli


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_list("splits", None, "Splits to check (default: every split in "
                    "tfrecords_info.json).", **fv)
  flags.DEFINE_bool("decode", True, "Decode every image (slower); --nodecode checks bytes, "
                    "counts and labels only.", **fv)
  flags.DEFINE_integer("max_errors", 20, "List at most this many problems.", lower_bound=1,
                       **fv)
  flags.DEFINE_integer("parallel_shards", 8, "Shards read at once (1: one after another).",
                       lower_bound=1, **fv)


def run(data_dir, *, splits=None, decode=True, max_errors=20, parallel_shards=8):
  """Verifies data_dir, prints the report; returns the exit status (see the module doc)."""
  from pipeline import dataset_info
  from pipeline import verify
  try:
    report = verify.verify_data_dir(data_dir, splits=splits, decode=decode,
                                    max_errors=max_errors, parallel_shards=parallel_shards)
  except dataset_info.DatasetInfoError as e:
    print(f"ERROR {e}", file=sys.stderr, flush=True)
    return 2
  print(report.summary(), flush=True)
  return 0 if report.ok else 1


def main(argv, flag_values):
  if len(argv) != 2:
    raise cli.ToolError("expected one data directory: python -m tools.verify_tfrecords "
                        "<data_dir> [--splits=...]")
  return run(argv[1], splits=flag_values.splits, decode=flag_values.decode,
             max_errors=flag_values.max_errors, parallel_shards=flag_values.parallel_shards)


COMMAND = cli.Command("tools.verify_tfrecords", define_flags, main, tensorflow=True)

if __name__ == "__main__":
  COMMAND.run()
