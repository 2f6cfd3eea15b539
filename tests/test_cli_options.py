"""The command line derived from the registry: every method option is a flag of every command that takes method
options (eval: the run-time ones), declared once in its options dataclass; `vitprune methods` shows exactly the flags
the commands accept; ToMe's flag survives torchrun's parser; a method registered by someone else gets its flags
everywhere without touching the CLI."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import vitprune
from vitprune.cli.common import METHOD_PARAM
from vitprune.cli.main import app
from vitprune.methods import get_method_class, method_names, option_specs

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands
#: commands that patch or re-configure a model with method options; eval changes a saved model's run-time options
TAKE_OPTIONS = ("compress", "profile", "visualize", "export", "sweep", "import-checkpoint")


def flags_of(command: str) -> set[str]:
    params = COMMANDS[command].params
    return {o for p in params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}


def dry_parse(args: list[str]):
    """Parse a command line as `vitprune` would, types converted, without running the command."""
    group = typer.main.get_command(app)
    with group.make_context("vitprune", list(args)) as ctx:
        cmd = group.get_command(ctx, args[0])
        return cmd.make_context(args[0], list(args[1:]), parent=ctx)


def test_every_option_of_every_method_is_a_flag_where_options_are_taken():
    for name in method_names():
        for spec in option_specs(get_method_class(name)):
            wanted = set(spec.flags) | ({f"--no-{spec.flag[2:]}"} if spec.is_bool else set())
            for command in TAKE_OPTIONS:
                assert wanted <= flags_of(command), (command, name, spec.name)
            assert (wanted <= flags_of("eval")) == any(  # eval: exactly the options some method changes at run time
                s.runtime for m in method_names() for s in option_specs(get_method_class(m)) if s.name == spec.name)
    assert not {"--keep-rate", "--tome-r"} & (flags_of("push") | flags_of("methods"))
    assert {"--keep-rates", "--r-values", "--budgets", "--thresholds"} <= flags_of("sweep")


def sample(option: dict) -> list[str]:
    """A value of the option's type as typed on the command line (a bool flag takes none)."""
    if option["type"] == "bool":
        return []
    default = option["default"]
    if isinstance(default, list):
        return [",".join(map(str, default))]
    return ["4" if default is None else str(default)]


@pytest.mark.slow
def test_every_flag_vitprune_methods_shows_is_accepted_by_compress():
    info = json.loads(runner.invoke(app, ["methods", "--json"]).stdout)
    shown = 0
    for method in info:
        for option in method["options"]:
            spellings = [option["flag"], *option["aliases"]]
            if option["type"] == "bool":
                spellings.append(f"--no-{option['flag'][2:]}")
            for flag in spellings:
                ctx = dry_parse(["compress", "demo", "--method", method["name"], flag, *sample(option)])
                assert ctx.params[METHOD_PARAM + option["name"]] is not None, (method["name"], flag)
                shown += 1
    assert shown >= 40  # 32 options over six methods, 4 bool ones with --no-, ToMe's --r


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_each_methods_options_given_as_flags_reach_the_method(method):
    """Every option of a method given as its flag (at its default) on a real command: the options the method ends
    up with are the defaults, i.e. each flag's text became the value of the right type."""
    specs = option_specs(get_method_class(method))
    args = ["profile", "demo", "--method", method, "--no-speed", "--json"]
    info = {o["name"]: o for m in json.loads(runner.invoke(app, ["methods", "--json"]).stdout)
            if m["name"] == method for o in m["options"]}
    for spec in specs:
        if spec.default is None:
            continue  # nothing to type for "none" (the flag is simply not given)
        args += [spec.flag if spec.default else f"--no-{spec.flag[2:]}"] if spec.is_bool else \
            [spec.flag, *sample(info[spec.name])]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["compressed"]["options"]
    for spec in specs:
        if spec.default is not None:
            assert got[spec.name] == spec.default, (spec.name, got[spec.name])


