"""Planning each source on tiny real inputs, and refusing unreadable ones with a clear error."""

import os
import pickle
import shutil
import tracemalloc

import numpy as np
import pytest

from pipeline import archives
from pipeline import sources
from tests import testdata
from tests.pipeline import cifar_archive

needs_meta = pytest.mark.skipif(not testdata.CIFAR100_META.exists(),
                                reason="../shared/data/cifar100-meta/meta not present")


@needs_meta
def test_cifar100_archive_reads_real_meta_and_exact_pixels(tmp_path):
  path, train, fine, _ = cifar_archive.build(str(tmp_path / "c.tar.gz"))
  plan = archives.plan_cifar100(path, md5=archives.file_md5(path))
  assert len(plan.class_names) == 100 and len(plan.coarse_class_names) == 20
  assert plan.class_names[:3] == ["apple", "aquarium_fish", "baby"]
  assert plan.has_test and [r[1]["split"] for r in plan.reads] == ["train", "test"]
  got = list(archives.run_read(plan.reads[0]))
  assert [e["label"] for e in got] == fine
  assert [e["coarse_label"] for e in got] == [f // 5 for f in fine]
  np.testing.assert_array_equal(np.stack([e["pixels"] for e in got]), train)
  assert len({e["key"] for e in got}) == len(got)


@needs_meta
def test_cifar100_wrong_md5_truncated_archive_and_unsafe_pickle_are_refused(tmp_path):
  path, *_ = cifar_archive.build(str(tmp_path / "c.tar.gz"))
  with pytest.raises(sources.SourceError, match="md5 is .* expected 0123"):
    archives.plan_cifar100(path, md5="0123")
  truncated = str(tmp_path / "t.tar.gz")
  with open(path, "rb") as f, open(truncated, "wb") as g:
    g.write(f.read()[: os.path.getsize(path) // 2])
  with pytest.raises(sources.SourceError, match="truncated"):
    archives.plan_cifar100(truncated, md5="")

  class Exploit:
    def __reduce__(self):
      return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

  evil = cifar_archive.write_archive(str(tmp_path / "e.tar.gz"), {
      "meta": testdata.CIFAR100_META.read_bytes(),
      "train": pickle.dumps({b"data": Exploit()}, protocol=2), "test": b""})
  plan = archives.plan_cifar100(evil, md5="")
  with pytest.raises(sources.SourceError, match="refusing to load .*system.*plain data only"):
    list(archives.run_read(plan.reads[0]))
  assert not (tmp_path / "pwned").exists()


def test_cifar100_missing_archive_names_it(tmp_path):
  with pytest.raises(sources.SourceError, match="no such file"):
    archives.plan_cifar100(str(tmp_path / "absent.tar.gz"))


def test_image_dir_with_and_without_split_folders(tmp_path):
  plan = sources.plan_image_dir(str(testdata.SAMPLE_DIR))
  assert plan.class_names[:2] == ["airplane", "automobile"] and len(plan.class_names) == 10
  assert plan.has_test and plan.split_sizes == {"train": 400, "test": 100}
  flat = tmp_path / "flat"
  for path, name in testdata.sample_files("train", ["cat", "dog"], 3):
    os.makedirs(flat / name, exist_ok=True)
    shutil.copy(path, flat / name / path.name)
  (flat / "stray.jpg").write_bytes(b"x")
  (flat / "cat" / ".DS_Store").write_bytes(b"x")
  plan = sources.plan_image_dir(str(flat))
  assert plan.class_names == ["cat", "dog"] and not plan.has_test
  assert len(plan.elements) == 6 and plan.skipped == {"hidden_file": 1}
  assert [r[1] for r in plan.rejected] == ["not_in_class_folder"]


def test_path_list_rows(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"")
  csv_path = tmp_path / "list.csv"
  csv_path.write_text("path,label,split\n"
                      "a.jpg,cat,train\n"
                      "/abs/b.jpg,dog,test\n"
                      "a.jpg,cat,train\n"          # duplicate path
                      "c.jpg,,train\n"             # empty label
                      "d.jpg,cat,holdout\n"        # bad split
                      "e.jpg,cat,train,extra\n"    # too many columns
                      "gs://bucket/f.jpg,dog\n")   # too few columns
  plan = sources.plan_path_list(str(csv_path))
  assert plan.class_names == ["cat", "dog"]
  assert [(e["path"], e["label"], e["split"]) for e in plan.elements] == [
      (f"{tmp_path}/a.jpg", 0, "train"), ("/abs/b.jpg", 1, "test")]
  assert sorted(r[1] for r in plan.rejected) == ["duplicate_path"] + ["malformed_row"] * 4
  names = tmp_path / "classes.txt"
  names.write_text("dog\ncat\n")
  csv_path.write_text("path,label\nx.jpg,cat\ny.jpg,1\nz.jpg,bird\nw.jpg,7\n")
  plan = sources.plan_path_list(str(csv_path), class_names_file=str(names))
  assert [e["label"] for e in plan.elements] == [1, 1]
  # A name the list lacks is unknown; an integer past its end is out of range.
  assert [r[1] for r in plan.rejected] == ["unknown_label", "label_out_of_range"]
  csv_path.write_text("file,label\nx.jpg,cat\n")
  with pytest.raises(sources.SourceError, match=r"lacks column\(s\) \['path'\]"):
    sources.plan_path_list(str(csv_path))


def _planning_peak(plan_fn):
  """Peak bytes Python allocates while plan_fn() runs (tracemalloc), and its plan."""
  tracemalloc.start()
  try:
    tracemalloc.reset_peak()
    plan = plan_fn()
    return tracemalloc.get_traced_memory()[1], plan
  finally:
    tracemalloc.stop()


def test_planning_memory_does_not_grow_with_the_number_of_paths(tmp_path):
  # The planners spill their rows to disk: 20x the paths may cost a few hundred KB more (one
  # folder's listing, 8 bytes a path list row), not the ~1 KB a path that rows held in memory
  # cost (40 MB here).
  def path_list(n):
    csv_path = tmp_path / f"list{n}.csv"
    with open(csv_path, "w") as f:
      f.write("path,label,split\n")
      for i in range(n):
        f.write(f"images/class{i % 10}/{i:06d}.jpg,class{i % 10},{'test' if i % 7 else 'train'}\n")
      f.write("images/class0/000000.jpg,class0,train\n")  # one repeated path
    return lambda: sources.plan_path_list(str(csv_path))

  small_peak, small = _planning_peak(path_list(2_000))
  large_peak, large = _planning_peak(path_list(40_000))
  assert len(small.elements) == 2_000 and len(large.elements) == 40_000
  assert [r[1] for r in large.rejected] == ["duplicate_path"]
  assert large.split_sizes == {"train": 5715, "test": 34285}
  assert large_peak - small_peak < 2_000_000, (small_peak, large_peak)

  def image_dir(n):
    root = tmp_path / f"tree{n}"
    for i in range(n):
      folder = root / f"class{i % 10}"
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f"{i:06d}.jpg").touch()
    return lambda: sources.plan_image_dir(str(root))

  small_peak, small = _planning_peak(image_dir(2_000))
  large_peak, large = _planning_peak(image_dir(20_000))
  assert len(large.elements) == 20_000 and large.class_names == [f"class{i}" for i in range(10)]
  assert large_peak - small_peak < 2_000_000, (small_peak, large_peak)


def test_a_spilled_plan_reads_back_the_elements_the_rows_made(tmp_path):
  csv_path = tmp_path / "list.csv"
  csv_path.write_text("path,label\n"
                      "x/1.jpg,3\n./x/2.jpg,0\nx/../x/1.jpg,1\n"  # the third repeats the first
                      "gs://b/3.jpg,2\nx/4.jpg,01\n")
  plan = sources.plan_path_list(str(csv_path))
  assert plan.class_names == ["0", "1", "2", "3"]
  assert list(plan.elements) == [
      {"key": "x/1.jpg", "split": "train", "label": 3, "coarse_label": -1,
       "path": f"{tmp_path}/x/1.jpg"},
      {"key": "./x/2.jpg", "split": "train", "label": 0, "coarse_label": -1,
       "path": f"{tmp_path}/x/2.jpg"},
      {"key": "gs://b/3.jpg", "split": "train", "label": 2, "coarse_label": -1,
       "path": "gs://b/3.jpg"},
      {"key": "x/4.jpg", "split": "train", "label": 1, "coarse_label": -1,
       "path": f"{tmp_path}/x/4.jpg"}]
  assert plan.rejected == [(f"{tmp_path}/x/1.jpg", "duplicate_path", "line 4 repeats line 2")]
