"""trainer.predict on a real trained run: real JPEGs and PNGs of other sizes and modes get the
training data's class names and the probabilities model.keras gives on the same pixels; a
bad image is reported by name and the rest still predicted."""

import json

from tests import gcs_emulator  # pylint: disable=g-bad-import-order (before gcsfs is imported)
from absl import flags
import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from pipeline import dataset_info
from pipeline import features
from tests import processes
from tests import testdata
from tests.trainer import trained_run
from trainer import input_pipeline
from trainer import predict
from trainer import serving
from trainer import workdir

CLASSES = ["airplane", "automobile", "bird"]  # the default test data's


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
  return trained_run.model_dir(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  return trained_run.write_images(tmp_path_factory.mktemp("images"))


def _keras_probabilities(run_dir, path):
  """model.keras on the pixels the data pipeline gives for `path`, by its own route: a JPEG
  decoded by TensorFlow (as the trainer decodes stored JPEGs), a PNG converted to RGB by PIL
  (as the Beam job converts grayscale and RGBA, storing lossless PNG); resized to the input
  size as the trainer resizes."""
  if path.endswith(".jpg"):
    pixels = tf.io.decode_jpeg(open(path, "rb").read(), channels=3)
  else:
    pixels = tf.constant(np.asarray(Image.open(path).convert("RGB")))
  model = keras.models.load_model(workdir.join(run_dir, workdir.KERAS_MODEL))
  size = model.input_shape[1:3]
  if tuple(pixels.shape[:2]) != tuple(size):
    pixels = input_pipeline.resize_pixels(pixels, size)
  return model.predict(tf.cast(pixels, tf.float32)[None], verbose=0)[0]


def test_the_command_predicts_every_good_image_reports_the_bad_one_and_exits_2(
    run_dir, images, tmp_path):
  bad = tmp_path / "truncated.jpg"
  bad.write_bytes(open(images["jpeg_upscaled"], "rb").read()[:300])
  output = tmp_path / "predictions.json"
  inputs = [images["jpeg_32"], str(bad), images["jpeg_upscaled"], images["png_gray"],
            images["png_rgba"]]
  process = processes.start("trainer.predict", f"--model_dir={run_dir}", "--top_k=1",
                            f"--output={output}", *inputs, merge_stderr=True)
  status, stderr = processes.finish(process, timeout=240)  # stdout is empty with --output
  assert status == 2, stderr
  assert f"trainer.predict: {bad}: truncated_image:" in stderr
  assert "predicted 4 of 5 images (failed: truncated_image 1)" in stderr

  records = json.loads(output.read_text())
  assert [r["path"] for r in records] == inputs  # input order, the failure in its place
  assert records[1] == {"path": str(bad), "error": records[1]["error"]}
  assert records[1]["error"].startswith("truncated_image: ")
  for record in records[:1] + records[2:]:
    assert record["error"] == ""
    assert list(record["probabilities"]) == CLASSES
    expected = _keras_probabilities(run_dir, record["path"])
    got = np.array([record["probabilities"][n] for n in CLASSES])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=record["path"])
    assert record["class_name"] == CLASSES[int(expected.argmax())]
    assert record["probability"] == pytest.approx(expected.max(), rel=1e-5)
    assert len(record["top_k"]) == 1 and record["top_k"][0]["class_name"] in CLASSES


def test_test_split_images_get_the_probabilities_of_model_keras_on_the_stored_records(
    run_dir, data_dir):
  # The stored records, decoded as the trainer decodes them, are the pixels training saw;
  # the same JPEG files read from the shipped sample through predict must give what
  # model.keras gives on those.
  info = dataset_info.load(data_dir)
  records = [features.parse_single(r) for r in
             tf.data.TFRecordDataset(list(info.split("test").shards))]
  pixels = np.stack([input_pipeline.decode_image(r[features.IMAGE]) for r in records])
  model = keras.models.load_model(workdir.join(run_dir, workdir.KERAS_MODEL))
  expected = model.predict(pixels.astype(np.float32), verbose=0)
  keys = [r[features.KEY].numpy().decode().split("/") for r in records]  # test/<class>/<file>
  files = {(c, p.name): str(p) for p, c in testdata.sample_files("test", CLASSES)}
  paths = [files[(c, name)] for _, c, name in keys]

  served = serving.load(workdir.saved_model_dir(run_dir))
  got = list(predict.predict(served, paths, batch_size=7, readers=2))
  assert [p.path for p in got] == paths and all(not p.error for p in got)
  np.testing.assert_allclose(np.stack([p.probabilities for p in got]), expected,
                             rtol=1e-5, atol=1e-6)