def test_compress_flags_pass_torchruns_own_parser():
    """`torchrun ... -m vitprune compress FLAG VALUE`: torchrun's argparse rejects a flag that abbreviates several of
    its own (--r could be --rdzv-backend, --role, --run-path...). Every option has a primary flag it passes; the
    one spelling it rejects is ToMe's --r, an alias of --tome-r kept for plain `vitprune compress`."""
    from torch.distributed.run import get_args_parser

    rejected = set()
    for flag in sorted(flags_of("compress")):
        argv = ["--nproc-per-node", "2", "-m", "vitprune", "compress", flag, "1"]
        try:
            with contextlib.redirect_stderr(io.StringIO()) as stderr:
                ns = get_args_parser().parse_args(argv)
        except SystemExit:
            assert "ambiguous option" in stderr.getvalue(), stderr.getvalue()
            rejected.add(flag)
            continue
        assert ns.training_script == "vitprune" and ns.training_script_args == ["compress", flag, "1"]
    assert rejected == {"--r"}
    for name in method_names():
        for spec in option_specs(get_method_class(name)):
            assert spec.flag not in rejected, spec


_THROWAWAY = """
import dataclasses, json, sys
from typer.testing import CliRunner
import vitprune
from vitprune.methods import TokenMethod, register
from vitprune.methods.base import MethodOptions

@dataclasses.dataclass
class StrideOptions(MethodOptions):
    stride: int = dataclasses.field(default=2, metadata={
        "help": "every stride-th patch", "headline": True, "short": "s", "runtime": True, "sweep": True})

@register
class Strided(TokenMethod):
    name, title, paper, summary, Options = "strided", "Strided", "none", "a method made up for a test", StrideOptions

from vitprune.cli.main import app  # the commands are built after the registration, as a plugin would do it
import typer.main
cmds = typer.main.get_command(app).commands
flags = {c: sorted(o for p in cmds[c].params for o in p.opts if "stride" in o) for c in cmds}
runner = CliRunner()
prof = json.loads(runner.invoke(app, ["profile", "demo", "--method", "strided", "--stride", "3", "--no-speed",
                                      "--json"]).stdout)
vitprune.save(vitprune.apply_method(vitprune.load_model("demo"), "strided"), sys.argv[1] + "/m")
ev = runner.invoke(app, ["eval", sys.argv[1] + "/m", "--stride", "5", "--json"])
meth = [m for m in json.loads(runner.invoke(app, ["methods", "--json"]).stdout) if m["name"] == "strided"]
print(json.dumps({"flags": flags, "profile": prof["compressed"]["options"], "eval": json.loads(ev.stdout)["options"],
                  "methods": meth[0]["options"]}))
"""


