"""A bad --data_dir fails before training with an error naming the bad thing."""

import json
import re
import os

import pytest
import tensorflow as tf

from pipeline import dataset_info
from pipeline import features
from trainer import config as config_lib
from trainer import train as train_lib


def train(data_dir, model_dir, **kwargs):
  config = config_lib.Config(data_dir=str(data_dir), model_dir=str(model_dir), epochs=1,
                             batch_size=8, steps_per_epoch=1, **kwargs)
  return train_lib.train_and_evaluate(config, tf.distribute.OneDeviceStrategy("/cpu:0"))


@pytest.fixture(scope="module")
def good_dir(make_data_dir):
  return make_data_dir(per_class=10)  # read-only: tests damage copies of it


def copy_dir(src, dst):
  os.makedirs(dst)
  for name in os.listdir(src):
    with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
      g.write(f.read())
  return dst


def test_a_dir_without_dataset_info(tmp_path):
  with pytest.raises(dataset_info.DatasetInfoError, match="tfrecords_info.json not found .*"
                     "was it written by `python -m pipeline.build_tfrecords`"):
    train(tmp_path, tmp_path / "model")
  assert not (tmp_path / "model").exists()


def test_a_corrupt_shard_is_named_with_its_record(good_dir, tmp_path):
  bad = copy_dir(good_dir, tmp_path / "bad")
  shard = os.path.join(bad, features.shard_name("train", 1, 2))
  data = bytearray(open(shard, "rb").read())
  data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of a record
  open(shard, "wb").write(bytes(data))
  with pytest.raises(dataset_info.DatasetInfoError) as e:
    train(bad, tmp_path / "model")
  assert features.shard_name("train", 1, 2) in str(e.value)
  assert "record" in str(e.value) and not (tmp_path / "model" / "checkpoints").exists()


def test_shards_that_do_not_match_the_counts(good_dir, tmp_path):
  bad = copy_dir(good_dir, tmp_path / "bad")
  info_path = os.path.join(bad, features.INFO_FILE)
  info = json.load(open(info_path))
  info["splits"]["validation"]["num_examples"] += 5
  json.dump(info, open(info_path, "w"))
  with pytest.raises(dataset_info.DatasetInfoError, match="validation"):
    train(bad, tmp_path / "model")


def test_a_missing_shard(good_dir, tmp_path):
  bad = copy_dir(good_dir, tmp_path / "bad")
  os.remove(os.path.join(bad, features.shard_name("test", 0, 2)))
  with pytest.raises(dataset_info.DatasetInfoError, match=re.escape(features.shard_name("test", 0, 2))):
    train(bad, tmp_path / "model")


def test_verification_can_be_skipped_and_a_good_dir_trains(good_dir, tmp_path):
  results = train(good_dir, tmp_path / "model", verify_data=False)
  assert results["epochs_run"] == 1 and results["test_examples"] == 30