def _run(argv, capsys):
  flag_values = flags.FlagValues()
  predict.define_flags(flag_values)
  rest = flag_values(["trainer.predict", *argv])
  status = predict.run_command(rest, flag_values)
  out, err = capsys.readouterr()
  return status, out, err


def test_folders_and_path_lists_print_a_line_per_image_in_order(run_dir, images, tmp_path,
                                                                capsys):
  folder = tmp_path / "folder"
  (folder / "sub").mkdir(parents=True)
  (folder / "sub" / "a.png").write_bytes(open(images["png_gray"], "rb").read())
  (folder / "b.jpg").write_bytes(open(images["jpeg_32"], "rb").read())
  (folder / "notes.txt").write_text("not an image")
  (folder / ".hidden.jpg").write_bytes(b"")
  listing = tmp_path / "list.csv"
  listing.write_text("path,label\nfolder/b.jpg,airplane\n" + images["png_rgba"] + ",x\n")

  status, out, err = _run([f"--model_dir={run_dir}", "--top_k=2", "--batch_size=2",
                           "--progress_seconds=0", str(folder), str(listing)], capsys)
  assert status == 0, err
  lines = [line.split("\t") for line in out.splitlines()]
  assert [cells[0] for cells in lines] == [
      str(folder / "b.jpg"), str(folder / "sub" / "a.png"), f"{tmp_path}/folder/b.jpg",
      images["png_rgba"]]
  for cells in lines:
    assert len(cells) == 7 and sorted(cells[1::2]) == CLASSES
    probabilities = [float(p) for p in cells[2::2]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
  assert "skipped 1 file(s) without an image extension" in err
  assert "predicted 4 of 4 images" in err
  assert "trainer.predict: 2 of 4 images, " in err and "images/s" in err  # progress lines


def test_csv_output_and_mistakes_that_name_the_flag(run_dir, images, tmp_path, capsys):
  output = tmp_path / "out.csv"
  status, _, err = _run([f"--model_dir={run_dir}", f"--output={output}", images["jpeg_32"],
                         str(tmp_path / "missing.jpg")], capsys)
  assert status == 2
  assert f"{tmp_path / 'missing.jpg'}: not_found: no such file" in err
  rows = output.read_text().splitlines()
  assert rows[0] == "path,class_name,probability,error"
  assert rows[1].startswith(images["jpeg_32"] + ",") and rows[1].endswith(",")
  assert rows[2] == f"{tmp_path / 'missing.jpg'},,,not_found: no such file"

  with pytest.raises(predict.PredictError, match="--output=out.txt"):
    _run([f"--model_dir={run_dir}", "--output=out.txt", images["jpeg_32"]], capsys)
  with pytest.raises(predict.PredictError, match=r"--top_k=3: the model has only 3"):
    _run([f"--model_dir={run_dir}", "--top_k=3", images["jpeg_32"]], capsys)
  with pytest.raises(serving.ServingError, match=f"{tmp_path}/saved_model: no saved_model.pb"):
    _run([f"--model_dir={tmp_path}", images["jpeg_32"]], capsys)


def test_a_run_exported_before_the_serving_signatures_is_exported_again_and_predicted(
    run_dir, images, tmp_path, capsys):
  # What runs trained before 2026-12-02 hold: keras.Model.export's `serve` only.
  old = tmp_path / "old_run"
  old.mkdir()
  for name in (workdir.KERAS_MODEL, workdir.RESULTS_FILE):
    (old / name).write_bytes(open(workdir.join(run_dir, name), "rb").read())
  keras.models.load_model(old / workdir.KERAS_MODEL).export(str(old / "saved_model"),
                                                            verbose=False)
  with pytest.raises(serving.OldSavedModelError, match="has no metadata or "):
    serving.load(str(old / "saved_model"))

  status, out, _ = _run([f"--model_dir={old}", images["jpeg_upscaled"]], capsys)
  assert status == 0
  new_status, new_out, _ = _run([f"--model_dir={run_dir}", images["jpeg_upscaled"]], capsys)
  assert new_status == 0 and out == new_out and out.split("\t")[1] in CLASSES
  assert sorted(p.name for p in old.iterdir()) == ["model.keras", "results.json",
                                                   "saved_model"]  # left as it was


def test_images_served_over_http_are_predicted_like_local_files(run_dir, images, capsys):
  # A real HTTP server on 127.0.0.1 serving the images' folder (http(s) is read with fsspec,
  # as the Beam job reads path lists).
  import functools  # pylint: disable=g-import-not-at-top
  import http.server  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                              directory=os.path.dirname(images["png_gray"]))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    status, out, err = _run([f"--model_dir={run_dir}", f"{base}/bird_gray.png",
                             f"{base}/missing.png"], capsys)
  finally:
    server.shutdown()
  local_status, local_out, _ = _run([f"--model_dir={run_dir}", images["png_gray"]], capsys)
  assert status == 2 and local_status == 0
  assert out.split("\t")[1:] == local_out.split("\t")[1:]
  assert f"{base}/missing.png: " in err


