"""tools/bench_input.py end to end at tiny scale on the shipped CIFAR-10 JPEGs: every method
(the optional ones too, the streaming rows at two stored sizes) feeds batches at a measured
rate, each repeat timed; the streaming rows read their shards every epoch, the cached ones
only once."""

import json
import os

import pytest

from tests import testdata
from tools import bench_input
from tools import cli


def test_every_method_is_timed_in_every_repeat(capsys):
  bench_input.COMMAND.call(["--image_dir", str(testdata.SAMPLE_DIR / "train"),
                            "--num_images", "40", "--batches", "2", "--repeats", "2",
                            "--op_resampler", "--deterministic", "--large_size=48", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert sorted(result["images_per_s"]) == sorted(bench_input.METHODS)
  large = bench_input.large_methods(48)
  streamed = (bench_input.STREAM_METHOD, bench_input.STREAM_RAW_METHOD)
  timed = (*bench_input.METHODS, *bench_input.OP_METHODS, bench_input.DETERMINISTIC_METHOD,
           *streamed, *large)
  assert sorted(result["runs"]) == sorted(timed)
  assert sorted(result["stream"]) == sorted((*streamed, *large))
  for ratio in ("project_host_stream_vs_project_host", "project_host_stream_raw_vs_project_host",
                "project_host_stream_48_vs_project_host_48",
                "project_host_stream_raw_48_vs_project_host_48"):
    assert result["ratios"][ratio] > 0
  assert all(len(v) == 2 and min(v) > 0 for v in result["runs"].values())
  assert result["settings"]["image_shape"] == [32, 32, 3]
  assert sorted(result["op_resampler"]) == ["project_device", "project_host"]
  assert result["deterministic"]["project_host"] > 0


def test_images_are_taken_round_robin_over_classes():
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 20)
  assert len(class_names) == 10
  assert [label for _, label in files] == list(range(10)) * 2


def test_a_missing_image_dir_names_the_flag(tmp_path):
  with pytest.raises(cli.ToolError, match="--image_dir"):
    bench_input.list_images(tmp_path / "nowhere", 10)
  with pytest.raises(SystemExit, match=r"^tools\.bench_input: error: --image_dir="):
    bench_input.COMMAND.call([f"--image_dir={tmp_path / 'nowhere'}"])


def test_written_data_has_per_class_counts_so_a_class_subset_works(tmp_path):
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 25)
  info = bench_input.write_tfrecords(files, class_names, str(tmp_path), (32, 32, 3), 2)
  assert info.split("train").per_class == (3,) * 5 + (2,) * 5  # round-robin: 25 of 10
  assert info.subset([0, 9]).split("train").num_examples == 5


def test_stream_rows_read_the_shards_every_epoch_and_cached_rows_once(tmp_path):
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 40)
  info = bench_input.write_tfrecords(files, class_names, str(tmp_path), (32, 32, 3), 2)
  cached = bench_input.project_host_dataset(info, seed=0)
  streamed = bench_input.project_host_dataset(info, seed=0, cache=None)
  batches_per_epoch = 40 // bench_input.BATCH_SIZE + 1
  for ds in (cached, streamed):  # more than an epoch: the cache is complete
    iterator = iter(ds)
    for _ in range(2 * batches_per_epoch + 1):
      next(iterator)
    del iterator
  for shard in info.split("train").shards:
    os.remove(shard)
  next(iter(cached))  # a new epoch from memory
  import tensorflow as tf
  with pytest.raises(tf.errors.NotFoundError):
    next(iter(streamed))  # a new epoch from the shards, which are gone


def test_raw_rows_stream_raw_records_of_the_same_images(tmp_path):
  import numpy as np
  import tensorflow as tf
  from pipeline import features
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 4)
  for f in ("png", "raw"):
    (tmp_path / f).mkdir()
  png, raw = (bench_input.write_tfrecords(files, class_names, str(tmp_path / f), (48, 48, 3),
                                          1, resize=True, image_format=f)
              for f in ("png", "raw"))
  assert raw.image_format == "raw"
  for a, b in zip(*(tf.data.TFRecordDataset(i.split("train").shards) for i in (png, raw))):
    a, b = features.parse_single(a), features.parse_single(b)
    assert b[features.FORMAT].numpy() == b"raw" and a[features.KEY] == b[features.KEY]
    np.testing.assert_array_equal(tf.io.decode_png(a[features.IMAGE]),
                                  features.decode_raw(b[features.IMAGE], 48, 48))


def test_larger_records_are_what_the_beam_job_stores_at_that_size(tmp_path):
  import tensorflow as tf
  from pipeline import features
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 4)
  info = bench_input.write_tfrecords(files, class_names, str(tmp_path), (64, 64, 3), 1,
                                     resize=True)
  assert info.image_shape == (64, 64, 3)
  [record, *_] = tf.data.TFRecordDataset(info.split("train").shards).take(1)
  example = features.parse_single(record.numpy())
  image = tf.io.decode_image(example[features.IMAGE], channels=3)
  assert image.shape == (64, 64, 3) and example[features.FORMAT].numpy() == b"png"
