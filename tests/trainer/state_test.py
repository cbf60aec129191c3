"""State you can trust (issue 15, trainer side): damaged checkpoints fall back or stop by
name, flags.txt stays the last run's until the new flags fit, a non-finite loss stops the run,
one run per model_dir, and a full disk ends the run with one line.

Every damage is done to real files of a real (tiny) run: one 2-epoch run is trained once per
module and copied into each test's tmp_path. Runs are in this process (one device) except
where the process itself is the point (exit status, the one-line message, a second process
holding the lock).
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline import dataset_info
from tests import processes
from tests import testdata
from trainer import checkpoints as checkpoints_lib
from trainer import config as config_lib
from trainer import lock as lock_lib
from trainer import strategy as strategy_lib
from trainer import train as train_lib
from trainer import workdir


@pytest.fixture(scope="module")
def strategy():
  return strategy_lib.make_strategy("one_device")


def _config(data_dir, model_dir, **overrides):
  settings = dict(data_dir=data_dir, model_dir=str(model_dir), batch_size=16, epochs=2,
                  steps_per_epoch=2, learning_rate=1e-3, augment=False, verify_data=False)
  settings.update(overrides)
  return config_lib.Config(**settings)


@pytest.fixture(scope="module")
def trained(data_dir, strategy, tmp_path_factory):
  """A finished 2-epoch run (checkpoints ckpt-1 and ckpt-2, best/): copy it, do not touch."""
  model_dir = tmp_path_factory.mktemp("trained") / "run"
  train_lib.train_and_evaluate(_config(data_dir, model_dir), strategy)
  return model_dir


@pytest.fixture
def run_dir(trained, tmp_path):
  """A copy of the trained run, with flags.txt naming the copy (as its own run would)."""
  model_dir = tmp_path / "run"
  shutil.copytree(trained, model_dir)
  flags = (model_dir / "flags.txt").read_text().replace(f"={trained}\n", f"={model_dir}\n")
  (model_dir / "flags.txt").write_text(flags)
  return model_dir


def _data_file(model_dir, number):
  [name] = [n for n in os.listdir(model_dir / "checkpoints")
            if n.startswith(f"ckpt-{number}.data-")]
  return model_dir / "checkpoints" / name


def _truncate(model_dir, number):
  path = _data_file(model_dir, number)
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _zero(model_dir, number):
  path = _data_file(model_dir, number)
  path.write_bytes(bytes(path.stat().st_size))


def _delete_index(model_dir, number):
  os.remove(model_dir / "checkpoints" / f"ckpt-{number}.index")


DAMAGES = {"truncated": _truncate, "zeroed": _zero, "index_deleted": _delete_index}


def _restore_latest(data_dir, strategy, model_dir):
  """What a rerun restores: (the checkpoint's path, the epochs it has done)."""
  config = _config(data_dir, model_dir)
  model, optimizers, state = train_lib.build(config, dataset_info.load(data_dir), strategy)
  checkpoints = checkpoints_lib.Checkpoints(workdir.RunDirs(str(model_dir)), model,
                                            optimizers, state)
  return checkpoints.restore_latest(), int(state.epoch)


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "IndexError: Read less bytes than requested"),  # finding 1
    ("zeroed", "Checksum does not match"),  # finding 2: it was blamed on the flags
    ("index_deleted", "NotFoundError: "),
])
def test_a_damaged_latest_checkpoint_is_skipped_for_the_previous(damage, reason, data_dir,
                                                                 strategy, run_dir, caplog):
  DAMAGES[damage](run_dir, 2)
  with caplog.at_level(logging.WARNING):
    path, epochs_done = _restore_latest(data_dir, strategy, run_dir)
  assert (path, epochs_done) == (f"{run_dir}/checkpoints/ckpt-1", 1)
  skipped = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
  assert len(skipped) == 1, skipped
  assert skipped[0].startswith(f"skipping checkpoint {run_dir}/checkpoints/ckpt-2: it cannot be "
                               "read ("), skipped[0]
  assert reason in skipped[0]


def test_a_deleted_index_no_longer_starts_the_run_afresh(data_dir, strategy, run_dir):
  # Finding 3: with ckpt-2.index gone, the rerun started again from epoch 0, rewrote
  # history.csv and pruned the good ckpt-1. Now it resumes from ckpt-1, trains epoch 2 again
  # and saves it over the damaged one (which reads back before anything is pruned).
  first_row = workdir.read_history(str(run_dir))[0]
  _delete_index(run_dir, 2)
  results = train_lib.train_and_evaluate(_config(data_dir, run_dir, epochs=2), strategy)
  assert (results["resumed_from_epoch"], results["epochs_run"]) == (1, 2)
  history = workdir.read_history(str(run_dir))
  assert [r["epoch"] for r in history] == [1, 2] and history[0] == first_row
  kept = checkpoints_lib.checkpoint_numbers(str(run_dir / "checkpoints"))
  assert kept == [2, 1]
  for number in kept:
    assert checkpoints_lib.unreadable(f"{run_dir}/checkpoints/ckpt-{number}") is None
  assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("ckpt-2")


