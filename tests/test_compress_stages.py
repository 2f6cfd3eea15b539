"""`compress` is a job in stages (vitprune.compression.CompressJob): each stage runs on its own inside
``with CompressJob(config) as job:`` on real data and the bundled demo teacher, and does what it says."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitprune
from tests.test_train_utils import digit_images, digits_folder, write_folder
from vitprune.compression import CompressConfig, CompressJob, Trained
from vitprune.errors import DataError, MethodOptionError
from vitprune.hub.lock import read_owner
from vitprune.train.recipe import DEMO_EPOCHS, TEACHER_RECIPE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Default output folders (vitprune-out/...) are probed and made under the test's own folder."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
def test_resolve_alone_names_the_default_output_and_keeps_a_compressed_models_method(tmp_path):
    with CompressJob(CompressConfig(method="evit", method_options={"keep_rate": 0.6})) as job:
        target = job.resolve()
    assert job.out == Path("vitprune-out/demo-evit-keep0.6") and target.existing is None
    assert target.probe.options.keep_rate == 0.6 and target.dense is target.loaded
    saved = vitprune.save(vitprune.apply_method(vitprune.load_model("demo"), "tome", r=4), tmp_path / "tome")
    with CompressJob(CompressConfig(model=str(saved))) as job:
        target = job.resolve()
    assert target.method == "tome" and target.existing.options.r == 4
    assert getattr(target.dense, "vitprune_method", None) is None  # its dense backbone beside it
    with CompressJob(CompressConfig(model=str(saved), method="evit")) as job:
        with pytest.raises(MethodOptionError, match="already compressed with tome"):
            job.resolve()


def test_prepare_data_alone_refuses_one_class_before_any_model_is_loaded(tmp_path):
    one = write_folder(tmp_path / "one", digit_images("train", 12, classes=(7,)))
    with CompressJob(CompressConfig(model="no-such-model", data=str(one), val_split=0.25)) as job:
        with pytest.raises(DataError, match=r"has one class \(7\)"):
            job.prepare_data()


def test_heads_and_recipes_alone_plan_a_teacher_stage_for_a_new_head(tmp_path):
    data = digits_folder(tmp_path / "three", per_class=8, val_per_class=2, classes=(0, 1, 2))
    with CompressJob(CompressConfig(method="evit", data=str(data), batch_size=8)) as job:
        target = job.resolve()
        splits = job.prepare_data()
        heads = job.plan_heads(target, splits)
        recipes = job.make_recipes(target, splits, heads)
    # the demo head's label names are the digits: 0, 1, 2 map onto outputs 0, 1, 2 by name, no teacher stage
    assert not heads.fine_tune_teacher and heads.target_map == [0, 1, 2] and heads.teacher.num_classes == 10
    assert recipes.teacher is None and recipes.sources["lr"] == "method" and recipes.sources["epochs"] == "trainer"
    with CompressJob(CompressConfig(method="evit", data=str(data), batch_size=8, new_head=True)) as job:
        target = job.resolve()
        splits = job.prepare_data()
        heads = job.plan_heads(target, splits)
        recipes = job.make_recipes(target, splits, heads)
    assert heads.fine_tune_teacher and heads.student_base is None and heads.teacher.num_classes == 3
    assert any("head replaced (--new-head)" in n for n in heads.notes)
    assert recipes.teacher.kd_weight == TEACHER_RECIPE["kd_weight"] == 0.0
    assert recipes.teacher.epochs == recipes.student.epochs  # teacher_epochs not given: as many as distillation


def test_recipes_alone_apply_the_demo_preset_and_refuse_too_large_a_batch(tmp_path):
    with CompressJob(CompressConfig(method="evit")) as job:
        target = job.resolve()
        splits = job.prepare_data()
        heads = job.plan_heads(target, splits)
        recipes = job.make_recipes(target, splits, heads)
    assert recipes.student.epochs == DEMO_EPOCHS and recipes.sources["epochs"] == "demo"
    # the demo has 1438 training images: a global batch of 2048 leaves no optimizer step
    with CompressJob(CompressConfig(method="evit", batch_size=2048)) as job:
        target, splits = job.resolve(), job.prepare_data()
        with pytest.raises(DataError, match="fewer than one optimizer step needs.*lower `batch_size`"):
            job.make_recipes(target, splits, job.plan_heads(target, splits))


@pytest.mark.slow
def test_claim_output_holds_the_folder_until_the_job_ends(tmp_path):
    out = tmp_path / "out"
    probe = [sys.executable, "-c", "import sys; from vitprune.hub.lock import output_lock\n"
             "try:\n    output_lock(sys.argv[1], 'probe').__enter__()\nexcept Exception as e:\n"
             "    print(type(e).__name__); sys.exit(3)", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with CompressJob(CompressConfig(method="evit", output=str(out))) as job:
        target = job.resolve()
        splits = job.prepare_data()
        job.claim_output(job.make_recipes(target, splits, job.plan_heads(target, splits)))
        assert read_owner(out)["pid"] == os.getpid() and read_owner(out)["purpose"] == "compress"
        held = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
        assert held.returncode == 3 and held.stdout.strip() == "FolderInUseError", held.stderr
    assert read_owner(out) is None  # let go with the job
    assert subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120).returncode == 0


@pytest.mark.slow
def test_evaluate_and_measure_alone_are_eval_and_profile(tmp_path):
    teacher = vitprune.load_model("demo")
    student = vitprune.apply_method(vitprune.load_model("demo"), "evit", keep_rate=0.5)
    with CompressJob(CompressConfig(method="evit", speed=False, device="cpu")) as job:
        splits = job.prepare_data()
        dense, compressed = job.evaluate(Trained(student, teacher, None, {}), splits, None)
        prof = job.measure(student)
    assert dense.top1 == pytest.approx(vitprune.evaluate(teacher, "demo").top1)
    assert compressed.images == dense.images == len(splits.val[1])
    direct = vitprune.profile(student, speed=False, device="cpu")
    assert prof.compressed.gmacs == direct.compressed.gmacs < prof.dense.gmacs == direct.dense.gmacs


def test_make_student_alone_seeds_the_methods_new_modules():
    """The student's new modules come from ``seed`` (DynamicViT's predictors): two jobs, one seed, one student."""
    students = []
    for _ in range(2):
        torch.manual_seed(123)  # whatever ran before
        with CompressJob(CompressConfig(method="dynamicvit", seed=5)) as job:
            target = job.resolve()
            heads = job.plan_heads(target, job.prepare_data())
            students.append(job.make_student(target, heads, heads.teacher))
        torch.rand(7)
    a, b = (s.state_dict() for s in students)
    assert all(torch.equal(a[k], b[k]) for k in a) and any(k.startswith("score_predictor") for k in a)
