"""tools/report.py on run directories written by the trainer's own writers (trainer/workdir.py):
RunDirs + write_flags / write_history / write_results / write_confusion_matrix."""

import base64
import io
import math
import re

from PIL import Image
import pytest

from tools import report
from tools import report_figures
from tools import report_runs
from trainer import config as config_lib
from trainer import workdir

CLASSES = ["airplane", "automobile", "bird"]
# learning_rate -> (test_loss, test_accuracy, best_epoch, epochs_run)
SWEEP = {"0.1": (1.0987, 0.3412, 2, 8), "0.01": (0.7421, 0.7438, 6, 10),
         "0.001": (0.8215, 0.6954, 7, 7)}


def history_rows(epochs, best_epoch, final_accuracy, val_gap=0.0):
  """Train loss falls every epoch; val_loss is lowest at best_epoch, where val_accuracy is
  final_accuracy + val_gap."""
  rows = []
  for epoch in range(1, epochs + 1):
    progress = epoch / epochs
    val_loss = 0.7 + 0.05 * (epoch - best_epoch) ** 2 + 0.01 * epoch
    rows.append({"epoch": epoch, "loss": round(2.1 * math.exp(-1.5 * progress), 4),
                 "accuracy": round(final_accuracy * (0.5 + 0.5 * progress) + 0.05, 4),
                 "val_loss": round(val_loss, 4),
                 "val_accuracy": round(final_accuracy + val_gap
                                       - 0.02 * abs(epoch - best_epoch), 4),
                 "time": round(30 + epoch % 3, 3)})
  return rows