def test_when_no_checkpoint_reads_the_run_stops_saying_they_are_corrupt(data_dir, strategy,
                                                                        run_dir):
  _delete_index(run_dir, 2)
  _zero(run_dir, 1)
  history = (run_dir / "history.csv").read_text()
  with pytest.raises(checkpoints_lib.CheckpointError) as error:
    train_lib.train_and_evaluate(_config(data_dir, run_dir, epochs=3), strategy)
  message = str(error.value)
  assert message.startswith(f"--model_dir={run_dir}: every checkpoint in {run_dir}/checkpoints "
                            "is corrupt or incomplete: ckpt-2 (")
  assert "ckpt-1 (" in message and "does not fit" not in message
  # No fresh start: nothing was trained, rewritten or pruned.
  assert (run_dir / "history.csv").read_text() == history
  assert checkpoints_lib.checkpoint_numbers(str(run_dir / "checkpoints")) == [2, 1]
  assert not (run_dir / lock_lib.LOCK_FILE).exists()


def test_flags_that_do_not_fit_the_model_dir_leave_its_flags_txt(data_dir, strategy, run_dir):
  # Finding 6: the refused run used to overwrite flags.txt first.
  before = (run_dir / "flags.txt").read_text()
  with pytest.raises(config_lib.ConfigError, match="does not fit this model"):
    train_lib.train_and_evaluate(_config(data_dir, run_dir, epochs=3, model="basic"), strategy)
  assert (run_dir / "flags.txt").read_text() == before
  assert "--model=simple\n" in before


def test_a_loss_that_turns_nan_mid_run_stops_at_once_and_exports_the_best(data_dir, strategy,
                                                                          tmp_path):
  # Finding 5, a run that diverges after a good epoch: SGD at 3.0 gives a finite epoch 1
  # (the best), a huge epoch 2 and nan in epoch 3 (--deterministic: the same steps every
  # time). The run stops in the epoch that went nan; nothing of it is saved, the checkpoints
  # and best/ stay, and the best weights are exported.
  model_dir = tmp_path / "run"
  config = _config(data_dir, model_dir, optimizer="sgd", learning_rate=3.0, epochs=6,
                   deterministic=True)
  with pytest.raises(train_lib.NonFiniteLossError) as error:
    train_lib.train_and_evaluate(config, strategy)
  message = str(error.value)
  match = re.match(r"epoch (\d+), (.+); stopped\. The checkpoint of epoch (\d+) is kept and the "
                   r"best weights \(epoch (\d+), val_loss [0-9.]+\) are exported to ", message)
  assert match, message
  epoch, kept, best = int(match.group(1)), int(match.group(3)), int(match.group(4))
  assert re.fullmatch(r"step \d/2: the training (loss is (nan|inf)|gradient norm is (nan|inf) "
                      r"\(loss .*\))|validation: the loss is (nan|inf)", match.group(2)), message
  assert kept == epoch - 1 and 1 <= best <= kept
  assert message.endswith("Try a lower --learning_rate (now 3)")
  assert testdata.latest_checkpoint_epoch(model_dir) == kept
  assert [r["epoch"] for r in workdir.read_history(str(model_dir))] == list(range(1, kept + 1))
  assert (model_dir / "best" / f"ckpt-{best}.index").exists()
  assert (model_dir / "model.keras").exists() and (model_dir / "saved_model").exists()
  assert not (model_dir / "results.json").exists()


def test_a_run_that_diverges_from_the_start_stops_in_its_first_epoch(data_dir, strategy,
                                                                     tmp_path):
  # Finding 5 as reported: from scratch, --optimizer=sgd --learning_rate=1e6 went on for all
  # its epochs in nan, then died with "the best weights (epoch 0) are missing". (main() turns
  # this error into one line and exit status 1, as the lock and disk-full cases show.)
  model_dir = tmp_path / "run"
  config = _config(data_dir, model_dir, optimizer="sgd", learning_rate=1e6, epochs=20,
                   steps_per_epoch=3)
  with pytest.raises(train_lib.NonFiniteLossError) as error:
    train_lib.train_and_evaluate(config, strategy)
  message = str(error.value)
  assert re.match(r"epoch 1, step [1-3]/3: the training ", message), message
  assert message.endswith("; stopped. No epoch was saved; there are no best weights, so "
                          "nothing is exported. Try a lower --learning_rate (now 1e+06)")
  assert not (model_dir / "model.keras").exists()
  assert not (model_dir / "checkpoints").exists()
  assert not (model_dir / lock_lib.LOCK_FILE).exists()


