"""Images/s of the Beam TFRecord job (DirectRunner, 1 and 2 workers) beside a plain Python loop.

    python -m tools.bench_beam --limit=10000          # a table
    python -m tools.bench_beam --limit=10000 --json   # {"images_per_s": {...}, ...}
    python -m tools.bench_beam --peak_rss=10000,60000 # wall s and peak RSS per input size

  plain_loop     one process, no Beam: the same planning (pipeline.sources.plan_image_dir),
                 split assignment (pipeline.splits.assign_split), image checks and conversion
                 (pipeline.images.prepare), record encoding
                 (pipeline.features.encode_example) and TFRecord framing (Beam's own
                 _TFRecordUtil.write_record) into as many shards per split as the job writes.
  beam_1_worker  pipeline.build_tfrecords.run_job on the DirectRunner (FnApiRunner),
                 --direct_running_mode=in_memory: one worker thread in this process.
  beam_2_workers the same job with --direct_running_mode=multi_processing
                 --direct_num_workers=2: two worker processes (one per core here).

Each time is the wall time of the whole job: planning, the run, tfrecords_info.json and
rejected.csv, from the call to the last file closed; images/s = input images / wall time.
The three run in turn within each repeat, each into a fresh output directory; min / median /
max over `--repeats`. With `--limit=N`, N images drawn by a hash of their key (a mix of every
class and split) are linked into a temporary tree and all three read that.

`--peak_rss=N,M`: each Beam method instead runs `python -m pipeline.build_tfrecords` as a
child process on N, then M images (drawn as for --limit), once; a row gives its wall time
(with the child's interpreter start and imports) and peak RSS (`job_in_child`).
"""

import collections
import contextlib
import importlib
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import flags

from tools import cli
from tools import harness

DEFAULT_IMAGE_DIR = "/tmp/cifar10"  # {train,test}/<class>/*.jpg: the extracted CIFAR-10 JPEGs
METHODS = ("plain_loop", "beam_1_worker", "beam_2_workers")
BEAM_ARGS = {
    "beam_1_worker": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    "beam_2_workers": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}


def limited_tree(image_dir, limit, out_dir):
  """Symlinks to `limit` images of `image_dir` drawn by a salted hash of their key, in the
  same <split>/<class>/<file> layout, under `out_dir`. Returns `out_dir`.

  Salted: the job assigns validation and test by the unsalted key hash, so the images first
  in that order would all be held out."""
  from pipeline import sources
  from pipeline import splits
  plan = sources.plan_image_dir(image_dir)
  chosen = sorted(plan.elements, key=lambda e: splits.key_fraction("bench_beam:" + e["key"]))
  chosen = chosen[:limit]
  for element in chosen:
    link = pathlib.Path(out_dir) / element["key"]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(pathlib.Path(element["path"]).resolve())
  return str(out_dir)


def plain_loop(image_dir, output_dir, validation_fraction=0.1, test_fraction=0.1):
  """The job's work for an image folder, in one Python loop. Returns {split: records}."""
  from apache_beam.io.tfrecordio import _TFRecordUtil  # the framing WriteToTFRecord uses
  from pipeline import beam_job
  from pipeline import build_tfrecords
  from pipeline import dataset_info
  from pipeline import features
  from pipeline import images
  from pipeline import sources
  from pipeline import splits
  plan = sources.plan_image_dir(image_dir)
  sizes = build_tfrecords.split_sizes(plan, build_tfrecords.JobConfig(
      source="image_dir", output_dir=output_dir, validation_fraction=validation_fraction,
      test_fraction=test_fraction))
  os.makedirs(output_dir, exist_ok=True)
  shards = {split: [open(os.path.join(output_dir, features.shard_name(split, i, n)), "wb")
                    for i in range(n)]
            for split, n in ((s, beam_job.default_num_shards(v)) for s, v in sizes.items())}
  counts = dict.fromkeys(shards, 0)
  per_class = {split: [0] * len(plan.class_names) for split in shards}
  shapes = set()
  rejected = collections.Counter()
  try:
    for element in sorted(plan.elements, key=lambda e: splits.key_fraction(e["key"])):
      split = splits.assign_split(element["key"], element["split"], validation_fraction,
                                  test_fraction, plan.has_test)
      try:
        encoded, fmt, pixels, _ = images.prepare(sources.read_bytes(element["path"]))
      except images.BadImage as e:
        rejected[e.reason] += 1
        continue
      height, width = pixels.shape[:2]
      shapes.add((height, width))
      record = features.encode_example(
          key=element["key"], image=encoded, image_format=fmt, height=height, width=width,
          label=element["label"])
      files = shards[split]
      _TFRecordUtil.write_record(files[counts[split] % len(files)], record)
      counts[split] += 1
      per_class[split][element["label"]] += 1
  finally:
    for files in shards.values():
      for f in files:
        f.close()
  split_infos = {split: dataset_info.split_info(
      output_dir, [os.path.basename(f.name) for f in files], per_class[split])
                 for split, files in shards.items()}
  dataset_info.write(dataset_info.DatasetInfo(
      data_dir=output_dir, class_names=tuple(plan.class_names), splits=split_infos,
      image_shape=(*shapes.pop(), 3) if len(shapes) == 1 else None, source=plan.description,
      rejected=dataset_info.rejected_summary(rejected, sum(counts.values())),
      skipped=plan.skipped, command="tools.bench_beam.plain_loop"),
      beam=True)  # Beam's file systems, not tf.io.gfile: no TensorFlow in the timing
  return counts


