"""A stray label in webdataset shards without classes.txt (``cls`` 99 among the digits 0..9) is refused in one line
naming the shard, the sample and the label, instead of silently making a 100-class head; a declared class list
still accepts it when it names 100 classes."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitprune.cli.main import app
from vitprune.data import load_data
from vitprune.errors import DataError

from .test_data_streams import write_shards
from .test_train_utils import digit_images

pytest.importorskip("webdataset")
runner = CliRunner()


def shards_with_a_stray_label(root: Path) -> Path:
    """20 train digits (labels 0..9) in shards of 7, the 12th relabelled 99; 10 val digits."""
    items = [(img, 99 if n == 11 else label) for n, (img, label) in enumerate(digit_images("train", 2))]
    write_shards(root / "train", items, 7)
    write_shards(root / "val", digit_images("val", 1), 7)
    return root


def test_a_stray_label_without_a_class_list_is_refused(tmp_path):
    data = shards_with_a_stray_label(tmp_path / "shards")
    # the 12th sample is sample 4 of the second shard (7 per shard)
    with pytest.raises(DataError) as e:
        load_data(str(data))
    assert str(e.value) == (
        f"label 99 in {data / 'train' / 'shard-0001.tar'} sample 4 is outside the classes 0..9 the other labels of "
        f"{data} form (no sample has 10); declare the classes in classes.txt (one name per line, line i is class "
        "i) or classes.json beside the train shards, or fix the label.")


@pytest.mark.slow
def test_a_stray_label_is_one_line_on_the_command_line(tmp_path):
    data = shards_with_a_stray_label(tmp_path / "shards")
    res = runner.invoke(app, ["eval", "demo", "--data", str(data)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: label 99 in "), res.output


def test_a_class_list_declares_the_classes(tmp_path):
    data = shards_with_a_stray_label(tmp_path / "shards")
    (data / "classes.txt").write_text("".join(f"c{i}\n" for i in range(100)))
    assert len(load_data(str(data)).classes) == 100
    (data / "classes.txt").write_text("".join(f"c{i}\n" for i in range(10)))
    with pytest.raises(DataError, match="label 99 in the shards of .* is outside the 10 classes of classes.txt"):
        load_data(str(data))
