"""Recipe files (--config): override order (command line > file > defaults) read from the resolved settings
(--print-config) and from config.json's recorded sources, unknown keys and malformed files in one line, the example
recipe, and --print-config's output read back as a recipe."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vitprune.cli.main import app

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recipe.yaml"


def _print_config(*argv: str) -> dict:
    res = runner.invoke(app, ["compress", *argv, "--print-config"])
    assert res.exit_code == 0, res.output
    return yaml.safe_load(res.stdout)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    path = _write(tmp_path, "method: tome\nr: 3\nepochs: 2\nlr: 0.001\nscale: [0.5, 1]\nbatch_size: 32\n"
                            "logger: csv\n")
    s = _print_config("--config", str(path), "--lr", "0.002", "--tome-r", "5")
    assert (s["method"], s["epochs"], s["scale"], s["batch_size"], s["logger"]) == ("tome", 2, [0.5, 1], 32, ["csv"])
    assert s["lr"] == 0.002 and s["r"] == 5  # typed flags win (--tome-r is r)
    assert s["output"] == "vitprune-out/demo-tome-r5"
    # without the file, the defaults: the demo preset's 10 epochs, DynamicViT, batch 64
    d = _print_config()
    assert (d["method"], d["epochs"], d["batch_size"], d["logger"]) == ("dynamicvit", 10, 64, [])
    # tome_r is the same key as r
    assert _print_config("--config", str(_write(tmp_path, "method: tome\ntome_r: 4\n")))["r"] == 4


def test_print_config_output_reads_back_as_the_same_settings(tmp_path):
    first = _print_config("--config", str(EXAMPLE), "--epochs", "2")
    again = _print_config("--config", str(_write(tmp_path, yaml.safe_dump(first))))
    assert again == first


def test_the_example_recipe_resolves_on_the_demo():
    s = _print_config("--config", str(EXAMPLE))
    example = yaml.safe_load(EXAMPLE.read_text())
    for key, value in example.items():  # every key of the file is what would run
        assert s[key] == (value if key != "logger" else list(value)), key
    assert s["warmup_epochs"] is not None and s["optimizer"] == "adamw"  # the rest resolved from the method


def test_every_boolean_a_file_switches_on_can_be_switched_off_by_a_flag(tmp_path):
    """A flag typed on the command line wins over the file, for booleans too: each on/off option of compress that a
    recipe file can set has an off form (``--no-x``, or ``--x`` for the ``--no-x`` options)."""
    import typer.main

    command = typer.main.get_command(app).commands["compress"]
    flags = [p for p in command.params if getattr(p, "is_flag", False) and p.name not in ("config", "print_config",
                                                                                           "help")]
    assert {"streaming", "no_augment", "new_head", "quiet", "json_out", "keep_best"} <= {p.name for p in flags}
    for p in flags:
        assert p.secondary_opts, f"{p.opts[0]} has no off form"
    from vitprune.cli._options import METHOD_PARAM

    on = {p.name: True for p in flags if p.name not in ("resume", "overwrite", "json_out")
          and not p.name.startswith(METHOD_PARAM)}
    # (resume/overwrite/json change what --print-config itself does, and a method's on/off options belong to one
    # method each (--fuse is EViT's); their off forms are checked above)
    path = _write(tmp_path, yaml.safe_dump(on))
    off = [f for p in flags if p.name in on for f in p.secondary_opts[:1]]
    s = _print_config("--config", str(path), *off)
    printed = (set(on) & set(s)) - {"no_augment"}  # the demo preset trains without augmentation whatever the flag
    assert {"streaming", "new_head", "keep_best", "keep_checkpoints", "private"} <= printed  # says; quiet isn't printed
    for name in printed:
        assert s[name] is False, name


@pytest.mark.parametrize("text, message", [
    ("keep_rat: 0.5\n", "unknown key 'keep_rat' (did you mean keep_rate?)"),
    ("- epochs\n- 3\n", "must be a mapping of option names to values"),
    ("epochs: [1,\n", "is not valid YAML at line 2"),
    ("config: other.yaml\n", "unknown key 'config'"),
])
def test_a_bad_file_is_one_line(tmp_path, text, message):
    res = runner.invoke(app, ["compress", "--config", str(_write(tmp_path, text)), "--print-config"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --config ") and message in lines[0], res.output


@pytest.mark.slow
def test_a_tiny_compress_from_the_example_records_the_file_as_the_source(tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["compress", "--config", str(EXAMPLE), "--max-steps", "2", "--epochs", "0.1",
                              "--eval-every", "0", "--no-keep-best", "--no-speed", "--quiet", "-o", str(out),
                              "--keep-checkpoints"])
    assert res.exit_code == 0, res.output
    # 0.1 epoch of the demo's training split at batch 64 is at most 2 steps; it finishes and saves
    config = json.loads((out / "config.json").read_text())["vitprune"]
    report = json.loads((out / "report.json").read_text())
    sources = report["recipe_sources"]
    assert sources["lr"] == sources["optimizer"] == "config file" and sources["epochs"] == "user"
    assert config["recipe"]["lr"] == 0.0008 and report["method"] == "evit" and report["options"]["keep_rate"] == 0.7


def test_the_guides_yaml_is_the_example_recipe():
    import re

    readme = (EXAMPLE.parents[1] / "docs" / "recipes-and-logs.md").read_text()
    shown = re.findall(r"^  ```yaml\n(.*?)^  ```", readme, flags=re.S | re.M)
    assert len(shown) == 1
    assert yaml.safe_load(shown[0]) == yaml.safe_load(EXAMPLE.read_text())


def test_the_api_lists_every_run_setting_as_declared():
    """``vitprune.compress``'s signature and docstring are built from ``CompressConfig`` (vitprune.settings): each
    field is a keyword with its default, and a doc line with its flag (an off switch for a negated one)."""
    import dataclasses
    import inspect

    import vitprune
    from vitprune.settings import CompressConfig, default_of, flags

    params = inspect.signature(vitprune.compress).parameters
    doc = vitprune.compress.__doc__
    cli = {f.field: f for f in flags(CompressConfig)}
    for f in dataclasses.fields(CompressConfig):
        if f.name == "method_options":
            continue
        assert params[f.name].default == default_of(f), f.name
        if f.name in ("model", "method", "data", "output"):
            continue
        flag = cli.get(f.name)
        where = "" if flag is None else f" (``False``: {flag.long})" if flag.negated else f" ({flag.long})"
        assert f"``{f.name}``{where}: {f.metadata['help']}" in doc, f.name
    assert "``speed`` (``False``: --no-speed)" in doc
    assert inspect.signature(vitprune.profile).parameters["batch_size"].default is None  # SpeedSettings' fields


def test_a_flag_gives_back_the_value_it_set():
    """``Flag.as_given`` inverts ``Flag.value``: what --print-config writes reads back as the same setting."""
    from vitprune.settings import CompressConfig, flags

    samples = {bool: True, int: 3, float: 0.5, str: "x", list[str]: ("csv", "tensorboard")}
    for f in flags(CompressConfig):
        value = samples[f.type]
        assert f.value(f.as_given(value)) == value, f.field
