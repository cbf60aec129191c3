"""The Beam job's shards: which example goes where, and no half shard under a final name."""

import collections
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from pipeline import beam_job
from pipeline import build_tfrecords
from pipeline import features
from pipeline import sources
from tests import testdata


def shard_files(out):
  """Files under a final shard name (the temporary ones start with beam_job.TEMP_PREFIX)."""
  return sorted(n for n in os.listdir(out)
                if n.startswith(features.TFDS_NAME + "-") and ".tfrecord-" in n)


def test_shards_are_a_hash_of_the_key_mixed_and_the_same_for_any_worker_count(tmp_path):
  contents = {}
  for name, argv in (("one", []), ("two", ["--direct_running_mode=multi_processing",
                                           "--direct_num_workers=2"])):
    out = tmp_path / name
    build_tfrecords.run_job(build_tfrecords.JobConfig(
        source="image_dir", image_dir=str(testdata.SAMPLE_DIR), output_dir=str(out),
        validation_fraction=0.0, num_shards=3), argv)
    contents[name] = {f: (out / f).read_bytes() for f in shard_files(out)}
  # Byte for byte the same files, whatever the worker count.
  assert contents["one"] == contents["two"]
  assert sorted(contents["one"]) == [features.shard_name(s, i, 3) for s in ("test", "train")
                                     for i in range(3)]
  out = tmp_path / "one"
  for i in range(3):
    name = features.shard_name("train", i, 3)
    records = [features.parse_single(r) for r in tf.data.TFRecordDataset(str(out / name))]
    keys = [r[features.KEY].numpy().decode() for r in records]
    assert all(beam_job.shard_index(k, 3) == i for k in keys)
    assert 100 < len(keys) < 170  # about a third of the 400 train images each
    # Mixed classes within each shard, not runs of one folder.
    labels = [int(r[features.LABEL]) for r in records]
    assert len(set(labels[:30])) >= 7
    assert sum(a != b for a, b in zip(labels, labels[1:])) > 0.75 * len(labels)
    assert max(collections.Counter(labels).values()) < 0.2 * len(labels)


@pytest.mark.parametrize("max_open", [256, 2])
def test_every_planned_path_is_in_the_plan_of_its_own_shard_and_no_other(
    tmp_path, monkeypatch, max_open):
  # The launcher shards the plan (the job then groups nothing): every kept path once, in the
  # plan file of its split's shard, and every shard has a plan file, the empty ones too;
  # also when fewer files may be open at once than there are shards (2 for 9: five reads).
  monkeypatch.setattr(beam_job, "MAX_OPEN_PLANS", max_open)
  plan = sources.plan_image_dir(str(testdata.SAMPLE_DIR))
  kept = [0, 3, 5]
  num_shards = {"train": 3, "validation": 2, "test": 4}
  shard_plans, excluded = beam_job.write_shard_plans(
      str(tmp_path), plan.elements, kept=kept, validation_fraction=0.2, test_fraction=0.0,
      has_test=plan.has_test, num_shards=num_shards)
  assert [shard for shard, _ in shard_plans] == [
      (split, i) for split, n in num_shards.items() for i in range(n)]
  seen = collections.Counter()
  for (split, index), path in shard_plans:
    assert os.path.basename(path).startswith(beam_job.PLAN_PREFIX)
    (_, elements) = beam_job.read_shard_plan(((split, index), path))
    for e in elements:
      assert e["split"] == split and beam_job.shard_index(e["key"], num_shards[split]) == index
      seen[e["key"]] += 1
  kept_keys = {e["key"] for e in plan.elements if e["label"] in kept}
  assert set(seen) == kept_keys and set(seen.values()) == {1}
  assert excluded == len(plan.elements) - len(kept_keys) > 0
  # Labels are the kept classes' new ones; validation is held out of the source's train.
  everything = [e for sp in shard_plans for e in beam_job.read_shard_plan(sp)[1]]
  assert {e["label"] for e in everything} == {0, 1, 2}
  assert {e["split"] for e in everything} == {"train", "validation", "test"}


def test_killed_job_leaves_no_file_under_a_final_shard_name(tmp_path):
  # A path-list row served by an HTTP server that never answers (a listening socket that
  # nobody accepts from): reading it blocks inside the stage writing the shard, after it has
  # begun its file; the job is killed there, as by an OOM or a preemption. (A FIFO no longer
  # blocks: the job rejects it unread.)
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(8)
  blocks = f"http://127.0.0.1:{server.getsockname()[1]}/blocks.jpg"
  rows = [f"{path},{name}" for path, name in testdata.sample_files("train", ("cat", "dog"))]
  csv_path = tmp_path / "list.csv"
  csv_path.write_text("path,label\n" + "\n".join(rows + [f"{blocks},cat"]) + "\n")
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "pipeline.build_tfrecords", "--source=path_list",
         f"--path_list={csv_path}", f"--output_dir={out}", "--num_shards=1",
         "--validation_fraction=0", "--test_fraction=0"]
  job = subprocess.Popen(cmd, cwd=testdata.REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 120
    while not (out.exists() and any(n.startswith(beam_job.TEMP_PREFIX)
                                    for n in os.listdir(out))):
      assert job.poll() is None, job.stderr.read().decode()[-2000:]
      assert time.time() < deadline, "the shard's temporary file never appeared"
      time.sleep(0.2)
    time.sleep(1)  # the writer is now blocked on the pipe, its shard begun
    assert job.poll() is None
  finally:
    job.send_signal(signal.SIGKILL)
    job.wait()
    server.close()
  names = os.listdir(out)
  assert not shard_files(out), names
  assert features.INFO_FILE not in names and features.REJECTED_FILE not in names
  assert any(n.startswith(beam_job.TEMP_PREFIX) for n in names)
  # The next run writes the shard and deletes what the killed one left: its shard and plan,
  # and the beam-temp-rejected-* folder of the sink of rejected.csv.
  csv_path.write_text("path,label\n" + "\n".join(rows) + "\n")
  done = subprocess.run(cmd, cwd=testdata.REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  names = os.listdir(out)
  assert shard_files(out) == [features.shard_name("train", 0, 1)]
  assert {features.INFO_FILE, features.REJECTED_FILE} <= set(names)
  assert not any(n.startswith((beam_job.TEMP_PREFIX, "beam-temp-")) for n in names), names