def write_run(run_dir, learning_rate, test_loss, test_accuracy, best_epoch, epochs_run,
              finished=True, confusion=True, without_flags=(), val_gap=0.0, **flag_overrides):
  """A run as the trainer leaves it; without_flags: flags its (older) flags.txt lacks."""
  dirs = workdir.RunDirs(str(run_dir))
  run_dir.mkdir(parents=True)
  config = config_lib.Config(data_dir="/data", model_dir=str(run_dir), epochs=10, patience=3,
                             learning_rate=float(learning_rate), **flag_overrides)
  workdir.write_flags(dirs, config)
  if without_flags:
    text = workdir.flagfile_text(config)
    workdir.write_text(dirs.file(workdir.FLAGS_FILE), "".join(
        line for line in text.splitlines(keepends=True)
        if workdir.parse_flags(line).keys().isdisjoint(without_flags)))
  workdir.write_history(dirs, history_rows(epochs_run, best_epoch, test_accuracy, val_gap))
  if not finished:
    return run_dir
  workdir.write_results(dirs, {
      "test_loss": test_loss, "test_accuracy": test_accuracy, "test_examples": 300,
      "best_epoch": best_epoch, "best_val_loss": 0.7 + 0.01 * best_epoch,
      "epochs_run": epochs_run, "resumed_from_epoch": 0, "stopped_early": epochs_run < 10,
      "examples_per_s": 1234.5, "wall_time_s": 31.0 * epochs_run + 12.5, "num_replicas": 1,
      "strategy": "one_device", "model": config.model, "trainable_parameters": 1000,
      "global_batch_size": config.batch_size, "dtype_policy": "float32",
      "class_names": CLASSES})
  if confusion:
    correct = round(100 * test_accuracy)
    rest = 100 - correct
    workdir.write_confusion_matrix(dirs, CLASSES, [[correct, rest // 2, rest - rest // 2],
                                                   [rest // 2, correct, rest - rest // 2],
                                                   [rest - rest // 2, rest // 2, correct]])
  return run_dir


@pytest.fixture
def sweep(tmp_path):
  """A learning-rate sweep: 3 finished runs and 1 unfinished one, in tmp_path/sweep."""
  for lr, (loss, accuracy, best, epochs) in SWEEP.items():
    write_run(tmp_path / "sweep" / f"lr_{lr}", lr, loss, accuracy, best, epochs)
  write_run(tmp_path / "sweep" / "lr_0.0001", "0.0001", None, 0.5231, 4, 5, finished=False)
  return tmp_path / "sweep"


def main(argv):
  return report.COMMAND.call(argv)


def embedded_pngs(html_text):
  return [base64.b64decode(b64)
          for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)]


def table_rows(html_text):
  """{run name: row html} of the runs table."""
  body = html_text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
  rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body)
  return {re.search(r"<td>(.*?)</td>", r).group(1): r for r in rows}


def section(html_text, title):
  return html_text.split(f"<h2>{title}</h2>", 1)[1].split("<h2>", 1)[0]


def check_png(data):
  image = Image.open(io.BytesIO(data))
  assert image.format == "PNG"
  assert image.width > 100 and image.height > 100
  low_high = image.convert("L").getextrema()
  assert low_high[1] - low_high[0] > 50, "a blank image"


def test_sweep_report(sweep, tmp_path, capsys, caplog):
  out = tmp_path / "out"
  assert main([str(sweep), f"--out={out}", "--title=lr <sweep>"]) == 0  # the old spelling
  printed = capsys.readouterr().out.split()
  html_text = (out / "report.html").read_text()
  md = (out / "report.md").read_text()
  assert str(out / "report.html") in printed and str(out / "report.md") in printed

  # Self-contained: no external resources; the title escaped.
  assert "<h1>lr &lt;sweep&gt;</h1>" in html_text
  assert not re.search(r'(src|href)="(?!data:)', html_text)

  # 4 learning-curve figures, the val_accuracy overlay, learning_rate, the confusion matrix.
  pngs = embedded_pngs(html_text)
  assert html_text.count("data:image/png;base64,") == len(pngs) == 7
  for data in pngs:
    check_png(data)
  files = sorted(p.name for p in out.glob("*.png"))
  assert files == sorted(["curves_lr_0.0001.png", "curves_lr_0.001.png", "curves_lr_0.01.png",
                          "curves_lr_0.1.png", "val_accuracy_all.png", "flag_learning_rate.png",
                          "confusion_matrix.png"])
  assert sorted(pngs) == sorted((out / f).read_bytes() for f in files)
  printed_pngs = [p for p in printed if p.endswith(".png")]
  assert sorted(printed_pngs) == sorted(str(out / f) for f in files)

  # The table: every run (the parent expanded, sorted by name), its accuracy as printed.
  rows = table_rows(html_text)
  assert list(rows) == ["lr_0.0001", "lr_0.001", "lr_0.01", "lr_0.1"]
  for lr, (loss, accuracy, best, epochs) in SWEEP.items():
    cells = re.findall(r"<td>(.*?)</td>", rows[f"lr_{lr}"])
    shown = f"<strong>{accuracy:.4f}</strong>" if lr == "0.01" else f"{accuracy:.4f}"
    # val accuracy: at the best epoch, where history_rows puts val_accuracy = test accuracy.
    assert cells == [f"lr_{lr}", "simple", lr, f"{loss:.4f}", shown, f"{accuracy:.4f}",
                     str(best), str(epochs), f"{(31.0 * epochs + 12.5) / 60:.1f}"]
  assert html_text.count("<strong>") == 1
  assert "unfinished: best val_accuracy 0.5231" in rows["lr_0.0001"]
  assert "0.7438" not in rows["lr_0.0001"]
  header = re.findall(r"<th>(.*?)</th>", html_text)
  assert "learning_rate" in header
  for constant in ("batch_size", "optimizer", "model_dir", "data_dir", "augment", "epochs"):
    assert constant not in header
  assert any("lr_0.0001" in r.message and "unfinished" in r.message for r in caplog.records)

  # One chart per swept flag only; the learning rates span 1000x: log-scale x.
  sweep_section = section(html_text, "Swept flags")
  assert sweep_section.count("data:image/png") == 1
  assert "--learning_rate (line through the mean per value, log-scale x)" in sweep_section
  assert "batch_size" not in sweep_section

  # The confusion matrix is the best run's, named with its classes.
  confusion = section(html_text, "Confusion matrix")
  assert "lr_0.01" in confusion and "0.7438" in confusion
  for name in CLASSES:
    assert name in confusion
  assert confusion.count("data:image/png") == 1

  # Markdown: the same table, the best accuracy bold, the plots linked by relative path.
  md_rows = [line for line in md.splitlines() if line.startswith("| lr_")]
  assert len(md_rows) == 4
  assert "| **0.7438** |" in next(r for r in md_rows if r.startswith("| lr_0.01 "))
  assert "| 0.3412 |" in next(r for r in md_rows if r.startswith("| lr_0.1 "))
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
  assert sorted(links) == files


def test_two_swept_flags_bar_chart_and_mean_line(tmp_path):
  runs = tmp_path / "grid"
  for i, (optimizer, lr) in enumerate([("adam", "0.001"), ("adam", "0.01"), ("sgd", "0.001"),
                                       ("sgd", "0.01")]):
    write_run(runs / f"{optimizer}_{lr}", lr, 0.9 - 0.05 * i, 0.6 + 0.05 * i, 3, 5,
              optimizer=optimizer, confusion=False)
  out = tmp_path / "out"
  main([str(runs), f"--output_dir={out}"])
  html_text = (out / "report.html").read_text()
  sweep_section = section(html_text, "Swept flags")
  assert "--learning_rate (line through the mean per value, log-scale x)" in sweep_section
  assert "--optimizer (bar = mean per value)" in sweep_section
  assert sweep_section.count("data:image/png") == 2
  for data in embedded_pngs(sweep_section):
    check_png(data)
  header = re.findall(r"<th>(.*?)</th>", html_text)
  assert header[:4] == ["run", "model", "optimizer", "learning_rate"]
  # The best run (sgd_0.01, accuracy 0.75) wrote no confusion matrix: said in text.
  confusion = section(html_text, "Confusion matrix")
  assert "sgd_0.01" in confusion and "no confusion_matrix.csv" in confusion
  assert "data:image/png" not in confusion


def test_flag_missing_from_older_runs_is_not_a_difference(tmp_path, caplog):
  # "old" predates --augment_on and --weights; the newer runs agree on augment_on but not on
  # weights, so only weights (and learning_rate) are compared, "old" showing (unset).
  runs = tmp_path / "runs"
  write_run(runs / "old", "0.01", 0.9, 0.6, 3, 5, confusion=False,
            without_flags=("augment_on", "weights"))
  write_run(runs / "new_a", "0.01", 0.8, 0.65, 3, 5, confusion=False, augment_on="host",
            weights="none")
  write_run(runs / "new_b", "0.001", 0.7, 0.7, 3, 5, confusion=False, augment_on="host",
            weights="imagenet")
  out = tmp_path / "out"
  with caplog.at_level("WARNING"):
    main([str(runs), f"--output_dir={out}"])
  header = re.findall(r"<th>(.*?)</th>", (out / "report.html").read_text())
  assert header[:4] == ["run", "model", "learning_rate", "weights"]
  assert "augment_on" not in header
  assert not (out / "flag_augment_on.png").exists() and (out / "flag_weights.png").exists()
  rows = table_rows((out / "report.html").read_text())
  assert "(unset)" in rows["old"] and "(unset)" not in rows["new_a"]
  assert "not compared: augment_on" in caplog.text


def test_run_dirs_given_directly_colliding_names_and_many_classes(tmp_path):
  a = write_run(tmp_path / "a" / "run", "0.01", 0.8, 0.7, 2, 3, confusion=False)
  b = write_run(tmp_path / "b" / "run", "0.01", 0.7, 0.72, 3, 3, confusion=False,
                model="basic")
  classes = [f"class_{i:02d}" for i in range(25)]
  counts = [[(40 if i == j else (i * 7 + j) % 3) for j in range(25)] for i in range(25)]
  workdir.write_confusion_matrix(workdir.RunDirs(str(b)), classes, counts)
  out = tmp_path / "out"
  main([str(a), str(b), f"--output_dir={out}"])
  html_text = (out / "report.html").read_text()
  rows = table_rows(html_text)
  assert list(rows) == ["a/run", "b/run"]
  assert "<td>basic</td>" in rows["b/run"]  # model has its own column, not a flag column
  assert re.findall(r"<th>(.*?)</th>", html_text).count("model") == 1
  assert "data:image/png" in section(html_text, "Swept flags")  # a bar chart of model
  confusion = section(html_text, "Confusion matrix")
  assert "class_00" in confusion and "class_24" in confusion
  (data,) = embedded_pngs(confusion)
  check_png(data)
  assert {"curves_a_run.png", "curves_b_run.png"} <= {p.name for p in out.glob("*.png")}


def run_error(argv, capsys):
  with pytest.raises(SystemExit) as raised:
    main(argv)
  message = str(raised.value.code)
  assert message.startswith("tools.report: error: ") and "\n" not in message
  return message


def test_errors_name_the_bad_path(sweep, tmp_path, capsys):
  out = f"--output_dir={tmp_path / 'out'}"
  assert "no RUN_DIR given" in run_error([out], capsys)
  assert "--output_dir" in run_error([str(sweep)], capsys)
  empty = tmp_path / "empty"
  (empty / "not_a_run").mkdir(parents=True)
  assert f"{empty}: not a run directory" in run_error([str(sweep), str(empty), out], capsys)
  missing = tmp_path / "missing"
  assert f"{missing}: no such directory" in run_error([str(missing), out], capsys)

  bad_json = sweep / "lr_0.1" / "results.json"
  bad_json.write_text('{"test_loss": 1.0, ')
  assert f"{bad_json}: not valid JSON" in run_error([str(sweep), out], capsys)
  bad_json.write_text('{"test_loss": 1.0, "test_accuracy": 0.3}')
  assert f"{bad_json}: missing key(s) best_epoch, epochs_run" in run_error([str(sweep), out],
                                                                         capsys)
  bad_json.unlink()  # now an unfinished run

  confusion = sweep / "lr_0.01" / "confusion_matrix.csv"
  confusion.write_text("true\\predicted,airplane,automobile,bird\n"
                       "airplane,70,10,20\nautomobile,10,75,15\n")
  message = run_error([str(sweep), out], capsys)
  assert f"{confusion}: not square" in message and "3 predicted classes" in message
  confusion.write_text("true\\predicted,airplane,automobile\nairplane,70,10\nautomobile,10\n")
  assert f"{confusion}: not square: line 3 has 1 counts" in run_error([str(sweep), out], capsys)
  confusion.unlink()

  history = sweep / "lr_0.001" / "history.csv"
  history.write_text("epoch,loss,accuracy,time\n1,2.0,0.3,30.0\n")  # an older format
  message = run_error([str(sweep), out], capsys)
  assert f"{history}: missing column(s) val_loss, val_accuracy" in message
  assert not (tmp_path / "out" / "report.html").exists()


def test_figures_axes_ticks_and_cells(sweep, tmp_path):
  runs = {r.name: r for r in report_runs.load_runs([str(sweep)])}
  assert [r.name for r in runs.values()] == ["lr_0.0001", "lr_0.001", "lr_0.01", "lr_0.1"]

  # Learning curves: the best epoch dashed and labelled on both panels (lowest val_loss if
  # unfinished).
  for name, best, suffix in (("lr_0.01", 6, ""), ("lr_0.0001", 4, " so far")):
    fig = report_figures.learning_curves_figure(runs[name])
    for ax in fig.axes:
      (vline,) = [l for l in ax.get_lines() if l.get_label().startswith("best epoch")]
      assert list(vline.get_xdata()) == [best, best] and vline.get_linestyle() == "--"
      assert vline.get_label() == f"best epoch {best}{suffix}"
      assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == vline.get_label()
    report_figures.plt.close(fig)

  # The learning-rate chart: finished runs only, log x, the line through the values sorted
  # (whatever the runs' order).
  fig, kind = report_figures.flag_figure("learning_rate", list(reversed(runs.values())))
  accuracy_ax, loss_ax = fig.axes
  assert accuracy_ax.get_xscale() == "log" and "log-scale x" in kind
  (line,) = accuracy_ax.get_lines()
  assert list(line.get_xdata()) == [0.001, 0.01, 0.1]
  assert list(line.get_ydata()) == [0.6954, 0.7438, 0.3412]
  assert list(loss_ax.get_lines()[0].get_ydata()) == [0.8215, 0.7421, 1.0987]
  report_figures.plt.close(fig)

  # The confusion matrix: class names on both axes, a count in each cell, rows as fractions.
  fig = report_figures.confusion_matrix_figure(runs["lr_0.01"])
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
  assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
  assert sorted(t.get_text() for t in ax.texts) == sorted(["74", "13", "13"] * 3)
  fractions = ax.get_images()[0].get_array().tolist()
  assert fractions[0] == pytest.approx([0.74, 0.13, 0.13])
  assert [sum(row) for row in fractions] == pytest.approx([1, 1, 1])
  report_figures.plt.close(fig)

  # More than 20 classes: no cell text, smaller tick labels.
  many = [f"c{i}" for i in range(30)]
  run = runs["lr_0.01"]
  run.confusion = (many, report_figures.np.eye(30, dtype=int) * 5 + 1)
  fig = report_figures.confusion_matrix_figure(run)
  ax = fig.axes[0]
  assert not ax.texts
  assert [t.get_text() for t in ax.get_yticklabels()] == many
  assert ax.get_yticklabels()[0].get_fontsize() < 9
  report_figures.plt.close(fig)


def test_runs_sort_numbers_by_value_and_confusion_run_picks_the_matrix(tmp_path, capsys):
  for classes, accuracy in (("10", 0.49), ("2", 0.94), ("5", 0.66)):
    write_run(tmp_path / "classes" / f"classes={classes}", "0.001", 1.0, accuracy, 3, 4,
              classes=classes)
  out = tmp_path / "out"
  assert main([str(tmp_path / "classes"), f"--output_dir={out}",
                      "--confusion_run=classes=10"]) == 0
  html_text = (out / "report.html").read_text()
  assert list(table_rows(html_text)) == ["classes=2", "classes=5", "classes=10"]
  assert "Test split of the chosen run, classes=10 (test accuracy 0.4900)" in html_text
  message = run_error([str(tmp_path / "classes"), f"--output_dir={out}", "--confusion_run=nope"],
                      capsys)
  assert "--confusion_run=nope: no finished run of that name" in message
  assert report_runs.natural_key("lr=1e-4") < report_runs.natural_key("lr=1e-3")


def visible_xticks(ax):
  """(tick positions, tick label texts) inside the x axis' view, as drawn."""
  ax.figure.canvas.draw()
  low, high = ax.get_xlim()
  ticks = [t for t in ax.get_xticks() if low <= t <= high]
  labels = [label.get_text() for label in ax.get_xticklabels()
            if low <= label.get_position()[0] <= high]
  return ticks, labels


def assert_integer_epoch_ticks(ax):
  ticks, labels = visible_xticks(ax)
  assert ticks and all(t == int(t) for t in ticks), ticks
  assert labels == [str(int(t)) for t in ticks]


def test_epoch_axes_have_whole_number_ticks(sweep, tmp_path):
  # 5 epochs: matplotlib's default ticks would be 1.0, 1.5, ..., 5.0.
  write_run(tmp_path / "one_epoch", "0.01", 0.9, 0.6, 1, 1)
  runs = {r.name: r for r in report_runs.load_runs([str(sweep), str(tmp_path / "one_epoch")])}
  for name in ("lr_0.0001", "lr_0.01", "one_epoch"):
    fig = report_figures.learning_curves_figure(runs[name])
    for ax in fig.axes:
      assert ax.get_xlabel() == "epoch"
      assert_integer_epoch_ticks(ax)
    report_figures.plt.close(fig)
  fig = report_figures.val_accuracy_figure(list(runs.values()))
  (ax,) = fig.axes
  assert_integer_epoch_ticks(ax)
  report_figures.plt.close(fig)


def test_overlay_has_dots_per_epoch_and_a_star_at_each_best_epoch(sweep, tmp_path):
  write_run(tmp_path / "long" / "lr_0.003", "0.003", 0.8, 0.7, 60, 90)
  runs = report_runs.load_runs([str(sweep), str(tmp_path / "long")])
  fig = report_figures.val_accuracy_figure(runs)
  (ax,) = fig.axes
  curves = {l.get_label(): l for l in ax.get_lines() if not l.get_label().startswith("_")}
  stars = {l.get_label(): l for l in ax.get_lines() if l.get_label().startswith("_best epoch")}
  assert sorted(curves) == ["lr_0.0001 (unfinished)", "lr_0.001", "lr_0.003", "lr_0.01",
                            "lr_0.1"]
  for line in curves.values():
    assert line.get_marker() == "o" and line.get_linestyle() == "-"
  # A dot on every epoch of the short runs; on the 90-epoch run every 3rd (30 dots).
  assert curves["lr_0.01"].get_markevery() == 1
  assert curves["lr_0.003"].get_markevery() == 3
  # The star: at results.json's best epoch, on that epoch's val_accuracy, in the run's
  # colour; for the unfinished run at its lowest val_loss so far (epoch 4).
  expected = {"lr_0.1": 2, "lr_0.01": 6, "lr_0.001": 7, "lr_0.003": 60, "lr_0.0001": 4}
  assert sorted(stars) == sorted(f"_best epoch of {name}" for name in expected)
  for run in runs:
    star = stars[f"_best epoch of {run.name}"]
    best = expected[run.name]
    (val_accuracy,) = [r["val_accuracy"] for r in run.history if r["epoch"] == best]
    assert list(star.get_xdata()) == [best] and list(star.get_ydata()) == [val_accuracy]
    assert star.get_marker() == "*" and star.get_linestyle() == "None"
    curve = curves[run.name + ("" if run.finished else " (unfinished)")]
    assert star.get_color() == curve.get_color()
  # One legend entry explains all the stars.
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend[-1].startswith("best epoch") and len(legend) == len(curves) + 1
  report_figures.plt.close(fig)


def test_table_shows_the_best_epochs_val_accuracy_beside_the_test_accuracy(tmp_path):
  runs = tmp_path / "runs"
  # val_accuracy at the best epoch differs from the test accuracy (and from the highest
  # val_accuracy, at epoch 2 of "late_peak"), so the column cannot be either by accident.
  write_run(runs / "a", "0.01", 0.8, 0.7, 3, 5, confusion=False, val_gap=0.0321)
  write_run(runs / "b", "0.001", 0.9, 0.6, 4, 6, confusion=False, val_gap=-0.0105)
  late_peak = write_run(runs / "late_peak", "0.1", 1.0, 0.5, 5, 5, confusion=False)
  rows = history_rows(5, 5, 0.5)
  rows[1]["val_accuracy"] = 0.9  # epoch 2: the highest val_accuracy, not the best epoch
  rows[4]["val_accuracy"] = float("nan")  # the best epoch's is unknown: an em dash
  workdir.write_history(workdir.RunDirs(str(late_peak)), rows)
  write_run(runs / "z_unfinished", "0.0001", None, 0.55, 2, 4, finished=False,
            confusion=False, val_gap=0.0012)
  out = tmp_path / "out"
  assert main([str(runs), f"--output_dir={out}"]) == 0
  html_text = (out / "report.html").read_text()
  header = re.findall(r"<th>(.*?)</th>", html_text)
  assert header[header.index("test accuracy") + 1] == "val accuracy"
  column = header.index("val accuracy")
  expected = {"a": "0.7321", "b": "0.5895", "late_peak": report_runs.NONE,
              "z_unfinished": "0.5512"}  # unfinished: at the lowest val_loss so far
  html_rows = table_rows(html_text)
  md = (out / "report.md").read_text()
  md_header = next(l for l in md.splitlines() if l.startswith("| run |"))
  assert [c.strip() for c in md_header.strip("|").split("|")] == header
  for name, shown in expected.items():
    assert re.findall(r"<td>(.*?)</td>", html_rows[name])[column] == shown
    md_row = next(l for l in md.splitlines() if l.startswith(f"| {name} |"))
    assert [c.strip() for c in md_row.strip("|").split("|")][column] == shown
  assert "the validation accuracy at the best epoch" in section(html_text, "Runs")


def flag_axes(tmp_path, flag, runs):
  """The accuracy and loss axes of flag_figure(flag) over `runs`: {name: (lr, overrides)}."""
  parent = tmp_path / flag
  for i, (name, (lr, overrides)) in enumerate(runs.items()):
    write_run(parent / name, lr, 0.9 - 0.1 * i, 0.6 + 0.05 * i, 2, 3, confusion=False,
              **overrides)
  fig, kind = report_figures.flag_figure(flag, report_runs.load_runs([str(parent)]))
  return fig, kind


def test_swept_flag_axes_log_scale_rule_and_value_ticks(tmp_path):
  # Learning rates are log even over less than a decade; the ticks are the values, as
  # flags.txt spells them, not powers of ten (of which a 1e-4..3e-4 axis has none).
  fig, kind = flag_axes(tmp_path, "learning_rate", {"a": ("0.0001", {}), "b": ("0.0003", {})})
  for ax in fig.axes:
    assert ax.get_xscale() == "log" and "log-scale x" in kind
    ticks, labels = visible_xticks(ax)
    assert ticks == pytest.approx([1e-4, 3e-4]) and labels == ["0.0001", "0.0003"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
  report_figures.plt.close(fig)

  # Any other flag spanning a decade or more: log, ticked at its values.
  fig, kind = flag_axes(tmp_path, "batch_size", {
      f"bs{b}": ("0.01", {"batch_size": b}) for b in (32, 64, 512)})
  for ax in fig.axes:
    assert ax.get_xscale() == "log"
    assert visible_xticks(ax)[1] == ["32", "64", "512"]
  report_figures.plt.close(fig)

  # Less than a decade, not a rate: linear. A learning rate of 0: linear (log cannot show 0).
  for flag, runs in (("classes", {"c2": ("0.01", {"classes": "2"}),
                                  "c5": ("0.01", {"classes": "5"})}),
                     ("head_learning_rate", {"h0": ("0.01", {"head_learning_rate": 0.0}),
                                             "h1": ("0.01", {"head_learning_rate": 0.001})})):
    fig, kind = flag_axes(tmp_path, flag, runs)
    assert [ax.get_xscale() for ax in fig.axes] == ["linear", "linear"], flag
    assert "log" not in kind
    report_figures.plt.close(fig)

  assert report_figures.log_flag_axis("weight_decay", [1e-5, 1e-4])
  assert not report_figures.log_flag_axis("weight_decay", [1e-5, 9e-5])
  assert report_figures.log_flag_axis("head_learning_rate", [0.001, 0.002])
  assert not report_figures.log_flag_axis("learning_rate", [0.001, 0.001])
  assert not report_figures.log_flag_axis("epochs", [-1.0, 100.0])


def test_a_resumed_runs_wall_time_counts_the_epochs_before_the_resume(tmp_path):
  """results.json's wall_time_s is the finishing process's: a run stopped after its epochs
  and resumed only to be tested must not show the seconds of its test."""
  run_dir = write_run(tmp_path / "resumed", "0.001", 0.8, 0.7, 8, 10)
  results = workdir.read_results(str(run_dir))
  results.update(resumed_from_epoch=10, wall_time_s=9.0)
  workdir.write_results(workdir.RunDirs(str(run_dir)), results)
  run, = report_runs.load_runs([str(run_dir)])
  epochs = sum(30 + epoch % 3 for epoch in range(1, 11))  # history_rows' times
  assert run.wall_time_s == pytest.approx(9.0 + epochs)
  results.update(resumed_from_epoch=0)
  workdir.write_results(workdir.RunDirs(str(run_dir)), results)
  assert report_runs.load_runs([str(run_dir)])[0].wall_time_s == pytest.approx(9.0)
