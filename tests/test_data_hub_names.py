"""``--data hf:NAME`` means the Hub (or its cache) only: a local folder called NAME in the working folder is never
read in its place; and ``trust_remote_code=False`` goes to ``datasets.load_dataset`` where it takes it."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitprune.data.hub import load_kwargs

from .side_by_side import together
from .test_train_utils import digits_folder

ROOT = Path(__file__).resolve().parents[1]
datasets = pytest.importorskip("datasets")


def eval_hf(tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    """``vitprune eval demo --data hf:NAME`` in a folder holding a local folder NAME."""
    digits_folder(tmp_path / name, per_class=2, val_per_class=1)  # an ImageFolder datasets would load as "NAME"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "VITPRUNE_TEST_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vitprune", "eval", "demo", "--data", f"hf:{name}", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def hf_names(tmp_path_factory):
    """The run of each name, each in a folder of its own, side by side (each spends seconds on its imports)."""
    names = ["org/name", "digits"]
    folders = [tmp_path_factory.mktemp("hf-name") for _ in names]
    return dict(zip(names, together(*(lambda f=f, n=n: eval_hf(f, n) for f, n in zip(folders, names)))))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["org/name", "digits"])
def test_hf_name_never_reads_a_local_folder_of_that_name(hf_names, name):
    res = hf_names[name]
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stdout + res.stderr[-2000:]
    assert lines[0] == (f"Error: hf:{name} means the Hub dataset {name}, but '{name}' in the working folder would "
                        f"be read instead; give a local folder by its path (./{name}), or run from another folder.")


def test_trust_remote_code_is_passed_only_where_load_dataset_takes_it():
    def load_dataset_2_16(path, name=None, *, streaming=False, trust_remote_code=None, **config_kwargs):
        """The shape of datasets 2.16-3.x's load_dataset (trust_remote_code by name)."""

    assert load_kwargs(load_dataset_2_16) == {"trust_remote_code": False}
    takes = "trust_remote_code" in inspect.signature(datasets.load_dataset).parameters
    assert load_kwargs(datasets.load_dataset) == ({"trust_remote_code": False} if takes else {})
