"""tools/bench_data_service.py's measurement at tiny scale: every side trains the trainer's
own step, fed by its own pipeline, by a real tf.data service worker (in this process, on
127.0.0.1), or from memory. (The whole tool pins processes to cores and starts a dozen
trainers: a benchmark, run by hand; BENCHMARKS.md has its figures.)"""

import tensorflow as tf

from tools import bench_data_service

service = tf.data.experimental.service


def test_every_side_trains_and_the_table_shows_the_ratios(make_data_dir):
  data_dir = make_data_dir(per_class=20)  # 48 train examples
  dispatcher = service.DispatchServer()
  worker = service.WorkerServer(service.WorkerConfig(
      dispatcher_address=dispatcher.target.removeprefix("grpc://")))
  try:
    runs = {side: [bench_data_service.measure(
        side, data_dir=data_dir, model="simple", steps=3, batch_size=8, cache="none",
        service=dispatcher.target, run_id=side, image_size=24)]
        for side in bench_data_service.SIDES}
  finally:
    worker._stop()  # pylint: disable=protected-access
    dispatcher._stop()  # pylint: disable=protected-access
  assert all(r[0] > 0 for r in runs.values()), runs
  result = {"runs": runs, "images_per_s": {s: v[0] * 8 for s, v in runs.items()},
            "ratios": {"service / host": runs["service"][0] / runs["host"][0]},
            "settings": {"model": "simple", "batch_size": 8, "steps": 3, "repeats": 1,
                         "cache": "none", "image_shape": [32, 32, 3], "train_image_size": 24,
                         "train_examples": 48, "data_dir": data_dir, "trainer_cpu": 0,
                         "worker_cpu": 1, "cpus": 2, "cpu_model": "x",
                         "load_average": [0, 0, 0]}}
  table = bench_data_service.format_table(result)
  assert "simple at 24 px from 32x32 px" in table and "service / host" in table

