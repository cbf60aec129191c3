"""tools/bench_beam.py end to end at tiny scale on the shipped CIFAR-10 JPEGs."""

import json

from tests import testdata
from tools import bench_beam


def test_json_output_has_every_method_writing_the_same_records(capsys):
  bench_beam.main(["--image_dir", str(testdata.SAMPLE_DIR), "--limit", "30", "--repeats", "1",
                   "--methods", "plain_loop,beam_1_worker", "--json"])
  result = json.loads(capsys.readouterr().out)
  rates = result["images_per_s"]
  assert sorted(rates) == ["beam_1_worker", "plain_loop"]
  assert all(isinstance(v, float) and v > 0 for v in rates.values())
  assert result["settings"]["num_images"] == 30
  # The plain loop does the job's work: the same records in every split.
  assert result["records"]["plain_loop"] == result["records"]["beam_1_worker"]
  assert sum(result["records"]["plain_loop"].values()) == 30
  assert result["records"]["plain_loop"]["train"] > 0
  assert result["ratios"]["beam_1_worker_vs_plain_loop"] == (
      rates["beam_1_worker"] / rates["plain_loop"])
  assert "beam_1_worker" in bench_beam.format_table(result)


def test_plain_loop_writes_readable_tfrecords(tmp_path):
  import tensorflow as tf
  from pipeline import dataset_info
  from pipeline import features
  counts = bench_beam.plain_loop(str(testdata.SAMPLE_DIR), str(tmp_path))
  records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(map(str, tmp_path.glob(
      "*.tfrecord"))))]
  assert len(records) == sum(counts.values()) == 500
  example = features.parse_single(records[0])
  assert int(example[features.HEIGHT]) == 32
  # Its dataset_info.json is the job's (one writer), describing what it wrote.
  info = dataset_info.load(str(tmp_path))
  assert {s: info.split(s).num_examples for s in info.splits} == counts
  assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
  assert sum(sum(s.per_class) for s in info.splits.values()) == 500


def test_peak_rss_runs_the_job_in_a_child_at_each_size(capsys):
  bench_beam.main(["--image_dir", str(testdata.SAMPLE_DIR), "--peak_rss", "20,40",
                   "--methods", "beam_1_worker", "--json"])
  rows = json.loads(capsys.readouterr().out)["rows"]
  assert [(r["images"], r["method"]) for r in rows] == [(20, "beam_1_worker"),
                                                         (40, "beam_1_worker")]
  # The child's own peak: at least an interpreter with Beam imported (~100 MB), not this
  # test process's (pytest with TensorFlow imported, ~600 MB or more, is not counted).
  assert all(50 < r["peak_rss_mb"] < 2000 and r["seconds"] > 0 for r in rows)
