r"""Builds sharded TFRecords and tfrecords_info.json (plus TensorFlow Datasets' metadata, so
that tfds.builder_from_directory reads the output) from CIFAR-100, a path list, an image
folder or a TensorFlow Datasets dataset, as an Apache Beam job.

  python -m pipeline.build_tfrecords --source=image_dir \
      --image_dir=pipeline/sample_data/cifar10 --output_dir=/tmp/cifar10_sample

Beam's own options pass through untouched: `--runner` (DirectRunner by default; DataflowRunner,
FlinkRunner, SparkRunner with their options), `--direct_running_mode=multi_processing
--direct_num_workers=2`, and so on. See README.md. An argument that is neither this job's flag
nor one of Beam's options (a typo: --num_shard=4) is refused, naming it and the closest flag.

Exit status: 0 written; 1 more than --max_reject_fraction rejected (see rejected.csv); 2 the
source cannot be read at all (one line naming it, before the job starts); 3 an OS error while
reading or writing (a full disk, permissions): one line naming the path and the error, the
job's temporary files removed, and no traceback unless --verbosity=1 asks for it. A mistake
in this job's flags (a missing --source, an unknown --source, --source=image_dir without
--image_dir, an unknown argument) is exit status 1 and one line,
`pipeline.build_tfrecords: error: ...` (docs/cli.md); --classes or --num_classes that the
source's classes do not fit is status 2, as a source that cannot be read.

It prints its own lines (the plan, a progress line every --progress_seconds and a last one:
pipeline/job_progress.py) and a summary; Beam's and TensorFlow's INFO lines only with
--verbosity=1, which shows debug lines too (pipeline/logs.py).
"""

import dataclasses
import difflib
import logging
import shlex
import sys
import time
from typing import Optional

from absl import app
from absl import flags

from pipeline import archives
from pipeline import command_line
from pipeline import features
from pipeline import job_progress
from pipeline import logs
from pipeline import output_files
from pipeline import sources
from pipeline import splits

FLAGS = flags.FLAGS
NAME = "pipeline.build_tfrecords"  # as typed after `python -m`: the prefix of its error lines


def define_flags():
  """Defines this job's flags. Called by `main` only, so that importing the module (tests,
  other tools) does not claim flag names in absl's global registry (the trainer has an
  --image_size too)."""
  flags.DEFINE_string(
      "source", None, "What to read: cifar100, path_list, image_dir or tfds:<name> "
      "(any TensorFlow Datasets image-classification dataset).")
  flags.DEFINE_string("output_dir", None, "Where the shards and tfrecords_info.json go "
                      "(a local folder or gs://bucket/path).")
  flags.DEFINE_string("cifar100_archive", "", "cifar-100-python.tar.gz (local or gs://); "
                      "empty: download the official archive into --download_dir.")
  flags.DEFINE_string("archive_md5", archives.CIFAR100_MD5,
                      "Expected md5 of the CIFAR-100 archive (the official one by default); "
                      "empty skips the check.")
  flags.DEFINE_string("download_dir", "~/.cache/tfrecord_pipeline", "Download cache.")
  flags.DEFINE_string("path_list", "", "CSV with header path,label[,split]; relative paths are "
                      "relative to the CSV; gs:// and http(s) paths are read through fsspec.")
  flags.DEFINE_string("class_names_file", "", "For path lists: the classes, one per line, in "
                      "label order. Labels outside it are rejected. Default: the labels seen.")
  flags.DEFINE_string("image_dir", "", "A <root>/<class>/<file> or <root>/{train,test}/<class>/"
                      "<file> tree (local or gs://).")
  flags.DEFINE_string("tfds_data_dir", None, "TensorFlow Datasets data_dir.")
  flags.DEFINE_string("tfds_manual_dir", None, "Folder holding archives tfds cannot download.")
  flags.DEFINE_float("validation_fraction", 0.1, "Fraction of train held out as validation, by "
                     "a hash of each example's key (the same split on every rerun).", 0.0, 0.9)
  flags.DEFINE_float("test_fraction", 0.1, "Fraction of train held out as test, by key hash, "
                     "when the source has no test split of its own.", 0.0, 0.9)
  flags.DEFINE_integer("num_classes", 0, "Keep this many classes, drawn with --class_seed "
                       "(0: all). Labels are remapped to 0..N-1. The same N and seed pick "
                       "the same classes as the trainer's --classes=N --seed=S.", lower_bound=0)
  flags.DEFINE_integer("class_seed", 0, "Seed of the --num_classes draw.")
  flags.DEFINE_list("classes", [], "Keep these classes, in this label order.")
  flags.DEFINE_integer("image_size", 0, "Resize every image to this height and width "
                       "(0: keep the size; the trainer then needs all images the same size).",
                       lower_bound=0)
  flags.DEFINE_enum("image_format", features.SOURCE, features.IMAGE_FORMATS,
                    "What a record stores of its image. source: the file's own JPEG/PNG bytes "
                    "when no resize or conversion is needed, else PNG (lossless). png: PNG "
                    "always. raw: the uint8 pixels (height*width*3 bytes): no decoding in "
                    "the trainer, which reads them a batch at a time, for shards ~3x larger "
                    "than JPEG (docs/data.md).")
  flags.DEFINE_integer("num_shards", 0, "Shards per split (0: one per 5,000 examples).",
                       lower_bound=0)
  flags.DEFINE_float("max_reject_fraction", 0.01, "Fail the job when more than this fraction "
                     "of inputs is rejected (see rejected.csv).", 0.0, 1.0)
  flags.DEFINE_integer("max_image_bytes", sources.MAX_IMAGE_BYTES, "Reject a file larger than "
                       "this as file_too_large without reading it (for gs:// and http(s), by "
                       "the size the file system reports). 0: no limit.", lower_bound=0)
  flags.DEFINE_float("progress_seconds", job_progress.PROGRESS_SECONDS,
                     "Seconds between progress lines (images done of the total, images/s, "
                     "ETA) of each worker process; 0: none but the last line. "
                     "See pipeline/job_progress.py for what several workers print.",
                     lower_bound=0.0)