@pytest.mark.slow
def test_a_new_method_gets_its_flags_on_every_command(tmp_path):
    res = subprocess.run([sys.executable, "-c", _THROWAWAY, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for command in (*TAKE_OPTIONS, "eval"):
        assert "--stride" in got["flags"][command], command
    assert got["flags"]["sweep"] == ["--stride", "--strides"]  # the option, and its sweep values
    assert got["flags"]["push"] == [] and got["flags"]["methods"] == []
    assert got["profile"] == {"stride": 3} and got["eval"] == {"stride": 5}
    assert got["methods"][0]["flag"] == "--stride" and got["methods"][0]["runtime"] is True


def test_a_derived_flag_that_would_shadow_a_commands_own_flag_is_refused():
    import dataclasses

    from vitprune.cli._options import method_options
    from vitprune.methods.base import MethodOptions, TokenMethod
    from vitprune.methods.registry import _REGISTRY

    @dataclasses.dataclass
    class DataOptions(MethodOptions):
        data: str = "x"

    cls = type("Shadow", (TokenMethod,), {"name": "shadow", "Options": DataOptions, "title": "Shadow", "paper": "none",
                                          "summary": "a method made up for a test"})
    _REGISTRY["shadow"] = cls
    try:
        def command(data: str = "demo", method_options: dict = {}) -> None:  # noqa: B006
            pass

        with pytest.raises(TypeError, match="clashes with the command's own --data"):
            method_options()(command)
    finally:
        del _REGISTRY["shadow"]


def test_an_option_may_share_a_commands_parameter_name_under_another_flag():
    """A method option ``seed`` with the flag ``--drop-seed`` sits next to a command's own ``--seed``: each value
    reaches its own place."""
    import dataclasses

    import typer

    from vitprune.cli._options import method_options
    from vitprune.methods.base import MethodOptions, TokenMethod
    from vitprune.methods.registry import _REGISTRY

    @dataclasses.dataclass
    class SeedOptions(MethodOptions):
        seed: int = dataclasses.field(default=0, metadata={"flag": "--drop-seed"})

    _REGISTRY["seeded"] = type("Seeded", (TokenMethod,), {"name": "seeded", "Options": SeedOptions, "title": "Seeded",
                                                          "paper": "none", "summary": "a method made up for a test"})
    got = {}
    try:
        def command(seed: int = 0, method_options: dict = {}) -> None:  # noqa: B006
            got.update(own=seed, method=method_options)

        one = typer.Typer()
        one.command()(method_options()(command))
        res = CliRunner().invoke(one, ["--seed", "3", "--drop-seed", "7"])
    finally:
        del _REGISTRY["seeded"]
    assert res.exit_code == 0, res.output
    assert got == {"own": 3, "method": {"seed": 7}}


# ------------------------------------------------------------------------------------------ values and warnings


def one_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize("args, code, message", [
    (["--method", "evit", "--opt", "fuse"], 2, "Error: --opt takes KEY=VALUE, got 'fuse'."),
    (["--method", "evit", "--keep-rate", "0.5", "--opt", "keep_rate=0.6"], 2,
     "Error: --keep-rate is given twice (its flag and --opt); give it once."),
    (["--method", "tome", "--r", "40"], 1, "Error: --r 40 is too large"),  # the spelling the user typed
    (["--method", "tome", "--tome-r", "40"], 1, "Error: --tome-r 40 is too large"),
    (["--method", "evit", "--tome-r", "8"], 1, "Error: --tome-r is not an option of evit (its options: --drop-loc, "
                                               "--fuse, --keep-rate, --shrink-epochs, --shrink-start)."),
    (["--method", "sait", "--mode", "sparse"], 1, "Error: --mode must be one of dense, fixed, adaptive"),
    (["--compile-mode", "bogus"], 2, "Error: --compile-mode must be one of auto, compile, cudagraphs, max-autotune, "
                                     "none, got 'bogus'."),
    (["--bogus"], 2, None),  # the parser's own usage error
])
def test_errors_leave_at_one_edge_with_the_commands_flags(args, code, message):
    res = runner.invoke(app, ["profile", "demo", *args, "--no-speed"])
    assert res.exit_code == code, res.output
    if message is not None:
        assert one_line(res).startswith(message), res.output


def test_the_edge_writes_only_parameters_of_the_running_command_as_flags():
    from vitprune.cli.common import cli_message

    profile = COMMANDS["profile"]
    text = "`model` and `keep_rate` and `r` and `batch_size`; `steps` and `vitprune methods` stay."
    assert cli_message(text, profile) == \
        "MODEL and --keep-rate and --tome-r and --batch-size; `steps` and `vitprune methods` stay."
    assert cli_message("`r`", profile, typed=("--r",)) == "--r"
    assert cli_message("`pruning_loc`", COMMANDS["eval"]) == "`pruning_loc`"  # not a run-time option: not an eval flag


def test_an_option_the_mode_ignores_is_a_warning_line():
    res = runner.invoke(app, ["profile", "demo", "--method", "sait", "--mode", "fixed", "--threshold", "0.8",
                              "--no-speed", "--json"])
    assert res.exit_code == 0, res.output
    assert ("warning: --threshold has no effect while --mode is fixed (it applies when --mode is adaptive)."
            in res.stderr)
    assert json.loads(res.stdout)["compressed"]["options"]["threshold"] == 0.8  # still set: a later mode uses it


def test_compile_is_a_plain_flag():
    res = runner.invoke(app, ["profile", "demo", "--compile", "--repeats", "2", "--no-speed", "--json"])
    assert res.exit_code == 0, res.output  # --repeats is not taken as the value of --compile
    assert json.loads(res.stdout)["compiled"] == "auto"
    res = runner.invoke(app, ["profile", "demo", "--compile-mode", "compile", "--no-speed", "--json"])
    assert json.loads(res.stdout)["compiled"] == "compile"
    with pytest.raises(vitprune.errors.UsageError, match="`compile` must be one of"):
        vitprune.profile("demo", compile="bogus", speed=False)


@pytest.mark.slow
def test_compile_times_both_models_compiled_on_cpu():
    # batch 1 for throughput as for latency: one shape, so each model compiles once (inductor, dynamic=False)
    res = runner.invoke(app, ["profile", "demo", "--method", "evit", "--compile", "--device", "cpu",
                              "--batch-size", "1", "--repeats", "1", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["compiled"] == "auto" and rep["dense"]["throughput"] > 0 and rep["compressed"]["throughput"] > 0


# ------------------------------------------------------------------------------------------ run-time options


@pytest.mark.slow
def test_eval_mode_dense_on_sait_is_the_dense_model(tmp_path):
    folder = vitprune.save(vitprune.apply_method(vitprune.load_model("demo"), "sait", mode="fixed", keep_rate=0.5),
                           tmp_path / "sait")
    dense = json.loads(runner.invoke(app, ["eval", "demo", "--json"]).stdout)
    res = runner.invoke(app, ["eval", str(folder), "--mode", "dense", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    # SaiT's dense mode prunes nothing and runs timm's blocks: the demo teacher's own numbers
    assert got["options"]["mode"] == "dense" and got["top1"] == dense["top1"]
    assert got["loss"] == pytest.approx(dense["loss"], rel=1e-5)
    assert json.loads(runner.invoke(app, ["eval", str(folder), "--json"]).stdout)["options"]["mode"] == "fixed"


@pytest.mark.slow
def test_run_time_options_change_a_saved_model_in_profile_and_visualize(tmp_path):
    folder = str(vitprune.save(vitprune.apply_method(vitprune.load_model("demo"), "evit", keep_rate=0.7),
                               tmp_path / "evit"))

    def profiled(*extra):
        res = runner.invoke(app, ["profile", folder, *extra, "--no-speed", "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["compressed"]

    saved, lower = profiled(), profiled("--keep-rate", "0.5")
    assert saved["options"]["keep_rate"] == 0.7 and lower["options"]["keep_rate"] == 0.5
    assert lower["gmacs"] < saved["gmacs"] and lower["tokens"][-1] < saved["tokens"][-1]

    def kept(*extra):
        res = runner.invoke(app, ["visualize", folder, "demo:0", *extra, "--out", str(tmp_path / "t.png"), "--json"])
        assert res.exit_code == 0, res.output
        return [s["patch_tokens"][0] for s in json.loads(res.stdout)["stages"]]

    assert kept("--keep-rate", "0.5") < kept()  # ceil(0.5 x 64) = 32 < ceil(0.7 x 64) = 45 patches after block 1
    res = runner.invoke(app, ["profile", folder, "--drop-loc", "2", "--no-speed"])
    assert res.exit_code == 1 and "--drop-loc cannot be changed at run time for evit" in one_line(res)


# ------------------------------------------------------------------------------------------ export and push settings


def _choices(param) -> tuple:
    """The values a typer option of a ``Literal`` type accepts."""
    import typing

    return typing.get_args(param.type_descriptor.annotation)


@pytest.mark.parametrize("command, cls, own", [
    ("export", "ExportSettings", {"model", "method", "json_out", "allow_large"}),
    ("push", "PushSettings", {"folder", "repo", "json_out"}),
])
def test_export_and_push_flags_are_their_settings_as_declared(command, cls, own):
    """Every flag of ``export`` and ``push`` besides the command's own (and the method options) is a field of its
    settings dataclass (``vitprune.settings``), with the declared spelling, help, default, range and choices."""
    from rich.markup import escape

    from vitprune import settings

    cls = getattr(settings, cls)
    params = {p.name: p for p in COMMANDS[command].params}
    flags = settings.flags(cls)
    for f in flags:
        p = params[f.param]
        spelled = [d for decl in f.decls for d in decl.split("/")]
        assert sorted(p.opts + p.secondary_opts) == sorted(spelled), f.field
        assert p.help == escape(f.help), f.field
        assert p.default == f.default or (f.type == list[str] and p.default is None), f.field
        assert p.min == f.min, f.field
        if f.choices:
            assert _choices(p) == f.choices, f.field
    derived = {f.param for f in flags}
    assert set(params) - derived - {n for n in params if n.startswith(METHOD_PARAM) or n == "opt"} == own
    cli_fields = {f.name for f in __import__("dataclasses").fields(cls) if f.metadata["cli"]}
    assert {f.field for f in flags} == cli_fields  # every field meant for the command line has its flag


@pytest.mark.parametrize("command, fields", [
    ("profile", ("device", "dtype", "batch_size", "repeats", "speed", "compile", "runtime")),
    ("sweep", ("device", "dtype", "batch_size", "repeats", "speed", "latency")),
])
def test_timing_flags_are_speed_settings_as_declared(command, fields):
    """``profile``'s and ``sweep``'s timing flags are ``SpeedSettings``' fields as declared once: spelling (the off
    switches ``--no-speed``/``--no-latency`` alone), help, default and range."""
    from rich.markup import escape

    from vitprune import settings

    params = {o: p for p in COMMANDS[command].params for o in p.opts + p.secondary_opts}
    for name in fields:
        f = settings.flag(settings.SpeedSettings, name)
        spelled = [d for decl in f.decls for d in decl.split("/")]
        p = params[spelled[0]]
        assert sorted(p.opts + p.secondary_opts) == sorted(spelled), name
        assert p.help == escape(f.help) and p.default == f.default and p.min == f.min, name
    assert params["--no-speed"].is_flag and not params["--no-speed"].secondary_opts


def test_export_and_push_spell_their_flags_as_before():
    """The spellings the commands had before their flags were derived: aliases, choices, no off forms."""
    ex, pu = COMMANDS["export"].params, COMMANDS["push"].params
    opts = {o: p for p in ex for o in p.opts + p.secondary_opts}
    assert opts["-f"] is opts["--format"] and opts["-o"] is opts["--output"]
    assert _choices(opts["--quantize"]) == ("int8", "int8-static") and _choices(opts["--format"]) == ("onnx",)
    for flag in ("--dynamic-batch", "--measure", "--force", "--no-weights"):
        assert opts[flag].is_flag and not opts[flag].secondary_opts, flag
    assert {"--no-force", "--weights", "--no-measure"}.isdisjoint(opts)
    opts = {o: p for p in pu for o in p.opts + p.secondary_opts}
    assert opts["-m"] is opts["--message"] and opts["--message"].name == "message" and opts["-r"] is opts["--repo"]
    assert opts["--include"].multiple and not opts["--dry-run"].secondary_opts


@pytest.mark.parametrize("job, cls", [("export", "ExportSettings"), ("push", "PushSettings")])
def test_export_and_push_take_their_settings_as_keywords(job, cls):
    """``vitprune.export``/``vitprune.push``: each field a keyword with its declared default and a doc line with its
    flag (built by ``settings.takes_settings``); push takes no other keyword."""
    import dataclasses
    import inspect

    from vitprune import settings

    fn, cls = getattr(vitprune, job), getattr(settings, cls)
    params = inspect.signature(fn).parameters
    cli = {f.field: f for f in settings.flags(cls)}
    for f in dataclasses.fields(cls):
        if f.name in ("output", "folder", "repo"):  # positional, named by the job itself
            assert params[f.name].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
            continue
        assert params[f.name].kind == inspect.Parameter.KEYWORD_ONLY
        assert params[f.name].default == settings.default_of(f), f.name
        flag = cli.get(f.name)
        where = "" if flag is None else f" (``False``: {flag.long})" if flag.negated else f" ({flag.long})"
        assert f"``{f.name}``{where}: {f.metadata['help']}" in fn.__doc__, f.name
    kinds = {p.kind for p in params.values()}
    assert (inspect.Parameter.VAR_KEYWORD in kinds) == (job == "export")  # export's other keywords: method options
    if job == "push":
        with pytest.raises(TypeError, match="bogus"):
            vitprune.push("nowhere", "alice/x", bogus=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "tflite"}, "`format` must be onnx, got 'tflite'."),
    ({"quantize": "int4"}, "`quantize` must be int8 or int8-static, got 'int4'."),
    ({"opset": 0}, "`opset` must be an integer >= 1, got 0."),
    ({"calibrate_images": 0, "quantize": "int8-static"}, "`calibrate_images` must be an integer >= 1, got 0."),
])
def test_export_checks_its_settings_before_loading_anything(kwargs, message, tmp_path):
    """The choices and ranges of ``vitprune.export`` come from the declarations (``check_ranges``), one line,
    before the model is built or a file written; the command line refuses the same values in its parser."""
    from vitprune.errors import ExportError

    with pytest.raises(ExportError) as e:
        vitprune.export("no-such-model", tmp_path / "x.onnx", **kwargs)
    assert str(e.value) == message
    assert not list(tmp_path.iterdir())
    flag, value = next(iter(kwargs.items()))
    res = runner.invoke(app, ["export", "demo", f"--{flag.replace('_', '-')}", str(value)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
