"""An HTML and Markdown report of finished training runs: table, learning curves, sweeps.

    python -m tools.report runs/lr_sweep --output_dir=/tmp/report
    python -m tools.report runs/a gs://bucket/runs/b --output_dir=/tmp/report --title="a vs b"

(--out=DIR, the old spelling of --output_dir, still works.)

Each argument is a run directory (a `--model_dir` of `python -m trainer.main`: it holds
history.csv or results.json) or a parent directory whose immediate subdirectories are run
directories, such as a sweep's output directory. Runs are named by their directory's
basename (prefixed with the parent's name where two basenames collide) and sorted by name,
numbers by value (classes=2 before classes=10).
Files read from each run, locally or on gs://, through trainer/workdir.py: flags.txt,
history.csv, results.json and, if present, confusion_matrix.csv. A run with history.csv but
no results.json is
"unfinished": it is listed with its best val_accuracy so far, and a warning is logged.

Writes into --output_dir (tools/report_figures.py draws the plots, tools/report_runs.py
finds and compares the runs):
  report.html   self-contained: inline CSS, every plot embedded as a data:image/png URI
  report.md     the same sections; the plots linked by relative path
  *.png         the plots (matplotlib, Agg backend)

Sections:
  Runs               run, model, the flags that differ between runs, test loss and accuracy
                     (the best test accuracy in bold), val accuracy (history.csv's
                     val_accuracy at the best epoch: of the weights tested), best epoch,
                     epochs run, wall time (of a resumed run, with its earlier
                     processes' epochs from history.csv).
  Learning curves    per run, loss and accuracy (train and validation) per epoch, the best
                     epoch (results.json's best_epoch; the lowest val_loss if unfinished)
                     dashed; with more than one run, every run's val_accuracy overlaid,
                     a dot per epoch (every k-th past 30 epochs) and a star at each run's
                     best epoch. Epoch axes have whole-number ticks.
  Swept flags        one chart per flag whose value differs between the runs' flags.txt
                     (--model_dir never counts; nor does a flag that older runs lack and
                     the others all set alike): test accuracy and test loss of each
                     finished run against the flag's value. Numeric values: sorted, on a
                     log x axis if all positive and max/min >= 10 or the flag is a learning
                     rate (the rule: tools/report_figures.py's docstring), ticked at the
                     values as flags.txt spells them; other
                     values: one bar per value, in the runs' order. When several runs share
                     a value (another flag is swept too, or repeated seeds), each run is a
                     dot and the line (or bar) is the mean of the runs with that value.
  Confusion matrix   of the finished run with the highest test accuracy (or --confusion_run)
                     from its confusion_matrix.csv: colour = fraction of the true class (rows sum to
                     1), counts written in the cells for up to 20 classes.

A directory that is neither a run nor a parent of runs, or a malformed file (bad JSON, a
history.csv without its columns, a confusion matrix that is not square), stops the tool with
a one-line error naming the file (`tools.report: error: ...`) and exit status 1.
"""

import base64
import dataclasses
import datetime
import html
import os

from absl import flags

from pipeline import logs

logs.import_tensorflow_if_main(__name__)  # before the imports below load TensorFlow

from tools import cli
from tools import report_figures as figures
from tools import report_runs
from tools.report_runs import NONE
from trainer import workdir

def _fmt(value, spec):
  return NONE if value is None else format(value, spec)


def table(runs, flags):
  """(header, rows, best row indices): the runs table as plain text cells."""
  header = ["run", "model", *flags, "test loss", "test accuracy", "val accuracy", "best epoch",
            "epochs run", "wall time (min)"]
  rows = []
  for run in runs:
    cells = [run.name, run.model]
    cells += [NONE if run.flags is None else run.flags.get(f, "(unset)") for f in flags]
    if run.finished:
      cells += [f"{run.results['test_loss']:.4f}", f"{run.results['test_accuracy']:.4f}"]
    else:
      cells += [NONE, f"unfinished: best val_accuracy {_fmt(run.best_val_accuracy, '.4f')}"]
    wall = run.wall_time_s
    # Beside the test accuracy, the validation accuracy of the same weights (the best epoch's):
    # a gap between the two says the split or the early-stopping choice is off.
    cells += [_fmt(run.best_epoch_val_accuracy, ".4f"), _fmt(run.best_epoch, "d"),
              str(run.epochs_run),
              NONE if wall is None else f"{wall / 60:.1f}"]
    rows.append(cells)
  best = report_runs.best_run(runs)
  best_rows = [i for i, r in enumerate(runs) if best is not None and r.finished
               and r.results["test_accuracy"] == best.results["test_accuracy"]]
  return header, rows, best_rows


@dataclasses.dataclass
class Section:
  title: str
  caption: str
  plots: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)  # sentences without a plot