@dataclasses.dataclass(frozen=True)
class JobConfig:
  """Everything the job needs; `from_flags` builds it, tests build it directly."""
  source: str
  output_dir: str
  cifar100_archive: str = ""
  archive_md5: str = archives.CIFAR100_MD5
  download_dir: str = "~/.cache/tfrecord_pipeline"
  path_list: str = ""
  class_names_file: str = ""
  image_dir: str = ""
  tfds_data_dir: Optional[str] = None
  tfds_manual_dir: Optional[str] = None
  validation_fraction: float = 0.1
  test_fraction: float = 0.1
  num_classes: int = 0
  class_seed: int = 0
  classes: tuple = ()
  image_size: int = 0
  image_format: str = features.SOURCE  # features.IMAGE_FORMATS
  num_shards: int = 0
  max_reject_fraction: float = 0.01
  max_image_bytes: int = sources.MAX_IMAGE_BYTES  # 0: no limit
  progress_seconds: float = job_progress.PROGRESS_SECONDS  # 0: the last line only
  command: str = ""

  @classmethod
  def from_flags(cls):
    names = [f.name for f in dataclasses.fields(cls) if f.name != "command"]
    values = {n: getattr(FLAGS, n) for n in names}
    values["classes"] = tuple(values["classes"])
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "pipeline.build_tfrecords"]
                       + sys.argv[1:])
    return cls(command=command, **values)


@dataclasses.dataclass
class JobResult:
  exit_code: int
  info: dict  # tfrecords_info.json (or the failed variant), as DatasetInfo.to_json gives it
  counters: dict  # "examples/train" -> count, from Beam's metrics


class FlagError(sources.SourceError):
  """The job's flags ask for no source it can plan (--source unknown, or without the flag
  that names its input): a mistake in the flags, exit status 1 on the command line."""


def make_plan(config):
  source = config.source
  if source == "cifar100":
    plan = archives.plan_cifar100(config.cifar100_archive, md5=config.archive_md5,
                                 cache_dir=config.download_dir)
    if not config.archive_md5:  # Unverified archive: refuse bad contents before the job.
      archives.check_cifar100(plan)
    return plan
  if source == "path_list":
    if not config.path_list:
      raise FlagError("--source=path_list needs --path_list=<csv>")
    return sources.plan_path_list(config.path_list, class_names_file=config.class_names_file)
  if source == "image_dir":
    if not config.image_dir:
      raise FlagError("--source=image_dir needs --image_dir=<root>")
    return sources.plan_image_dir(config.image_dir)
  if source and source.startswith("tfds:"):
    return archives.plan_tfds(source[len("tfds:"):], data_dir=config.tfds_data_dir,
                             manual_dir=config.tfds_manual_dir)
  raise FlagError(f"--source={source!r}: expected cifar100, path_list, image_dir or "
                  "tfds:<name>")


