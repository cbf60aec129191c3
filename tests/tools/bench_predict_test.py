"""tools/bench_predict.py end to end at tiny scale: an untrained model exported as the
trainer exports, real sample JPEGs; every method classifies every image in every repeat."""

import json

from tests import testdata
from tools import bench_predict


def test_each_method_is_timed_on_every_image_in_every_repeat(tmp_path, capsys):
  for path, name in testdata.sample_files("test", per_class=1):
    (tmp_path / f"{name}.jpg").write_bytes(path.read_bytes())  # 10 JPEGs, one per class
  bench_predict.COMMAND.call(["--images", str(tmp_path), "--copies", "2", "--repeats", "2",
                              "--batch_size", "8", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert result["settings"]["images"] == 20 and result["settings"]["image_size"] == [32, 32]
  assert {m: len(v) for m, v in result["runs"].items()} == {m: 2 for m in bench_predict.METHODS}
  assert all(v > 0 for values in result["runs"].values() for v in values)
  assert "predict / model.predict" in bench_predict.format_table(result)