def build_sections(runs, flags, confusion_run=None):
  """The report's plot sections, in order (the runs table comes first, separately)."""
  used = set()

  def filename(stem):
    name, i = f"{stem}.png", 2
    while name in used:
      name, i = f"{stem}_{i}.png", i + 1
    used.add(name)
    return name

  curves = Section(
      "Learning curves",
      "Per run: loss (left) and accuracy (right) of the training and validation splits "
      "after each epoch; the dashed line marks the best epoch (lowest validation loss).")
  for run in runs:
    if run.history:
      curves.plots.append(figures.Plot(filename(f"curves_{figures.safe_name(run.name)}"),
                               figures.png(figures.learning_curves_figure(run)),
                               f"learning curves of {run.name}"))
    else:
      curves.notes.append(f"{run.name}: no epochs recorded (history.csv absent or empty): no "
                          "curves.")
  with_history = [r for r in runs if r.history]
  if len(with_history) > 1:
    curves.notes.append("The last figure overlays the validation accuracy of every run: a dot "
                        "per epoch, a star at each run's best epoch (lowest validation loss: "
                        "the weights tested).")
    curves.plots.append(figures.Plot(filename("val_accuracy_all"),
                             figures.png(figures.val_accuracy_figure(with_history)),
                             "val_accuracy of every run"))
  sections = [curves]

  sweep = Section("Swept flags", "")
  finished_with_flags = [r for r in runs if r.finished and r.flags is not None]
  if not flags:
    sweep.caption = "No flag differs between the runs (--model_dir aside)."
  elif not finished_with_flags:
    sweep.caption = "No finished run with a flags.txt: nothing to plot against the flags."
  else:
    left_out = len(runs) - len(finished_with_flags)
    sweep.caption = (
        "For each flag whose value differs between the runs: test accuracy (left) and test "
        "loss (right) of each finished run (dots) against the flag's value; the line or bar "
        "is the mean of the runs with that value. Learning rates, and numeric values spanning "
        "a decade or more, are on a log axis." +
        (f" {left_out} unfinished run(s) or run(s) without flags.txt are left out."
         if left_out else ""))
    for flag in flags:
      fig, kind = figures.flag_figure(flag, runs)
      sweep.plots.append(figures.Plot(filename(f"flag_{figures.safe_name(flag)}"), figures.png(fig),
                              f"test accuracy and loss vs --{flag} ({kind})"))
  sections.append(sweep)

  best = report_runs.best_run(runs) if confusion_run is None else confusion_run
  which = "the best run" if confusion_run is None else "the chosen run"
  confusion = Section("Confusion matrix", "")
  if best is None:
    confusion.caption = "No finished run: no confusion matrix."
  elif best.confusion is None:
    confusion.caption = (f"{which.capitalize()}, {best.name} (test accuracy "
                         f"{best.results['test_accuracy']:.4f}), has no confusion_matrix.csv.")
  else:
    names = best.confusion[0]
    confusion.caption = (
        f"Test split of {which}, {best.name} (test accuracy "
        f"{best.results['test_accuracy']:.4f}): rows are the true class, columns the "
        "predicted class; the colour is the fraction of the row's examples"
        + (", the number the count." if len(names) <= figures.MAX_CELL_TEXT_CLASSES else ".")
        + f" Classes: {', '.join(names[:100])}{', ...' if len(names) > 100 else ''}.")
    confusion.plots.append(figures.Plot(filename("confusion_matrix"),
                                figures.png(figures.confusion_matrix_figure(best)),
                                f"confusion matrix of {best.name}"))
  sections.append(confusion)
  return sections


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr.best { background: #eef6ee; } tr.unfinished { color: #777; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption, p.caption { color: #555; font-size: 0.9em; }
"""


def render_html(title, runs, flags, sections, generated):
  e = html.escape
  header, rows, best_rows = table(runs, flags)
  out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
         f"<h1>{e(title)}</h1>", f"<p>{e(generated)}</p>", "<h2>Runs</h2>",
         f'<p class="caption">{e(_table_caption(runs, flags))}</p>', "<table>", "<thead><tr>"]
  out += [f"<th>{e(h)}</th>" for h in header]
  out += ["</tr></thead>", "<tbody>"]
  accuracy_column = header.index("test accuracy")
  for i, (run, cells) in enumerate(zip(runs, rows)):
    css = "best" if i in best_rows else ("unfinished" if not run.finished else "")
    tds = []
    for j, cell in enumerate(cells):
      text = e(cell)
      if j == accuracy_column and i in best_rows:
        text = f"<strong>{text}</strong>"
      tds.append(f"<td>{text}</td>")
    row_open = f'<tr class="{css}">' if css else "<tr>"
    out.append(row_open + "".join(tds) + "</tr>")
  out += ["</tbody>", "</table>"]
  for section in sections:
    out.append(f"<h2>{e(section.title)}</h2>")
    out.append(f'<p class="caption">{e(section.caption)}</p>')
    out += [f"<p>{e(note)}</p>" for note in section.notes]
    for plot in section.plots:
      data = base64.b64encode(plot.png).decode("ascii")
      out += ["<figure>", f'<img src="data:image/png;base64,{data}" alt="{e(plot.alt)}">',
              f"<figcaption>{e(plot.alt)} ({e(plot.filename)})</figcaption>", "</figure>"]
  out += ["</body>", "</html>"]
  return "\n".join(out) + "\n"


def _md_cell(text):
  return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(title, runs, flags, sections, generated):
  header, rows, best_rows = table(runs, flags)
  accuracy_column = header.index("test accuracy")
  out = [f"# {title}", "", generated, "", "## Runs", "", _table_caption(runs, flags), "",
         "| " + " | ".join(_md_cell(h) for h in header) + " |",
         "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|"]
  for i, cells in enumerate(rows):
    cells = [_md_cell(c) for c in cells]
    if i in best_rows:
      cells[accuracy_column] = f"**{cells[accuracy_column]}**"
    out.append("| " + " | ".join(cells) + " |")
  for section in sections:
    out += ["", f"## {section.title}", "", section.caption]
    for note in section.notes:
      out += ["", note]
    for plot in section.plots:
      alt = plot.alt.replace("[", "(").replace("]", ")")
      out += ["", f"![{alt}]({plot.filename})"]
  return "\n".join(out) + "\n"


def _table_caption(runs, flags):
  unfinished = [r.name for r in runs if not r.finished]
  text = (f"{len(runs)} run(s). Columns: the model, "
          + (f"the flags that differ between the runs ({', '.join(flags)}), " if flags else "")
          + "test loss and accuracy with the best epoch's weights (the best accuracy in bold), "
          "the validation accuracy at the best epoch (so far, if unfinished), the best epoch, "
          "epochs run and wall time.")
  if unfinished:
    text += (f" Unfinished (no results.json), shown with their best val_accuracy so far: "
             f"{', '.join(unfinished)}.")
  return text


def write_report(paths, out_dir, title="Training report", confusion_run=None):
  """Reads the runs under `paths`, writes the report into out_dir; returns the paths written."""
  runs = report_runs.load_runs(paths)
  if not runs:
    raise cli.ToolError(f"no runs found in {', '.join(paths)}")
  flags = report_runs.swept_flags(runs)
  table_flags = [f for f in flags if f != "model"]  # the model has its own column
  chosen = None
  if confusion_run:
    chosen = next((r for r in runs if r.name == confusion_run), None)
    if chosen is None or not chosen.finished:
      raise cli.ToolError(f"--confusion_run={confusion_run}: no finished run of that name; the "
                        f"runs are {', '.join(r.name for r in runs)}")
  sections = build_sections(runs, flags, chosen)
  generated = (f"Generated by tools.report on {datetime.datetime.now():%Y-%m-%d %H:%M} from "
               f"{len(runs)} run(s) in {', '.join(paths)}.")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for section in sections:
    for plot in section.plots:
      path = os.path.join(out_dir, plot.filename)
      with open(path, "wb") as f:
        f.write(plot.png)
      written.append(path)
  for filename, render in (("report.md", render_markdown), ("report.html", render_html)):
    path = os.path.join(out_dir, filename)
    with open(path, "w", encoding="utf-8") as f:
      f.write(render(title, runs, table_flags, sections, generated))
    written.append(path)
  return written


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("output_dir", None, "Directory to write report.html, report.md and the "
                      "PNGs into.", **fv)
  # --out: the spelling before --output_dir became every tool's.
  flags.DEFINE_alias("out", "output_dir", flag_values=flag_values)
  flags.DEFINE_string("title", "Training report", "The report's heading.", **fv)
  flags.DEFINE_string("confusion_run", "", "The run (by name, as in the table) whose confusion "
                      "matrix is shown; default: the run with the best test accuracy.", **fv)
  flags.mark_flag_as_required("output_dir", flag_values=flag_values)


def main(argv, flag_values):
  """argv[1:]: the RUN_DIRs."""
  if len(argv) < 2:
    raise cli.ToolError("no RUN_DIR given: python -m tools.report RUN_DIR... --output_dir=DIR")
  try:
    written = write_report(argv[1:], flag_values.output_dir, flag_values.title,
                           flag_values.confusion_run or None)
  except (report_runs.ReportError, workdir.RunDirError) as e:
    raise cli.ToolError(str(e)) from None
  for path in written:
    print(path)
  return 0


COMMAND = cli.Command("tools.report", define_flags, main)

if __name__ == "__main__":
  COMMAND.run()