def beam_job(image_dir, output_dir, beam_args):
  """pipeline.build_tfrecords.run_job on `image_dir`. Returns {split: records}."""
  from pipeline import build_tfrecords
  config = build_tfrecords.JobConfig(source="image_dir", image_dir=image_dir,
                                     output_dir=output_dir, command="tools.bench_beam")
  with contextlib.redirect_stdout(sys.stderr):  # its summary must not mix into --json
    result = build_tfrecords.run_job(config, beam_args)
  if result.exit_code:
    raise RuntimeError(f"the Beam job failed (exit code {result.exit_code})")
  return {split: s["num_examples"] for split, s in result.info["splits"].items()}


REPO = pathlib.Path(__file__).resolve().parents[1]


# Runs argv[1:] and prints its ru_maxrss (KiB) as the last line of stderr. A process's
# ru_maxrss starts from the peak of the memory it was forked from (Linux records the old
# address space's high-water mark at exec), so the job is started from this small process
# rather than from the caller, whose own peak (TensorFlow in a test, say) would count.
_MAXRSS_LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "child.returncode = os.waitstatus_to_exitcode(status)\n"
    "print(f'ru_maxrss_kib={usage.ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(child.returncode)\n")


def job_in_child(image_dir, output_dir, beam_args, job_flags=(), repo=REPO):
  """Runs `python -m pipeline.build_tfrecords` on `image_dir` as a child process (with the
  code of `repo`, so another checkout can be measured beside this one). Returns (wall
  seconds, peak RSS in bytes).

  The peak is the job's ru_maxrss from wait4, which Linux takes as the largest of the
  process and the children it waited for: with --direct_running_mode=multi_processing, the
  largest single process of the job, not their sum."""
  cmd = [sys.executable, "-c", _MAXRSS_LAUNCHER, sys.executable, "-m",
         "pipeline.build_tfrecords", "--source=image_dir", f"--image_dir={image_dir}",
         f"--output_dir={output_dir}", *job_flags, *beam_args]
  start = time.perf_counter()
  done = subprocess.run(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True, check=False)
  seconds = time.perf_counter() - start
  *_, last = done.stderr.rstrip().rsplit("\n", 1)
  if done.returncode or not last.startswith("ru_maxrss_kib="):
    raise RuntimeError(f"{' '.join(cmd[3:])} exited {done.returncode}: {done.stderr[-2000:]}")
  return seconds, int(last.split("=")[1]) * 1024  # Linux reports KiB


def peak_rss(image_dir=DEFAULT_IMAGE_DIR, limits=(10000, 60000), methods=METHODS[1:],
             image_size=0, log=None):
  """Wall time and peak RSS of the job in a child process, per input size and method.
  Returns {"rows": [{"images", "method", "seconds", "peak_rss_mb"}], "settings": {...}}."""
  rows = []
  job_flags = [f"--image_size={image_size}"] if image_size else []
  with tempfile.TemporaryDirectory(prefix="bench_beam_rss_") as tmp:
    for limit in limits:
      images = limited_tree(image_dir, limit, os.path.join(tmp, f"images-{limit}"))
      for name in methods:
        seconds, peak = job_in_child(images, os.path.join(tmp, f"{name}-{limit}"),
                                     BEAM_ARGS[name], job_flags)
        rows.append({"images": limit, "method": name, "seconds": seconds,
                     "peak_rss_mb": peak / 2**20})
        if log:
          log(f"{limit} images, {name}: {seconds:.1f} s, peak RSS {peak / 2**20:,.0f} MB")
  return {"rows": rows, "settings": {"image_dir": image_dir, "image_size": image_size,
                                     "cpus": os.cpu_count(),
                                     "load_average": list(os.getloadavg())}}