# --- one run per model_dir -----------------------------------------------------------------

HOLD_LOCK = ("import sys, time\n"
             "from trainer import lock\n"
             "held = lock.acquire(sys.argv[1])\n"
             "print('held', flush=True)\n"
             "time.sleep(120)\n")


def _hold_lock(model_dir):
  holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(model_dir)],
                            cwd=processes.REPO, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == "held\n"
  return holder


def test_a_second_trainer_on_one_model_dir_fails_at_once_naming_the_first(data_dir, tmp_path):
  # Finding 4: two trainers on one --model_dir both ran to the end, mixing their files.
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  holder = _hold_lock(model_dir)
  try:
    done = processes.run_trainer(f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                                 "--epochs=1", "--steps_per_epoch=1", "--batch_size=16",
                                 "--noverify_data")
  finally:
    holder.kill()
    holder.wait()
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith(f"trainer.main: error: --model_dir={model_dir} is in use by another "
                         f"run (pid {holder.pid} on "), last
  assert sorted(os.listdir(model_dir)) == [lock_lib.LOCK_FILE]  # nothing else written


def test_a_lock_left_by_a_killed_run_refuses_then_is_taken_over(data_dir, strategy, tmp_path,
                                                                caplog):
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  holder = _hold_lock(model_dir)
  with pytest.raises(lock_lib.LockError, match=f"pid {holder.pid} on "):
    train_lib.train_and_evaluate(_config(data_dir, model_dir, epochs=1), strategy)
  holder.send_signal(signal.SIGKILL)  # leaves its lock file behind
  holder.wait()
  assert (model_dir / lock_lib.LOCK_FILE).exists()
  # What the rerun's train_and_evaluate does first (tests/trainer/main_test.py reruns a
  # SIGKILLed trainer in full).
  with caplog.at_level(logging.WARNING):
    with lock_lib.acquire(str(model_dir)) as held:
      assert held.owner["pid"] == os.getpid()
  assert any(f"its process {holder.pid} on this host is gone" in r.getMessage()
             for r in caplog.records)
  assert not (model_dir / lock_lib.LOCK_FILE).exists()  # released


# --- a full disk ---------------------------------------------------------------------------


def _fill(directory):
  """Fills the file system of `directory` up to its last byte."""
  with open(directory / "filler", "wb", buffering=0) as f:
    try:
      while True:
        f.write(bytes(64 * 1024))
    except OSError:
      pass
    try:
      while True:
        f.write(b"\0")
    except OSError:
      pass


def test_files_are_replaced_whole_or_not_at_all_on_a_full_disk(small_disk):
  # Finding 7: a file written while the space ran out was left empty.
  dirs = workdir.RunDirs(str(small_disk))
  results = {k: 1 for k in workdir.RESULTS_FIELDS}
  workdir.write_results(dirs, results)
  before = (small_disk / workdir.RESULTS_FILE).read_text()
  _fill(small_disk)
  with pytest.raises(workdir.WriteError) as error:
    workdir.write_results(dirs, {**results, "class_names": ["x" * 100] * 1000})
  assert str(error.value).startswith(f"cannot write {small_disk}/{workdir.RESULTS_FILE}: ")
  assert (small_disk / workdir.RESULTS_FILE).read_text() == before
  assert sorted(os.listdir(small_disk)) == ["filler", workdir.RESULTS_FILE]  # no temp file


def test_a_full_disk_at_a_checkpoint_save_exits_with_one_line(data_dir, small_disk):
  # Finding 7: the trainer died with a raw ResourceExhaustedError traceback. `simple`'s
  # best weights (0.5 MB) fit in 1 MiB, its full checkpoint (with Adam's slots, 1.5 MB) not.
  model_dir = small_disk / "run"
  done = processes.run_trainer(f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                               "--epochs=2", "--batch_size=16",
                               "--steps_per_epoch=1", "--noverify_data")
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("trainer.main: error: cannot save the "), last
  assert f"{model_dir}/" in last and last.endswith("No space left on device"), last
  assert "{{" not in last and "[Op:" not in last
  assert not (model_dir / lock_lib.LOCK_FILE).exists()
