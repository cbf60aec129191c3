"""The Beam job's progress lines: what each says (an injected clock), and, from a real job on
the shipped sample, the right total and a last line that counts the images written."""

import logging
import re

from pipeline import build_tfrecords
from pipeline import job_progress
from pipeline import logs
from tests import testdata

SAMPLE_IMAGES = 500  # the shipped sample: 400 train and 100 test JPEGs
LINE = re.compile(r"build_tfrecords: ([\d,]+) of ([\d,]+) images \((\d+)%\), ([\d,]+) images/s, "
                  r"ETA (.+)$")


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def counted(plan, steps):
  """The lines a Counter of `plan` logs for `steps`: [(seconds later, images added)]."""
  clock, lines = Clock(), []
  counter = job_progress.Counter(plan, clock=clock, log=lines.append)
  for seconds, images in steps:
    clock.now += seconds
    counter.add(images)
  return lines


def test_one_worker_says_done_of_total_rate_and_eta_every_n_seconds():
  plan = job_progress.Plan(total=50_000, every_seconds=10)
  # 12,000 images in 10 s: a line; 3,000 more 2 s later: none (10 s not passed since).
  lines = counted(plan, [(10, 12_000), (2, 3_000), (10.5, 3_000)])
  assert lines == [
      "build_tfrecords: 12,000 of 50,000 images (24%), 1,200 images/s, ETA 32 s",
      "build_tfrecords: 18,000 of 50,000 images (36%), 800 images/s, ETA 40 s"]
  assert counted(job_progress.Plan(total=50, every_seconds=0), [(60, 10)]) == []


def test_an_estimated_total_says_about_and_no_eta_once_exceeded():
  plan = job_progress.Plan(total=1_000, approximate=True, every_seconds=1)
  assert counted(plan, [(1, 600), (1, 600)]) == [
      "build_tfrecords: 600 of about 1,000 images (60%), 600 images/s, ETA 1 s",
      "build_tfrecords: 1,200 of about 1,000 images, 600 images/s"]


def test_several_worker_processes_each_give_their_own_share_never_a_job_count():
  plan = job_progress.Plan(total=50_000, workers=2, every_seconds=30)
  assert counted(plan, [(30, 7_500), (30, 7_500), (30, 12_000)]) == [
      "build_tfrecords: this worker: 7,500 of about 25,000 images (30%; its share of 50,000 "
      "over 2 workers), 250 images/s, ETA 1 min 10 s",
      "build_tfrecords: this worker: 15,000 of about 25,000 images (60%; its share of 50,000 "
      "over 2 workers), 250 images/s, ETA 40 s",
      # Shards are whole: a worker may get more than an even share. No ETA then.
      "build_tfrecords: this worker: 27,000 images (more than its share of 50,000 over 2 "
      "workers), 300 images/s"]


def test_on_a_remote_runner_a_worker_gives_its_count_and_rate_only():
  plan = job_progress.Plan(total=50_000, workers=None, every_seconds=30)
  assert counted(plan, [(30, 600)]) == [
      "build_tfrecords: this worker: 600 images, 20 images/s (the runner's UI shows the job's)"]


def test_final_line_and_durations():
  assert job_progress.final_line(50_000, 49_990, 10, 41.6) == (
      "build_tfrecords: 50,000 of 50,000 images (100%) in 42 s, 1,202 images/s: "
      "49,990 written, 10 rejected")
  assert job_progress.final_line(0, 0, 0, 1.0) == (
      "build_tfrecords: 0 of 0 images (100%) in 1 s, 0 images/s: 0 written, 0 rejected")
  assert [job_progress.duration(s) for s in (0.4, 59, 61, 3599, 7500)] == [
      "0 s", "59 s", "1 min 01 s", "59 min 59 s", "2 h 05 min"]


def test_each_job_in_a_process_counts_from_zero():
  first, second = job_progress.Plan(total=10), job_progress.Plan(total=10)
  job_progress.process_counter(first).add(3)
  assert job_progress.process_counter(first).done == 3
  assert job_progress.process_counter(second).done == 0


def run_sample(tmp_path, caplog, argv=()):
  """The job on the shipped sample, a progress line (nearly) every image; returns the
  messages logged, the worker ones as Beam relays them, and the images written."""
  caplog.set_level(logging.INFO)
  result = build_tfrecords.run_job(build_tfrecords.JobConfig(
      source="image_dir", image_dir=str(testdata.SAMPLE_DIR), output_dir=str(tmp_path),
      num_shards=2, progress_seconds=1e-6), argv)
  written = sum(s["num_examples"] for s in result.info["splits"].values())
  return [r.getMessage() for r in caplog.records], written


def test_the_job_prints_done_of_the_planned_total_and_a_last_line_of_what_it_wrote(
    tmp_path, caplog):
  messages, written = run_sample(tmp_path, caplog)
  assert written == SAMPLE_IMAGES
  lines = [LINE.match(m) for m in messages if LINE.match(m)]
  assert len(lines) > 100
  done = [int(m[1].replace(",", "")) for m in lines]
  assert {m[2] for m in lines} == {"500"}  # the planned total, known before the job
  assert done == sorted(done) and done[-1] <= SAMPLE_IMAGES
  final = [m for m in messages if m.startswith("build_tfrecords: ") and " in " in m]
  assert len(final) == 1
  assert re.match(r"build_tfrecords: 500 of 500 images \(100%\) in \d+ s, [\d,]+ images/s: "
                  r"500 written, 0 rejected$", final[0]), final


def test_with_two_worker_processes_each_gives_its_share_and_the_last_line_is_exact(
    tmp_path, caplog):
  # The filter the commands put on absl's handler (pipeline/logs.py): it lets the workers'
  # lines through and unwraps them from Beam's relay ('Worker: ... message: "<line>" ...').
  caplog.handler.addFilter(logs.ProjectRecordsOnly())
  messages, written = run_sample(tmp_path, caplog, [
      "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
  shares = [m for m in messages if "build_tfrecords: this worker: " in m]
  assert shares and all(m.startswith("build_tfrecords: this worker: ") for m in shares), \
      shares[:3]
  assert all("its share of 500 over 2 workers" in m for m in shares), shares[:3]
  assert not any(m.startswith("Worker: ") for m in messages), messages[:3]
  assert not any(LINE.search(m) for m in messages)  # no worker claims the job's count
  final = [m for m in messages if m.startswith("build_tfrecords: ") and " in " in m]
  assert written == SAMPLE_IMAGES and len(final) == 1
  assert final[0].startswith("build_tfrecords: 500 of 500 images (100%) in ")
  assert final[0].endswith(": 500 written, 0 rejected")