def split_sizes(plan, config):
  """Estimated examples per output split, to size shards before the job runs."""
  train = plan.split_sizes.get("train", 0)
  test = plan.split_sizes.get("test", 0)
  held_test = 0 if plan.has_test else train * config.test_fraction
  sizes = {
      "train": train - held_test - train * config.validation_fraction,
      "validation": train * config.validation_fraction,
      "test": test if plan.has_test else held_test,
  }
  return {s: n for s, n in sizes.items() if n > 0}


def remove_stale_outputs(output_dir):
  """An earlier run's metadata (ours, under its old name too, and TFDS's) must not describe
  this run's shards, and what a killed run left half-written (`.temp-*` files, Beam's
  `beam-temp-*` folders) goes."""
  from apache_beam.io.filesystems import FileSystems
  from pipeline import dataset_info, job_metadata, tfds_metadata
  names = (features.INFO_FILE, job_metadata.FAILED_INFO_FILE, features.REJECTED_FILE,
           job_metadata.LEGACY_FAILED_INFO_FILE) + tfds_metadata.FILES
  stale = [dataset_info.join(output_dir, n) for n in names]
  stale = [s for s in stale if FileSystems.exists(s)]
  if stale:
    FileSystems.delete(stale)
  output_files.remove_leftovers(output_dir)


def worker_processes(options):
  """How many processes count images separately (job_progress.Plan.workers): 1 for the
  DirectRunner in_memory and multi_threading (one process), --direct_num_workers (0: one a
  CPU, as Beam reads it) for multi_processing, None (unknown) for other runners."""
  import multiprocessing
  from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
  if options.view_as(StandardOptions).runner not in (None, "DirectRunner", "direct"):
    return None
  direct = options.view_as(DirectOptions)
  if direct.direct_running_mode != "multi_processing":
    return 1
  return direct.direct_num_workers or multiprocessing.cpu_count()


def make_runner(options):
  """Beam's DirectRunner first tries Prism, which downloads a binary; offline that costs a
  failed download and a fallback on every run. Use the FnApiRunner it falls back to directly
  (it honours --direct_running_mode and --direct_num_workers); other runners are untouched."""
  from apache_beam.options.pipeline_options import StandardOptions
  runner = options.view_as(StandardOptions).runner
  if runner in (None, "DirectRunner", "direct"):
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    return FnApiRunner()
  return None