def test_a_gs_folder_and_a_gs_path_list_are_predicted_like_local_files(run_dir, images,
                                                                       tmp_path, capsys):
  # A real GCS server (gcp-storage-emulator) on 127.0.0.1; inputs are read through gcsfs.
  with gcs_emulator.running(tmp_path / "gcs", bucket="predict") as gcs:
    fs = gcs.fs()
    fs.pipe(gcs.url("photos/a/plane.jpg"), open(images["jpeg_32"], "rb").read())
    fs.pipe(gcs.url("photos/gray.png"), open(images["png_gray"], "rb").read())
    fs.pipe(gcs.url("list.csv"), b"path\nphotos/gray.png\n")
    status, out, err = _run([f"--model_dir={run_dir}", gcs.url("photos"),
                             gcs.url("list.csv")], capsys)
  assert status == 0, err
  lines = [line.split("\t") for line in out.splitlines()]
  assert [cells[0] for cells in lines] == [
      gcs.url("photos/a/plane.jpg"), gcs.url("photos/gray.png"), gcs.url("photos/gray.png")]
  _, local_out, _ = _run([f"--model_dir={run_dir}", images["jpeg_32"], images["png_gray"]],
                         capsys)
  local = [line.split("\t") for line in local_out.splitlines()]
  assert [cells[1:] for cells in lines] == [cells[1:] for cells in local + local[1:]]


def test_an_exif_rotated_photo_is_predicted_upright_as_the_beam_job_stores_it(
    run_dir, images, tmp_path):
  # A phone's portrait JPEG: the pixels stored landscape with EXIF orientation 6 ("rotate
  # 90 degrees clockwise to show"). predict must see what a viewer (and the Beam job) shows.
  upright = Image.open(images["jpeg_upscaled"]).convert("RGB").resize((48, 64))
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation
  rotated = tmp_path / "portrait.jpg"
  upright.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
  shown = tmp_path / "shown.png"  # what a viewer shows, lossless
  Image.open(rotated).transpose(Image.Transpose.ROTATE_270).save(shown)
  served = serving.load(workdir.saved_model_dir(run_dir))
  [got] = predict.predict(served, [str(rotated)], batch_size=1, readers=1)
  assert not got.error
  np.testing.assert_allclose(got.probabilities, _keras_probabilities(run_dir, str(shown)),
                             rtol=1e-5, atol=1e-6)
  # Without the rotation the network would see other pixels (the test can tell them apart).
  stored = tmp_path / "stored.png"
  Image.open(rotated).save(stored)
  assert not np.allclose(got.probabilities, _keras_probabilities(run_dir, str(stored)),
                         rtol=1e-5, atol=1e-6)
