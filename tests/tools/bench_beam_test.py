"""tools/bench_beam.py end to end at tiny scale on the shipped CIFAR-10 JPEGs: its claim is
that the plain loop does the Beam job's work (the same records per split), timed."""

import json

from tests import testdata
from tools import bench_beam


def test_the_plain_loop_and_the_job_write_the_same_records(capsys):
  bench_beam.COMMAND.call(["--image_dir", str(testdata.SAMPLE_DIR), "--limit", "30",
                           "--repeats", "1", "--methods", "plain_loop,beam_1_worker", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert sorted(result["images_per_s"]) == ["beam_1_worker", "plain_loop"]
  assert all(v > 0 for v in result["images_per_s"].values())
  assert result["settings"]["num_images"] == 30  # --limit drew 30 images...
  # ... and both wrote every one of them, split alike.
  assert result["records"]["plain_loop"] == result["records"]["beam_1_worker"]
  assert sum(result["records"]["plain_loop"].values()) == 30
  assert result["records"]["plain_loop"]["train"] > 0


def test_an_unknown_method_is_a_one_line_error():
  import pytest
  with pytest.raises(SystemExit, match=r"^tools\.bench_beam: error: --methods: unknown "):
    bench_beam.COMMAND.call(["--methods=plain_loop,beam_9_workers"])


def test_plain_loop_writes_readable_tfrecords(tmp_path):
  import tensorflow as tf
  from pipeline import dataset_info
  from pipeline import features
  counts = bench_beam.plain_loop(str(testdata.SAMPLE_DIR), str(tmp_path))
  records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(map(str, tmp_path.glob(
      "*.tfrecord-*"))))]
  assert len(records) == sum(counts.values()) == 500
  example = features.parse_single(records[0])
  assert int(example[features.HEIGHT]) == 32
  # Its tfrecords_info.json is the job's (one writer), describing what it wrote.
  info = dataset_info.load(str(tmp_path))
  assert {s: info.split(s).num_examples for s in info.splits} == counts
  assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
  assert sum(sum(s.per_class) for s in info.splits.values()) == 500


def test_peak_rss_runs_the_job_in_a_child_at_each_size(capsys):
  bench_beam.COMMAND.call(["--image_dir", str(testdata.SAMPLE_DIR), "--peak_rss", "20,40",
                           "--methods", "beam_1_worker", "--json"])
  rows = json.loads(capsys.readouterr().out)["rows"]
  assert [(r["images"], r["method"]) for r in rows] == [(20, "beam_1_worker"),
                                                         (40, "beam_1_worker")]
  # The child's own peak: at least an interpreter with Beam imported (~100 MB), not this
  # test process's (pytest with TensorFlow imported, ~600 MB or more, is not counted).
  assert all(50 < r["peak_rss_mb"] < 2000 and r["seconds"] > 0 for r in rows)