def run_job(config, beam_argv=()):
  """Plans, runs the job, prints a summary. Raises sources.SourceError on unreadable input,
  splits.ClassSubsetError on a class subset the source cannot provide, and what the file
  system or Beam raises when writing fails (output_files.os_error_line finds the OS error in
  it), after deleting the job's temporary files."""
  t0 = time.time()
  plan = make_plan(config)
  kept = splits.select_classes(plan.class_names, num_classes=config.num_classes,
                               class_seed=config.class_seed, classes=config.classes)
  # Beam is imported once the plan stands (seconds of start-up), so that refusing a source
  # is quick.
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import PipelineOptions
  from pipeline import beam_job
  sizes = split_sizes(plan, config)
  if len(kept) < len(plan.class_names):  # A class subset shrinks every split proportionally.
    sizes = {s: n * len(kept) / len(plan.class_names) for s, n in sizes.items()}
  split_names = [s for s in ("train", "validation", "test") if s in sizes]
  if not split_names:
    # Every input was rejected while planning. Run anyway, with one empty train split, so
    # that rejected.csv, the counters and the failed metadata say why.
    split_names, sizes = ["train"], {"train": 0}
  num_shards = {s: config.num_shards or beam_job.default_num_shards(sizes[s])
                for s in split_names}
  logging.info("Source %s: %d classes (keeping %d), about %s examples; %d inputs rejected "
               "while planning; skipped %s", plan.description, len(plan.class_names),
               len(kept), {s: int(n) for s, n in sizes.items()}, len(plan.rejected),
               plan.skipped or "nothing")
  logging.info("Writing %s to %s", {s: f"{n} shards" for s, n in num_shards.items()},
               config.output_dir)
  options = PipelineOptions(list(beam_argv))
  pipeline = beam.Pipeline(runner=make_runner(options), options=options)
  shard_plans = []
  try:
    remove_stale_outputs(config.output_dir)
    excluded = 0
    if plan.elements:
      shard_plans, excluded = beam_job.write_shard_plans(
          config.output_dir, plan.elements, kept=kept,
          validation_fraction=config.validation_fraction, test_fraction=config.test_fraction,
          has_test=plan.has_test, num_shards=num_shards)
    # The images the shard writers will see: the planned paths, exactly; of archives, the
    # split sizes that sized the shards, "about" (exact for the official CIFAR-100 and a
    # whole tfds dataset, not for an unverified archive or a class subset of an unbalanced
    # dataset).
    archive_total = round(sum(sizes.values())) if plan.reads else 0
    progress = job_progress.Plan(
        total=len(plan.elements) - excluded + archive_total, approximate=bool(plan.reads),
        workers=worker_processes(options), every_seconds=config.progress_seconds)
    beam_job.build(
        pipeline, plan, output_dir=config.output_dir, split_names=split_names,
        num_shards=num_shards, kept=kept, validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        image_size=(config.image_size, config.image_size) if config.image_size else None,
        max_reject_fraction=config.max_reject_fraction, command=config.command,
        shard_plans=shard_plans, excluded=excluded,
        max_image_bytes=config.max_image_bytes or None, progress=progress,
        image_format=config.image_format)
    plan.elements.clear()  # In the shard plans now: free them before the job runs.
    job_start = time.time()
    result = pipeline.run()
    result.wait_until_finish()
    job_seconds = time.time() - job_start
  except BaseException:
    # A failed job (a full disk, a bug, Ctrl-C) leaves no temporary files behind where it
    # can: its half-written shards and plan (.temp-*), Beam's sink folders (beam-temp-*).
    removed = output_files.remove_leftovers(config.output_dir)
    if removed:
      logging.info("removed %d temporary files of the failed job from %s", len(removed),
                   config.output_dir)
    raise
  if shard_plans:
    FileSystems.delete([path for _, path in shard_plans])
  counters = {c.key.metric.name: c.committed for c in result.metrics().query(
      MetricsFilter().with_namespace(beam_job.NAMESPACE))["counters"]}
  logging.info("%s", final_progress_line(progress, counters, len(plan.rejected), job_seconds))
  exit_code, info = summarize(config, time.time() - t0)
  return JobResult(exit_code=exit_code, info=info, counters=counters)


def final_progress_line(progress, counters, planned_rejections, seconds):
  """job_progress.final_line from the job's counters: written = examples/<split>; rejected
  by the shard writers = rejected/<reason> less the inputs rejected while planning (counted
  there too). Counters merge every worker's, so this line is exact on every runner."""
  written = sum(n for name, n in counters.items()
                if name.startswith("examples/") and name.count("/") == 1)
  rejected = sum(n for name, n in counters.items() if name.startswith("rejected/"))
  return job_progress.final_line(progress.total, written, rejected - planned_rejections,
                                 seconds, progress.approximate)


