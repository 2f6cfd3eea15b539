"""The user's guide's code blocks are true (README.md and the docs/ pages it links to): the Python block runs as written (on the bundled demo, offline, on CPU); every
`vitprune` command in a shell block parses with the real command line (every flag exists and takes its value, every
method option belongs to its method) and the cheap ones run. The set-up block is CI's job (`.ci/run` runs it
verbatim on a clean checkout)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from vitprune.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
#: the pages whose blocks are run or parsed: README and every docs/ page except the walk-through of adding a method,
#: whose blocks are pieces of a method that does not exist until the reader writes it
PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "adding-a-method.md")
#: commands cheap enough to run for real (seconds on 2 CPU cores, nothing downloaded)
CHEAP = ("methods",)


def blocks(language: str) -> list[str]:
    """The pages' fenced blocks in ``language``, README's set-up block left out."""
    found = []
    for page in PAGES:
        text = re.sub(r"<!-- setup -->.*?<!-- /setup -->", "", page.read_text(), flags=re.S)
        found += re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)
    return found


def shell_commands() -> list[list[str]]:
    """Every `vitprune ...` line of the shell blocks as argv (comments dropped), `vitprune` removed."""
    commands = []
    for block in blocks("bash"):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                assert argv[0] == "vitprune", f"a shell line in the guide that is not a vitprune command: {line}"
                commands.append(argv[1:])
    return commands


def test_the_readme_has_the_blocks_this_test_reads():
    assert len(blocks("python")) >= 1
    assert {argv[0] for argv in shell_commands()} >= {"methods", "compress", "eval", "profile", "push", "export",
                                                      "visualize", "sweep", "import-checkpoint"}


@pytest.mark.parametrize("argv", shell_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_shell_command_parses(argv):
    """A dry parse: the command's own parser converts every value (no --help, nothing run); method options are then
    checked against the named method's options, as the command would."""
    from vitprune.cli._options import method_flags, sweep_flags
    from vitprune.methods import get_method_class, option_specs

    group = typer.main.get_command(app)
    with group.make_context("vitprune", list(argv)) as root:
        command = group.get_command(root, argv[0])
        assert command is not None, argv
        ctx = command.make_context(argv[0], list(argv[1:]), parent=root)
    flags = {f.name: f for f in method_flags()}
    options = {k: flags[k].value(v) for k, v in ctx.params.items() if k in flags and v is not None}
    method = ctx.params.get("method")
    if method is not None:
        cls = get_method_class(method)
        cls.Options.from_dict(cls.name, options)
        swept = {name for flag, (name, _) in sweep_flags().items()
                 if ctx.params.get(flag[2:].replace("-", "_")) is not None}
        assert swept <= {spec.name for spec in option_specs(cls)}, (argv, swept)
    else:
        assert not options or argv[0] in ("eval", "profile", "visualize", "export", "sweep"), argv  # run-time


@pytest.mark.parametrize("argv", [a for a in shell_commands() if a[0] in CHEAP], ids=lambda a: " ".join(a))
def test_cheap_shell_commands_run(argv):
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_every_python_block_runs_as_written(tmp_path, index):
    code = blocks("python")[index]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    for folder in re.findall(r"#.*?(vitprune-out/[\w.-]+)", code):  # the output folders the comments name
        assert (tmp_path / folder / "config.json").is_file(), folder
    if "vitprune.export(" in code:
        assert (tmp_path / "evit-demo" / "model.onnx").is_file()  # the export line's file


def test_the_headline_tables_are_the_benchmark_results():
    """README's accuracy and speed tables, captions included, are what benchmarks/headline.py renders from the
    committed JSON files in benchmarks/results/ (regenerate with ``python benchmarks/headline.py --write``)."""
    from tests.benchscripts import load_benchmark

    headline = load_benchmark("headline")
    readme = (ROOT / "README.md").read_text()
    rendered = headline.tables()
    assert set(rendered) == {"headline-accuracy", "headline-speed"}
    for name, table in rendered.items():
        assert headline.block(readme, name) == table, f"README's {name} table is not benchmarks/headline.py's"
        assert "|---|" in table and " · 20" in table.splitlines()[0]  # a table under a caption that has a date