def format_rss_table(result):
  lines = [f"{'images':>8} {'method':<16} {'wall s':>8} {'peak RSS MB':>12}"]
  for row in result["rows"]:
    lines.append(f"{row['images']:>8} {row['method']:<16} {row['seconds']:>8.1f} "
                 f"{row['peak_rss_mb']:>12,.0f}")
  return "\n".join(lines)


def run(image_dir=DEFAULT_IMAGE_DIR, limit=0, repeats=3, methods=METHODS, log=None):
  """Returns {"images_per_s": {method: median}, "runs": {method: [per repeat]}, ...}."""
  importlib.import_module("apache_beam")  # imported once, before any timing
  from pipeline import sources
  records = {}
  with tempfile.TemporaryDirectory(prefix="bench_beam_") as tmp:
    if limit:
      image_dir = limited_tree(image_dir, limit, os.path.join(tmp, "images"))
    num_images = len(sources.plan_image_dir(image_dir).elements)

    def measure(name, r):
      output_dir = os.path.join(tmp, f"{name}-{r}")
      start = time.perf_counter()
      if name == "plain_loop":
        records[name] = plain_loop(image_dir, output_dir)
      else:
        records[name] = beam_job(image_dir, output_dir, BEAM_ARGS[name])
      return num_images / (time.perf_counter() - start)

    runs = harness.repeat(methods, repeats, measure, log=log, unit=" images/s")
  median = harness.medians(runs)
  ratios = {f"{name}_vs_plain_loop": median[name] / median["plain_loop"]
            for name in methods if name != "plain_loop" and "plain_loop" in median}
  if "beam_1_worker" in median and "beam_2_workers" in median:
    ratios["beam_2_workers_vs_beam_1_worker"] = (median["beam_2_workers"]
                                                 / median["beam_1_worker"])
  return {
      "images_per_s": median,
      "seconds": {name: num_images / v for name, v in median.items()},
      "runs": runs,
      "ratios": ratios,
      "records": records,
      "settings": {"image_dir": image_dir if not limit else f"{image_dir} (first {limit})",
                   "num_images": num_images, "repeats": repeats, **harness.machine()},
  }


def format_table(result):
  s = result["settings"]
  lines = harness.spread_table(
      result["runs"], label="method",
      heading=f"images/s ({s['num_images']} images, {s['repeats']} repeats)",
      notes={name: f"median {seconds:.1f} s wall" for name, seconds in result["seconds"].items()})
  lines += ["", *harness.ratio_lines(result["ratios"]),
            f"records per split: {result['records']}", harness.machine_line(s)]
  return "\n".join(lines)


def define_flags(flag_values):
  flags.DEFINE_string("image_dir", DEFAULT_IMAGE_DIR,
                      "<class>/<file> or {train,test}/<class>/<file> images.",
                      flag_values=flag_values)
  flags.DEFINE_integer("limit", 0, "Use only N images, drawn by key hash (0: all).",
                       lower_bound=0, flag_values=flag_values)
  flags.DEFINE_list("methods", list(METHODS), f"Comma-separated subset of {','.join(METHODS)}.",
                    flag_values=flag_values)
  flags.DEFINE_list("peak_rss", [], "Instead of the timing table: wall time and peak RSS of "
                    "the job run as a child process, at these comma-separated input sizes.",
                    flag_values=flag_values)
  flags.DEFINE_integer("image_size", 0, "With --peak_rss: the job's --image_size (0: keep "
                       "the size).", lower_bound=0, flag_values=flag_values)
  harness.define_flags(flag_values, repeats=3)


def main(argv, flag_values):
  harness.start(argv)
  logging.getLogger().setLevel(logging.WARNING)  # Beam's per-stage INFO lines
  methods = tuple(dict.fromkeys(flag_values.methods))
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise cli.ToolError(f"--methods: unknown {sorted(unknown)}; choose from {','.join(METHODS)}")
  log = harness.progress(flag_values.json)
  if flag_values.peak_rss:
    try:
      sizes = [int(n) for n in flag_values.peak_rss]
    except ValueError:
      raise cli.ToolError(f"--peak_rss={','.join(flag_values.peak_rss)}: expected "
                          "comma-separated numbers of images") from None
    result = peak_rss(flag_values.image_dir, sizes, [m for m in methods if m != "plain_loop"],
                      flag_values.image_size, log)
    harness.emit(result, format_rss_table, flag_values.json)
    return
  result = run(flag_values.image_dir, flag_values.limit, flag_values.repeats, methods, log)
  harness.emit(result, format_table, flag_values.json)


COMMAND = cli.Command("tools.bench_beam", define_flags, main)

if __name__ == "__main__":
  COMMAND.run()
