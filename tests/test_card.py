"""The generated model card: Hub metadata (through huggingface_hub's ModelCard), metrics table, reproduce command,
loading snippet, for a compressed folder, a dense folder and a folder without report.json."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import pytest
from huggingface_hub import ModelCard

import vitprune
from vitprune.report.card import hub_base_model, render_card, reproduce_command

#: what a run recorded besides the costs counted below (accuracy and timings of the run being described)
RUN = {"dense_top1": 98.3287, "top1": 96.1003, "dense_top5": 100.0, "top5": 99.7214, "dense_throughput": 4012.5,
       "throughput": 5230.25, "dense_latency_ms": 1.84, "latency_ms": 1.52}


def make_saved_folder(folder: Path, *, base_model: str = "deit_small_patch16_224", with_report: bool = True,
                      user_recipe: Optional[dict[str, Any]] = None) -> Path:
    """A real EViT-patched demo model saved with vitprune.save, its config.json section and a report.json in the
    layout `vitprune compress` writes; GMACs, parameters and token counts are counted on the model."""
    from vitprune.api import profile

    model = vitprune.apply_method(vitprune.load_model("demo"), "evit", keep_rate=0.7)
    prof = profile(model, speed=False, latency=False)
    recipe = {"epochs": 2, "lr": 8e-05, "lr_batch_ref": 64, "warmup_epochs": 0, "weight_decay": 1e-06,
              "kd_weight": 0.5, "label_smoothing": 0.1, "frozen": [], "train_mode_eval": True,
              "augment": {"scale": [0.8, 1.0], "ratio": [0.9, 1.1], "hflip": 0.0, "color_jitter": 0.0,
                          "auto_augment": None, "re_prob": 0.0},
              "batch_size": 32, "accum_steps": 1, "world_size": 1, "global_batch": 32, "seed": 3,
              "precision": "fp32"}
    sources = {k: "trainer" for k in recipe}
    sources.update({"epochs": "user", "lr": "demo", "augment": "data"})
    for k, v in (user_recipe or {}).items():
        recipe[k], sources[k] = v, "user"
    measure = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "fp16", "batch_size": 256,
               "latency_batch_size": 1, "input_size": list(prof.input_size)}

    def side(st, top1, top5, thr, lat):
        return {"top1": top1, "top5": top5, "loss": 0.2, "images": 359, "params": st.params, "gmacs": st.gmacs,
                "throughput": thr, "latency_ms": lat, "tokens": st.tokens, "method": st.method,
                "options": st.options, "macs_source": st.macs_source}

    report = {
        "model": base_model, "teacher": f"{base_model} (dense)", "method": "evit",
        "options": model.vitprune_method.options_dict(),
        "data": {"data": "demo", "kind": "demo", "classes": 10, "train_images": 1438, "val_images": 359,
                 "val_split": None, "notes": ["bundled scikit-learn digits"]},
        "dense": side(prof.dense, RUN["dense_top1"], RUN["dense_top5"], RUN["dense_throughput"],
                      RUN["dense_latency_ms"]),
        "compressed": side(prof.compressed, RUN["top1"], RUN["top5"], RUN["throughput"], RUN["latency_ms"]),
        "measure": measure,
        "train": {"epochs": 2, "steps": 90, "global_batch": 32, "processes": 1, "device": "cuda", "seconds": 41.0},
        "recipe": recipe, "recipe_sources": sources, "versions": prof.versions,
    }
    metrics = {"dataset": "demo", "split": "val", "images": 359, "top1": RUN["top1"], "dense_top1": RUN["dense_top1"],
               "gmacs": prof.compressed.gmacs, "dense_gmacs": prof.dense.gmacs, "params": prof.compressed.params,
               "throughput": RUN["throughput"], "dense_throughput": RUN["dense_throughput"]}
    extra = {"report.json": json.dumps(report, indent=2) + "\n"} if with_report else None
    vitprune.save(model, folder, base_model=base_model, recipe=recipe, metrics=metrics, extra_files=extra)
    return folder


@pytest.fixture(scope="module")
def compressed_folder(tmp_path_factory) -> Path:
    return make_saved_folder(tmp_path_factory.mktemp("card") / "evit-demo")


def metadata(card: str) -> dict[str, Any]:
    return ModelCard(card).data.to_dict()


def test_compressed_card_metadata(compressed_folder):
    card = render_card(compressed_folder, repo_id="alice/deit-s-evit")
    meta = metadata(card)
    assert meta["tags"] == ["vitprune", "image-classification", "token-pruning", "evit"]
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == "timm/deit_small_patch16_224.fb_in1k"  # the timm name resolved to its Hub repo
    assert "library_name" not in meta  # a patched model: plain timm cannot load it
    assert meta["license"] == "bsd-3-clause"  # from the saved pretrained_cfg
    assert card.startswith("---\n")


def test_compressed_card_metrics_table(compressed_folder):
    card = render_card(compressed_folder)
    report = json.loads((compressed_folder / "report.json").read_text())
    d, c = report["dense"], report["compressed"]
    lines = card.splitlines()

    def row(label: str) -> list[str]:
        found = [ln for ln in lines if ln.startswith(f"| {label} |")]
        assert len(found) == 1, (label, found)
        return [cell.strip() for cell in found[0].strip("|").split("|")]

    assert row("top-1 (%)") == ["top-1 (%)", "98.33", "96.10", "-2.23 pt"]
    assert row("top-5 (%)")[1:3] == ["100.00", "99.72"]
    gm = row("GMACs (papers' GFLOPs)")
    assert gm[1:3] == [f"{d['gmacs']:,.3f}", f"{c['gmacs']:,.3f}"]
    assert gm[3] == f"{c['gmacs'] / d['gmacs']:.2f}×" and c["gmacs"] < d["gmacs"]
    assert row("params (M)")[1:3] == [f"{d['params'] / 1e6:.2f}"] * 2
    assert row("throughput (img/s, batch 256)") == ["throughput (img/s, batch 256)", "4,012.5", "5,230.2",
                                                    "1.30× faster"]
    assert row("latency (ms, batch 1, median)")[1:] == ["1.84", "1.52", "1.21× faster"]
    assert "tokens entering blocks" in card and "65×6" in card
    assert "NVIDIA H100 80GB HBM3, fp16; throughput at batch 256, latency at batch 1" in card
    assert "accuracy on demo val (359 images)" in card


def test_compressed_card_reproduce_and_load(compressed_folder):
    card = render_card(compressed_folder, repo_id="alice/deit-s-evit")
    assert ("```bash\nvitprune compress deit_small_patch16_224 --method evit --keep-rate 0.7 --data demo "
            "--epochs 2 --batch-size 32 --seed 3 --precision fp32\n```") in card
    assert 'model = vitprune.load("hf-hub:alice/deit-s-evit")' in card
    assert "vitprune profile hf-hub:alice/deit-s-evit" in card
    assert "## Method and options" in card and "| `keep_rate` | `0.7` |" in card
    assert "`demo`: 10 classes, 1,438 training images, 359 validation images." in card
    assert "plain `timm.create_model` cannot rebuild it" in card
    # without a repo the snippet says how to load the folder and what to do after a push
    local = render_card(compressed_folder)
    assert 'vitprune.load("path/to/this/folder")' in local and 'vitprune.load("hf-hub:user/name")' in local


def test_reproduce_command_carries_user_flags(tmp_path):
    folder = make_saved_folder(tmp_path / "m", user_recipe={"lr": 0.001, "frozen": ["cls_token", "pos_embed"],
                                                            "kd_weight": 1.0})
    cmd = reproduce_command(*_section_and_report(folder))
    assert cmd == ("vitprune compress deit_small_patch16_224 --method evit --keep-rate 0.7 --data demo --epochs 2 "
                   "--batch-size 32 --seed 3 --precision fp32 --lr 0.001 --kd-weight 1.0 --frozen cls_token,pos_embed")
    # the command as typed adds the flags the resolved command lacks (short forms read as their long names)
    section, report = _section_and_report(folder)
    report = {**report, "command": "vitprune compress -q deit_small_patch16_224 -m evit --epochs 2 --teacher "
                                   "other/teacher --profile-batch-size 8 --no-speed"}
    assert reproduce_command(section, report) == cmd + " --teacher other/teacher --profile-batch-size 8 --no-speed"
    # settings not recorded: the typed command alone
    assert reproduce_command({}, {"command": "vitprune compress"}) == "vitprune compress"


def test_reproduce_command_has_a_flag_for_every_recipe_key_the_user_set(tmp_path):
    """The recipe flags come from ``Recipe`` (its keys' types), so no key a user can set is left out of the
    command (``--optimizer`` and ``--layer-decay`` once were); booleans as their on/off switch, an empty list as
    ``none``."""
    folder = make_saved_folder(tmp_path / "m", user_recipe={
        "optimizer": "lamb", "layer_decay": 0.75, "train_mode_eval": False, "frozen": []})
    cmd = reproduce_command(*_section_and_report(folder))
    assert cmd.endswith("--optimizer lamb --layer-decay 0.75 --frozen none --no-train-mode-eval"), cmd


def _section_and_report(folder: Path):
    cfg = json.loads((folder / "config.json").read_text())
    return cfg["vitprune"], json.loads((folder / "report.json").read_text())


def test_dense_folder_gets_library_name_timm():
    card = render_card(vitprune.hub.demo_dir())
    meta = metadata(card)
    assert meta["library_name"] == "timm"  # plain timm loads a dense folder
    assert meta["tags"] == ["vitprune", "image-classification", "token-pruning"]
    assert "base_model" not in meta  # trained from scratch: no Hub base model
    assert "| val_top1 | 97.79 |" in card  # the teacher's recorded metric (its config.json)
    assert 'timm.create_model("local-dir:path/to/this/folder", pretrained=True)' in card


def test_card_from_config_metrics_only(tmp_path):
    folder = make_saved_folder(tmp_path / "noreport", with_report=False, base_model="hf-hub:bob/vit-s@v2")
    card = render_card(folder)
    meta = metadata(card)
    assert meta["base_model"] == "bob/vit-s"
    assert "| top-1 (%) | 98.33 | 96.10 | -2.23 pt |" in card
    assert "| throughput (img/s) | 4,012.5 | 5,230.2 | 1.30× faster |" in card
    assert "device, dtype and batch size are not recorded" in card
    assert "vitprune compress hf-hub:bob/vit-s@v2 --method evit --keep-rate 0.7 --data demo --epochs 2" in card


def test_card_from_section_and_report_dicts(compressed_folder):
    """The trainer can render the card before the folder exists (save(card=...))."""
    section, report = _section_and_report(compressed_folder)
    config = json.loads((compressed_folder / "config.json").read_text())
    assert render_card(section=section, report=report, config=config) == render_card(compressed_folder)
    untouched = copy.deepcopy(section)
    render_card(section=section, report=report)
    assert section == untouched


@pytest.mark.parametrize("spec, repo", [
    ("deit_small_patch16_224", "timm/deit_small_patch16_224.fb_in1k"),
    ("vit_small_patch16_224.augreg_in21k_ft_in1k", "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"),
    ("hf-hub:org/model@main", "org/model"),
    ("demo", None),
    ("/some/local/folder", None),
    ("not_a_model_name", None),
    ("vit_tiny_patch16_224 (local weights)", None),  # an architecture, not the weights of timm's Hub repo
])
def test_hub_base_model(spec, repo):
    assert hub_base_model(spec) == repo


def test_card_of_a_model_from_local_weights_names_its_architecture(tmp_path):
    folder = make_saved_folder(tmp_path / "local", base_model="vit_tiny_patch16_224 (local weights)")
    card = render_card(folder)
    assert "base_model" not in metadata(card)
    assert card.splitlines()[card.splitlines().index("---", 1) + 2].startswith("# vit_tiny_patch16_224 · EViT")


def test_latency_change_says_faster_or_slower():
    """One wording everywhere: the compressed model's speed over the dense one's, 'faster' or '(slower)'."""
    from vitprune.report.card import latency_change

    assert latency_change(4.0, 2.0) == "2.00× faster"
    assert latency_change(3.19, 4.19) == "0.76× (slower)"  # the speed ratio, in the wording every table uses
    assert latency_change(None, 2.0) == latency_change(3.0, 0.0) == ""


def test_reading_notes_explain_more_parameters_and_a_latency_loss_next_to_a_throughput_gain():
    from vitprune.report.card import reading_notes

    # the demo table in README: DynamicViT adds its predictors; 1.51x throughput, 1.28x slower at batch 1
    dense = {"params": 683_000, "throughput": 685.0, "latency_ms": 4.21}
    comp = {"params": 729_000, "throughput": 1034.4, "latency_ms": 5.41}
    notes = reading_notes(dense, comp, 32)
    assert notes[0] == "params: +0.046 M for the method's own modules (their MACs are in the GMACs)."
    assert notes[1].startswith("throughput (batch 32) gains from fewer tokens; at batch 1")
    assert reading_notes({**dense, "latency_ms": 6.0}, {**comp, "params": 683_000}, 32) == []  # faster both ways


# ------------------------------------------------------------------------------------------ a real saved demo model


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """The demo's own command (DynamicViT, keep 0.7, on the bundled teacher and digits), cut to a tenth of an epoch
    and without timing, saved by `vitprune compress` itself, run as a user runs it (so it records its command)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cwd = tmp_path_factory.mktemp("demo-card")
    out = cwd / "dv"
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "vitprune", "compress", "demo", "--method", "dynamicvit",
                          "--keep-rate", "0.7", "--data", "demo", "--epochs", "0.1", "--no-speed", "-o", str(out),
                          "-q"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.mark.slow
def test_demo_card_names_the_blocks_its_model_prunes_before(demo_folder):
    card = (demo_folder / "README.md").read_text()
    # 6 blocks: DynamicViT's 3/6/9 of 12 scaled to floor(i * 6 / 12) = 1, 3, 4 (methods.base.scale_locations);
    # 64 patches + the class token, keeping int(64 * 0.7**s) = 44, 31, 21 patches (DynamicViT.keep_counts)
    assert ("On this 6-block model the token count drops before blocks 1, 3 and 4 (0-based): "
            "65 → 45 → 45 → 32 → 22 → 22 tokens enter the blocks.") in card
    assert "| tokens entering blocks | 65×6 | 65×1 45×2 32×1 22×2 |" in card


@pytest.mark.slow
def test_demo_card_reproduce_is_the_full_resolved_command(demo_folder):
    card = (demo_folder / "README.md").read_text()
    block = card.split("## Reproduce\n\n```bash\n", 1)[1].split("\n```", 1)[0]
    # every setting the run resolved, then the typed flags it lacks; the output folder redacted to its name
    assert block == ("vitprune compress demo --method dynamicvit --keep-rate 0.7 --data demo --epochs 0.1 "
                     "--precision fp32 --no-augment --no-speed --output dv")
    assert str(demo_folder.parent) not in card


@pytest.mark.slow
def test_demo_card_says_where_its_license_comes_from(demo_folder):
    card = (demo_folder / "README.md").read_text()
    assert metadata(card)["license"] == "bsd-3-clause"  # the bundled teacher's pretrained_cfg.license
    assert ("## License\n\n`bsd-3-clause`: the base model's license, as its config records it (timm's "
            "`pretrained_cfg.license` of `demo`, which this model's config keeps).") in card


@pytest.mark.slow
def test_profile_update_card_remeasures_a_saved_folder(demo_folder, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from vitprune.cli.main import app

    folder = tmp_path / "dv"
    shutil.copytree(demo_folder, folder, symlinks=True)
    before = json.loads((folder / "report.json").read_text())
    assert before["dense"]["throughput"] is None  # saved with --no-speed
    res = CliRunner().invoke(app, ["profile", str(folder), "--update-card", "--batch-size", "4", "--repeats", "3"])
    assert res.exit_code == 0, res.output
    after = json.loads((folder / "report.json").read_text())
    speed = after["measure"]["speed"]
    assert after["measure"]["batch_size"] == 4 and speed["throughput_ratio"]["rounds"] == 3
    assert after["speedup"] == speed["throughput_ratio"]["median"]
    assert after["latency_ratio"] == speed["latency_ratio"]["median"]
    for side in ("dense", "compressed"):
        assert after[side]["throughput"] > 0 and after[side]["latency_ms"] > 0 and after[side]["cpu_ms"] > 0
        assert after[side]["top1"] == before[side]["top1"]  # accuracy kept as recorded
    card = (folder / "README.md").read_text()
    row = next(ln for ln in card.splitlines() if ln.startswith("| throughput (img/s, batch 4) |"))
    verdict = "(not conclusive)" if speed["busy"] else ("faster" if speed["throughput_ratio"]["median"] > 1
                                                        else "(slower)")
    assert verdict in row and ", IQR " in row
    assert ("machine busy: speed not conclusive" in card) == bool(speed["busy"])
    # through the atomic update: the top-level names are still links into the new version
    assert (folder / "report.json").is_symlink() and (folder / "README.md").is_symlink()
    # anything but a folder saved by compress is refused in one line
    res = CliRunner().invoke(app, ["profile", "demo", "--update-card"])
    assert res.exit_code == 2 and "--update-card takes a folder saved by `vitprune compress`" in res.output
    res = CliRunner().invoke(app, ["profile", str(folder), "--update-card", "--keep-rate", "0.5"])
    assert res.exit_code == 2 and "drop method options" in res.output
