"""pipeline/logs.py: what is held back (absl's C++ INFO notices, the libraries' INFO records)
and what never is (warnings, errors, anything else written to fd 2 during the import)."""

import logging
import sys

from pipeline import logs

# Written to fd 2 at import by a real module, as libtensorflow_framework.so.2 writes them.
NOISY_MODULE = r'''
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written "
            b"to STDERR\n")
os.write(2, b"I0000 00:00:1796193310.719049   22667 port.cc:153] oneDNN custom operations "
            b"are on.\n")
os.write(2, b"W0000 00:00:1796193553.287683   25937 dataset.cc:997] a real warning\n")
os.write(2, b"E1202 06:39:10.716606 139931469589376 kernel.cc:12] a real error\n")
os.write(2, b"some other line\n")
'''


def test_the_import_holds_back_absl_info_notices_and_writes_back_the_rest(tmp_path,
                                                                          monkeypatch, capfd):
  (tmp_path / "noisy_module_for_logs_test.py").write_text(NOISY_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  logs.import_holding_notices("noisy_module_for_logs_test")
  err = capfd.readouterr().err
  assert err.splitlines() == [
      "W0000 00:00:1796193553.287683   25937 dataset.cc:997] a real warning",
      "E1202 06:39:10.716606 139931469589376 kernel.cc:12] a real error",
      "some other line"]
  sys.modules.pop("noisy_module_for_logs_test")


def test_a_failing_import_still_shows_what_it_wrote(tmp_path, monkeypatch, capfd):
  (tmp_path / "broken_module_for_logs_test.py").write_text(
      NOISY_MODULE + "raise ImportError('the library is broken')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  try:
    logs.import_holding_notices("broken_module_for_logs_test")
  except ImportError as e:
    assert "broken" in str(e)
  else:
    raise AssertionError("the import should have failed")
  assert "a real error" in capfd.readouterr().err


def test_verbosity_is_read_from_the_command_line_before_absl_parses_it():
  for argv, verbose in ((["p"], False), (["p", "--verbosity=1"], True),
                        (["p", "--verbosity", "2"], True), (["p", "-v=1"], True),
                        (["p", "--verbosity=0"], False), (["p", "--verbosity=-1"], False),
                        (["p", "--vmodule=x=1"], False), (["p", "data", "-v", "1"], True)):
    assert logs.verbose_in_argv(argv) == verbose, argv


def record(name, path, level=logging.INFO, msg="%s", args=("a line",)):
  return logging.LogRecord(name, level, path, 1, msg, args, None)


def test_records_below_warning_pass_only_from_the_projects_files():
  keep = logs.ProjectRecordsOnly().filter
  assert keep(record("absl", f"{logs.PROJECT_DIRS[1]}train.py"))  # the trainer's epoch line
  assert not keep(record("absl", "/venv/tensorflow/python/checkpoint/functional_saver.py"))
  assert not keep(record("apache_beam.runners.worker.statecache", "/venv/statecache.py"))
  assert keep(record("tensorflow", "/venv/builder_impl.py", level=logging.WARNING))
  # A Beam worker process's record, relayed by the runner's logging service.
  entry = ('severity: INFO timestamp {   seconds: 1 } message: "build_tfrecords: this worker: '
           '7,500 images, 900 images/s" log_location: "%sjob_progress.py:138" thread: "7"')
  relay = "apache_beam.runners.portability.local_job_service"
  relayed = record(relay, "/venv/local_job_service.py", msg="Worker: %s",
                   args=(entry % logs.PROJECT_DIRS[0],))
  assert keep(relayed)
  # ...and shown as the worker logged it, not as Beam's dump of the whole entry.
  assert relayed.getMessage() == "build_tfrecords: this worker: 7,500 images, 900 images/s"
  assert (relayed.filename, relayed.lineno, relayed.created) == ("job_progress.py", 138, 1.0)
  assert relayed.pathname == f"{logs.PROJECT_DIRS[0]}job_progress.py"
  # A relayed warning passes whoever logged it; text that is not a log entry stays as it was.
  odd = record(relay, "/venv/local_job_service.py", level=logging.WARNING, msg="Worker: %s",
               args=("not { a log entry",))
  assert keep(odd) and odd.getMessage() == "Worker: not { a log entry"
  assert not keep(record(relay, "/venv/local_job_service.py", msg="Worker: %s",
                         args=(entry % "/venv/apache_beam/runners/worker/",)))
  # Every worker's warning about a pickled main session this job does not use is dropped;
  # the same words from anywhere else, or another sdk_worker_main warning, are not.
  session = ('severity: WARN timestamp {   seconds: 1 } message: "No semi_persistent_directory'
             ' found:  User registered objects (e.g. schema, logical type) throughregisteries '
             'may not be effective" log_location: "%s:421" thread: "7"')
  beam_main = "/venv/lib/apache_beam/runners/worker/sdk_worker_main.py"
  assert not keep(record(relay, "/venv/local_job_service.py", level=logging.WARNING,
                         msg="Worker: %s", args=(session % beam_main,)))
  assert keep(record(relay, "/venv/local_job_service.py", level=logging.WARNING,
                     msg="Worker: %s", args=(session % "/venv/elsewhere.py",)))
  other = session.replace("No semi_persistent_directory found", "No session file found")
  assert keep(record(relay, "/venv/local_job_service.py", level=logging.WARNING,
                     msg="Worker: %s", args=(other % beam_main,)))