def summarize(config, seconds):
  """Prints what was written and rejected. Returns (exit code, info): 1 if too much was
  rejected."""
  from apache_beam.io.filesystems import FileSystems
  from pipeline import dataset_info, job_metadata
  output_dir = config.output_dir
  ok_path = dataset_info.join(output_dir, features.INFO_FILE)
  failed_path = dataset_info.join(output_dir, job_metadata.FAILED_INFO_FILE)
  path = ok_path if FileSystems.exists(ok_path) else failed_path
  with FileSystems.open(path) as f:
    info = dataset_info.from_json(output_dir, f.read().decode())
  shape = list(info.image_shape) if info.image_shape else "varies"
  lines = [f"Wrote {output_dir} in {seconds:.1f} s: {info.num_classes} classes, "
           f"image shape {shape}"]
  for split, s in info.splits.items():
    lines.append(f"  {split:<10} {s.num_examples:>8} examples in {len(s.shards)} shards")
  rejected = info.rejected
  lines.append(f"  rejected   {rejected['total']:>8} ({100 * rejected['fraction']:.2f}%) "
               f"{rejected['by_reason'] or ''} -> "
               f"{dataset_info.join(output_dir, features.REJECTED_FILE)}")
  if info.converted:
    stored = "raw" if info.image_format == features.RAW else "PNG"
    lines.append(f"  converted (stored as {stored}): {info.converted}")
  print("\n".join(lines), flush=True)
  if path == failed_path:
    logging.error(
        "%.2f%% of the inputs were rejected, more than --max_reject_fraction=%g; see %s. "
        "The metadata is in %s and no %s was written, so the trainer will not use this "
        "output.", 100 * rejected["fraction"], config.max_reject_fraction,
        dataset_info.join(output_dir, features.REJECTED_FILE), failed_path, features.INFO_FILE)
    return 1, info.to_json()
  return 0, info.to_json()


class _NoBeamTracebacks(logging.Filter):
  """Drops the tracebacks Beam's workers log when a stage fails: the failure reaches `main`,
  which reports it in one line (--verbosity=1 keeps them)."""

  def filter(self, record):
    if not record.name.startswith("apache_beam") or record.levelno < logging.ERROR:
      return True
    return not (record.exc_info or "Traceback (most recent call last)" in record.getMessage())


def main(argv):
  logging.getLogger().setLevel(logging.INFO)
  verbose = FLAGS.verbosity >= 1
  logs.configure(verbose)  # Beam's own INFO lines only with --verbosity=1
  if not verbose:
    for handler in logging.getLogger().handlers:
      handler.addFilter(_NoBeamTracebacks())
  config = JobConfig.from_flags()
  unknown = unknown_args(argv[1:])
  if unknown:
    command_line.fail(NAME, unknown)
  if config.source and config.source.startswith("tfds:"):
    logs.import_tensorflow(verbose)  # tensorflow_datasets imports it: without its notices
  try:
    result = run_job(config, argv[1:])
  except FlagError as e:
    command_line.fail(NAME, e)
  except (sources.SourceError, splits.ClassSubsetError) as e:
    command_line.fail(NAME, e, status=2)
  except Exception as e:  # pylint: disable=broad-except
    line = output_files.os_error_line(e, config.output_dir)
    if line is None:
      raise  # Not an OS error: a bug in this code, which must show where it is.
    if verbose:
      logging.error("the job failed:", exc_info=True)
    command_line.fail(NAME, line, status=3)
  sys.exit(result.exit_code)


def unknown_args(beam_argv):
  """None if every argument that is not this job's flag is one of Beam's pipeline options;
  else the error line naming the others (a typo such as --num_shard=4, which Beam itself
  would log once and drop, the job then running without it), with the closest flag names.

  Beam's own parser decides (get_all_options hands it to add_extra_args_fn): every option
  of every runner that Beam registers, so Dataflow's, Flink's and Spark's pass."""
  if not beam_argv:
    return None  # and no Beam import: a refused source stays quick (run_job imports it)
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  parsers = []
  PipelineOptions(list(beam_argv)).get_all_options(add_extra_args_fn=parsers.append)
  _, unknown = parsers[0].parse_known_args(list(beam_argv))
  if not unknown:
    return None
  known = [f"--{name}" for name in FLAGS] + [
      option for action in parsers[0]._actions for option in action.option_strings]  # pylint: disable=protected-access
  named = []
  for arg in unknown:
    close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1)
    named.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
  return (f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(named)}: neither "
          "this job's flags (--helpfull) nor Beam's pipeline options")


def parse_flags(argv):
  """Our flags are parsed by absl; the rest are Beam's and go to PipelineOptions untouched.
  A mistake in ours is one line and exit status 1, as in every command."""
  return command_line.parse(NAME, argv, lambda args: FLAGS(args, known_only=True))


def run():
  """The command line (`python -m pipeline.build_tfrecords`, or `build-tfrecords` once the
  package is installed): defines the flags, parses ours and runs the job."""
  define_flags()
  command_line.mark_required(["source", "output_dir"])
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
