"""trainer/lock.py: one run per model_dir, raced by real processes, stale locks of this host and
of others, and gs:// against a real GCS emulator (preconditions checked by the server)."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

from tests import gcs_emulator  # before anything imports gcsfs (see its docstring)
import pytest

from tests import processes
from trainer import lock as lock_lib

RACE = ("import sys\n"
        "from trainer import lock\n"
        "sys.stdin.readline()\n"  # all start, then all go at once
        "try:\n"
        "  held = lock.acquire(sys.argv[1])\n"
        "  print('held', flush=True)\n"
        "  sys.stdin.readline()\n"
        "  held.release()\n"
        "except lock.LockError as e:\n"
        "  print('refused', e, flush=True)\n")


def test_of_processes_racing_for_a_model_dir_exactly_one_wins(tmp_path):
  racers = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path)], cwd=processes.REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(4)]
  time.sleep(1.0)  # absl imported everywhere
  for racer in racers:
    racer.stdin.write("go\n")
    racer.stdin.flush()
  lines = [racer.stdout.readline() for racer in racers]
  for racer in racers:
    racer.communicate("done\n", timeout=30)
  assert sum(line == "held\n" for line in lines) == 1, lines
  winner = racers[[line == "held\n" for line in lines].index(True)]
  for line in lines:
    if line != "held\n":
      assert line.startswith(f"refused --model_dir={tmp_path} is in use by another run (pid "
                             f"{winner.pid} on {socket.gethostname()}"), line
  assert not (tmp_path / lock_lib.LOCK_FILE).exists()  # the winner released it
  assert os.listdir(tmp_path) == []  # and no temporary files are left


def _write_lock(model_dir, **owner):
  path = model_dir / lock_lib.LOCK_FILE
  path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "pid_start": None,
                              "started": "2026-12-01T00:00:00+00:00", "command": "train",
                              **owner}))
  return path


def test_a_lock_of_another_host_holds_until_its_heartbeat_expires(tmp_path, caplog):
  path = _write_lock(tmp_path)
  with pytest.raises(lock_lib.LockError) as error:
    lock_lib.acquire(str(tmp_path))
  assert str(error.value) == (
      f"--model_dir={tmp_path} is in use by another run (pid 1 on elsewhere, started "
      "2026-12-01T00:00:00+00:00: train); wait for it to end or use another --model_dir. "
      f"If that run is gone, delete {path}")
  old = time.time() - lock_lib.STALE_AFTER_S - 60
  os.utime(path, (old, old))
  with caplog.at_level(logging.WARNING):
    with lock_lib.acquire(str(tmp_path)) as held:
      assert json.loads(path.read_text())["pid"] == os.getpid() == held.owner["pid"]
  assert any("its last heartbeat was" in r.getMessage() for r in caplog.records)
  assert not path.exists()


def test_a_lock_of_a_finished_process_on_this_host_is_stale(tmp_path):
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  _write_lock(tmp_path, host=socket.gethostname(), pid=int(gone.stdout))
  with lock_lib.acquire(str(tmp_path)):
    pass
  # This very process is alive: its lock is not stale.
  _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid())
  with pytest.raises(lock_lib.LockError, match=f"pid {os.getpid()} on "):
    lock_lib.acquire(str(tmp_path))


def test_the_heartbeat_refreshes_the_lock(tmp_path):
  with lock_lib.acquire(str(tmp_path), heartbeat_s=0.05):
    path = tmp_path / lock_lib.LOCK_FILE
    old = time.time() - 1000
    os.utime(path, (old, old))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 5


def test_a_gs_lock_is_written_read_released_and_taken_over(tmp_path):
  # What the emulator can show. It ignores preconditions (gcp-storage-emulator has no
  # ifGenerationMatch), so the refusal of a second create, which GCS itself enforces, is not
  # tested here: a second acquire against the emulator would overwrite the object.
  with gcs_emulator.running(tmp_path, bucket="runs") as emulator:
    fs = emulator.fs()
    model_dir = emulator.url("run")
    lock_object = f"runs/run/{lock_lib.LOCK_FILE}"
    with lock_lib.acquire(model_dir, heartbeat_s=0.05) as held:
      owner = json.loads(fs.cat_file(lock_object))
      assert owner["pid"] == os.getpid() == held.owner["pid"]
      time.sleep(0.5)  # a few heartbeats: metadata updates, same content and generation
      assert json.loads(fs.cat_file(lock_object)) == owner
    assert not fs.exists(lock_object)
    # A stale lock (its process on this host is gone) is deleted by generation and taken.
    fs.pipe_file(lock_object, json.dumps(
        {"host": socket.gethostname(), "pid": 2 ** 22 + 1, "command": "old"}).encode())
    with lock_lib.acquire(model_dir):
      assert json.loads(fs.cat_file(lock_object))["pid"] == os.getpid()
    # A live one of another host is refused, naming it.
    fs.pipe_file(lock_object, json.dumps({"host": "elsewhere", "pid": 7, "command": "x"}).encode())
    with pytest.raises(lock_lib.LockError, match="in use by another run \\(pid 7 on elsewhere"):
      lock_lib.acquire(model_dir)
