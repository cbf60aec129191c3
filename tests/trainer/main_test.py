"""`python -m trainer.main` as a user runs it: flag errors, flagfiles, the old command name.
(Killed and resumed runs: distributed_test.py, interrupts_test.py.)"""

import os

from absl import flags
import pytest

from pipeline import dataset_info
from tests import processes
from trainer import config as config_lib
from trainer import main
from trainer import models

REPO = processes.REPO
_start = processes.start_trainer


# One case per way in which a run can be refused: by absl (enum flags), by the config checks,
# against the data, and by the strategy (the rest of the config checks run in-process below).
CLI_ERRORS = [
    (["--model=resnet"], "flag --model=resnet: value should be one of <simple|basic|VGG16"),
    (["--batch_size=1000"], "--batch_size=1000 is larger than the train split (96 examples"),
    (["--data_dir=/nonexistent/data"], "--data_dir=/nonexistent/data: "
     "/nonexistent/data/tfrecords_info.json not found (no such directory)"),
    (["--strategy=multi_worker"], "--strategy=multi_worker needs the TF_CONFIG"),
]


def test_bad_flags_fail_with_a_message_naming_the_flag(data_dir, tmp_path):
  # All at once: each process spends most of its time importing TensorFlow.
  processes = [_start(f"--data_dir={data_dir}", f"--model_dir={tmp_path / str(i)}", *args)
               for i, (args, _) in enumerate(CLI_ERRORS)]
  for i, (process, (args, message)) in enumerate(zip(processes, CLI_ERRORS)):
    _, stderr = process.communicate(timeout=180)
    assert process.returncode != 0, args
    # A crash's stack (faulthandler: "Fatal Python error") starts the output; its end is the
    # list of extension modules, so show both ends.
    assert message in stderr, (args, process.returncode, stderr[:4000], stderr[-1000:])
    assert "Traceback" not in stderr, (args, stderr[-2000:])  # a message, not a crash
    assert not os.path.exists(tmp_path / str(i) / "checkpoints"), args


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 0}, "--batch_size=0: must be at least 1"),
    ({"learning_rate": -0.1}, "--learning_rate=-0.1: must be >= 0"),
    ({"patience": 0}, "--patience=0: must be at least 1"),
    ({"learning_rate": float("nan")}, "--learning_rate=nan: must be >= 0"),
    ({"model_dir": ""}, "--model_dir is required"),
    ({"data_dir": ""}, "--data_dir is required"),
    ({"model": "vgg"}, "--model=vgg: unknown model; choose one of DenseNet121, "),
    ({"optimizer": "lbfgs"}, "--optimizer=lbfgs: choose one of adam, sgd, rmsprop"),
    ({"steps_per_epoch": -1}, "--steps_per_epoch=-1: must be >= 0"),
])
def test_config_checks_name_the_flag(settings, message):
  config = config_lib.Config(**{"data_dir": "d", "model_dir": "m", **settings})
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config, model_names=models.MODELS)
  assert str(error.value).startswith(message)


def test_checks_against_the_data_name_the_flag(data_dir):
  info = dataset_info.load(data_dir)
  config = config_lib.Config(data_dir=data_dir, model_dir="m", batch_size=15)
  config_lib.check_against_data(config, info, num_replicas=1)  # fine on one replica
  with pytest.raises(config_lib.ConfigError, match=r"--batch_size=15 \(global\) must be "
                     "divisible by the number of replicas, 2"):
    config_lib.check_against_data(config, info, num_replicas=2)


@pytest.mark.parametrize("name, model", [("simple", "simple"), ("basic", "basic")])
def test_config_flagfiles_set_the_reports_baseline(name, model):
  # The flagfiles parse with the trainer's own flag definitions (so a typo in one fails
  # here) and hold the report's settings.
  flag_values = flags.FlagValues()
  main.define_flags(flag_values)
  flag_values(["train", f"--flagfile={REPO}/configs/{name}.flags"])
  assert (flag_values.model, flag_values.optimizer, flag_values.learning_rate,
          flag_values.batch_size, flag_values.epochs, flag_values.patience,
          flag_values.augment) == (model, "adam", 1e-4, 128, 500, 25, True)
  # The flags not in the file keep the defaults, which form a valid config.
  config = main.config_from_flags(flag_values)
  assert (config.strategy, config.steps_per_epoch, config.mixed_precision) == ("auto", 0, False)


def test_the_old_command_name_is_the_same_command(data_dir, tmp_path):
  """`python -m trainer.train` (the entry point before trainer/main.py) is the same command:
  the same flags, checks and one-line errors (a run of it would train the same code)."""
  process = processes.start("trainer.train", f"--data_dir={data_dir}",
                            f"--model_dir={tmp_path / 'run'}", "--batch_size=100000")
  _, stderr = process.communicate(timeout=180)
  assert process.returncode == 1, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
      f"trainer.main: error: --batch_size=100000 is larger than the train split (96 examples "
      f"in {data_dir})")
  # TF's import notices are held back on this path too (it imports TF before trainer.main).
  assert "absl::InitializeLog" not in stderr and "oneDNN" not in stderr, stderr[-3000:]
