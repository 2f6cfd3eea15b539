"""The command line answers without importing the library: --version, --help, `methods` and usage errors need no
torch (how long they take is benchmarks/startup.py's business; these tests hold the structure that makes it fast),
and the catalog they read (vitprune/cli/catalog.json) is what the method modules say."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitprune.cli import catalog
from vitprune.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}


def test_catalog_is_what_the_method_modules_say():
    """catalog.json holds describe_methods() and recipe_help() as the library computes them now."""
    assert catalog.build() == catalog.catalog(), f"vitprune/cli/catalog.json is out of date: run {catalog.REGENERATE}"


def test_importing_the_cli_imports_no_torch(tmp_path):
    """A fresh interpreter (cwd: an empty folder) imports the console script's module: torch, timm and the method
    modules stay out of sys.modules."""
    code = ("import sys, json, vitprune.cli.main; "
            "print(json.dumps(sorted(m for m in ('torch', 'timm', 'vitprune.methods', 'vitprune.hub') "
            "if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout) == []


@pytest.mark.slow  # one interpreter runs twelve invocations: about a second of CPU on top of its start
def test_help_version_methods_and_usage_errors_run_without_torch(tmp_path):
    """Each of these invocations ends (exit 0, or 2 for a usage error) with torch, timm and the method modules
    still unimported, in one fresh interpreter whose stdout is a pipe."""
    calls = [["--version"], ["--help"], ["compress", "--help"], ["eval", "--help"], ["profile", "--help"],
             ["sweep", "--help"], ["methods"], ["methods", "evit"], ["profile", "demo", "--method", "evitt"],
             ["compress", "demo", "--method", "tomee", "--epochs", "1"], ["profile", "demo", "--no-such-flag"],
             ["compress", "--config", "no-such-recipe.yaml"]]  # a recipe file is read before the library loads
    code = f"""
import json, sys
from vitprune.cli.main import main
codes = []
for args in {calls!r}:
    sys.argv = ["vitprune", *args]
    try:
        main()
        codes.append(0)
    except SystemExit as e:
        codes.append(e.code or 0)
loaded = [m for m in ("torch", "timm", "vitprune.methods", "vitprune.hub") if m in sys.modules]
print("RESULT", json.dumps({{"codes": codes, "loaded": loaded}}))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.split("RESULT ")[-1])
    assert result == {"codes": [0] * 8 + [2, 2, 2, 2], "loaded": []}
    assert "did you mean 'evit'?" in res.stderr and "did you mean 'tome'?" in res.stderr


@pytest.mark.parametrize("args, suggestion", [
    (["profile", "demo", "--method", "evitt", "--no-speed"], "did you mean 'evit'?"),
    (["compress", "demo", "--method", "dynamic_vitt"], "did you mean 'dynamicvit'?"),
    (["visualize", "demo", "--method", "nope"], "methods: dynamicvit, evit, evovit, tome, dge, sait"),
])
def test_unknown_method_is_a_usage_error_with_the_closest_name(args, suggestion):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert f"unknown method '{args[3]}'" in res.output and suggestion in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_method_names_are_spelt_as_the_registry_accepts_them():
    """Case and dashes do not matter (as ``vitprune.apply_method``): Evo-ViT is evovit."""
    assert catalog.find_method("Evo-ViT")["name"] == "evovit" and catalog.check_method("TOME") == "TOME"
    assert catalog.check_method(None) is None


def test_methods_overview_is_one_line_per_method_with_its_headline_option():
    res = runner.invoke(app, ["methods"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    by_name = {line.split()[0]: line for line in lines[1:] if line.strip() and not line.startswith("`")}
    assert list(by_name) == [m["name"] for m in catalog.methods()]
    # the defaults are the options dataclasses' (catalog.json, checked against them above)
    assert "--keep-rate 0.7" in by_name["evit"] and "Liang et al. (ICLR 2022" in by_name["evit"]
    assert "--tome-r 13" in by_name["tome"] and "--budget 0.5" in by_name["dge"]
    assert "--mode adaptive" in by_name["sait"] and "--keep-rate" not in by_name["sait"]  # keep_rate: fixed mode
    assert all(len(line) <= 80 for line in lines)


def test_methods_evit_lists_each_option_as_a_flag_with_its_default_at_80_columns():
    res = runner.invoke(app, ["methods", "evit"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    evit = catalog.find_method("evit")
    starts = [line.strip() for line in lines if line.startswith("  --")]
    assert len(starts) == len(evit["options"])
    assert starts[0].startswith("--keep-rate (a number; default 0.7): fraction of patch tokens kept")
    assert starts[1].startswith("--fuse/--no-fuse (true or false; default true):")
    assert "Run-time: changes a saved model. sweep takes its values as --keep-rates." in " ".join(
        line.strip() for line in lines)
    assert lines[0].startswith("evit (EViT): ") and "Notes:" in lines


def test_methods_with_an_unknown_name_is_a_usage_error():
    res = runner.invoke(app, ["methods", "evo"])
    assert res.exit_code == 2 and "did you mean 'evovit'?" in res.output


def test_methods_json_is_the_catalog():
    res = runner.invoke(app, ["methods", "tome", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == [catalog.find_method("tome")]


def test_flags_show_no_value_type_in_help():
    """A flag takes no value: help shows none for it (typer writes ``--version <bool>`` otherwise); an option that
    takes one keeps its type."""
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert "--version" in res.output and "<bool>" not in res.output
    res = runner.invoke(app, ["profile", "--help"], env={"COLUMNS": "120"})
    assert "--no-weights" in res.output and "<bool>" not in res.output and "<str>" in res.output
    # the extra's brackets are not taken for rich markup (the words may wrap onto the next line of the box)
    assert "vitprune[export]" in res.output and "vitprune\\[export]" not in res.output


def test_sweep_examples_match_the_option_types_and_eval_names_its_data_default():
    res = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    line = next(line for line in res.output.splitlines() if "sweep r (tome)" in line)
    assert "e.g. 4,8,12." in line and "0.5" not in line
    keep = next(line for line in res.output.splitlines() if "--keep-rates" in line and "sweep keep_rate" in line)
    assert "e.g. 0.5,0.7,0.9." in keep
    res = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert "'demo' (the default: the bundled handwritten digits" in res.output
