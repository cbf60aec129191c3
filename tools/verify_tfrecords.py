r"""Reads every record of a data directory and checks it against its dataset_info.json.

  python -m tools.verify_tfrecords /tmp/cifar10_sample
  python -m tools.verify_tfrecords gs://bucket/cifar100 --splits=train,validation --nodecode

Checks CRCs, record counts per split and class, label ranges, unique keys and (unless
--nodecode) that every image decodes at its recorded size; see pipeline/verify.py. Prints one
line per split and one per problem, naming the shard and record index.

Exit status: 0 all good; 1 the records do not match dataset_info.json or are corrupt;
2 there is no readable dataset_info.json, or a shard it lists is missing.
"""

import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_list("splits", None, "Splits to check (default: every split in "
                  "dataset_info.json).")
flags.DEFINE_bool("decode", True, "Decode every image (slower); --nodecode checks bytes, "
                  "counts and labels only.")
flags.DEFINE_integer("max_errors", 20, "List at most this many problems.", lower_bound=1)


def run(data_dir, *, splits=None, decode=True, max_errors=20):
  """Verifies data_dir, prints the report; returns the exit status (see the module doc)."""
  from pipeline import dataset_info
  from pipeline import verify
  try:
    report = verify.verify_data_dir(data_dir, splits=splits, decode=decode,
                                    max_errors=max_errors)
  except dataset_info.DatasetInfoError as e:
    print(f"ERROR {e}", file=sys.stderr, flush=True)
    return 2
  print(report.summary(), flush=True)
  return 0 if report.ok else 1


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m tools.verify_tfrecords <data_dir> [--splits=...]")
  return run(argv[1], splits=FLAGS.splits, decode=FLAGS.decode, max_errors=FLAGS.max_errors)


if __name__ == "__main__":
  app.run(main)
