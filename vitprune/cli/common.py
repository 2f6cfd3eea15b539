"""What every command shares: the consoles, the one error edge, JSON output and the common arguments.

The error edge (:class:`VitpruneGroup`) is the only place where library exceptions meet the user: a
``VitpruneError`` becomes one line, ``Error: <message>``, and the exit code the error carries (2 for a
``UsageError``, 1 for the rest); Ctrl-C becomes "Interrupted." and 130; anything else is a bug and keeps its
traceback. Library messages name arguments and method options by their Python names in backticks (`keep_rate`);
the edge writes each name that is a parameter of the running command as that command's flag (``--keep-rate``,
or the alias the user typed), so no message is written twice and no flag name is kept by hand. ``VitpruneWarning``
s (an option the chosen mode ignores) are printed as ``warning: <message>`` the same way.

Long steps (loading and timing, evaluating, exporting and verifying, a sweep's points, compress's stages) go
through :class:`Steps` / :func:`step`: on a terminal a spinner (compress: rich progress bars); when stderr is not
a terminal (piped to a file, ``2>&1 | tee``, a CI log), where a spinner draws nothing, one plain line when a step
starts and one with its duration when it ends, so a log never stays silent for minutes.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer runs its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - a typer that uses click itself
    from click import get_current_context
    from click.exceptions import ClickException, NoArgsIsHelpError

from .. import settings
from ..errors import VitpruneError, VitpruneWarning
from .catalog import check_method  # the methods' names, from data (nothing imported: see catalog.py)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

#: prefix of the Python parameters the method options become on a command (see ``_options.MethodFlag.param``)
METHOD_PARAM = "method_option_"
_NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def cli_message(message: str, command: Any, typed: tuple[str, ...] = ()) -> str:
    """``message`` with each backticked name that is a parameter of ``command`` written as the command line says
    it: an option as its flag (the spelling in ``typed`` when the user used an alias), an argument as its metavar
    (``MODEL``). Other backticked names (an option this command does not take) stay as they are."""
    names: dict[str, str] = {}
    for p in command.params if command is not None else ():  # typer's own click: no isinstance with click's
        if p.param_type_name == "option":
            spelled = [o for o in p.opts if o in typed]
            longs = [o for o in p.opts if o.startswith("--")]
            flag = (spelled or longs or p.opts)[0]
            if p.name.startswith(METHOD_PARAM):  # a method option: named by the option (the command's own wins)
                names.setdefault(p.name[len(METHOD_PARAM):], flag)
            else:
                names[p.name] = flag
        elif p.param_type_name == "argument":
            names[p.name] = getattr(p, "metavar", None) or p.name.upper()
    return _NAME.sub(lambda m: names.get(m.group(1), m.group(0)), message)


def as_flags(message: str) -> str:
    """``message`` as :func:`cli_message` writes it for the command running now (outside the group's edge: a line
    a command prints itself)."""
    ctx = get_current_context(silent=True)
    return message if ctx is None else cli_message(message, ctx.command)


def plain_flags(params: list[Any]) -> list[Any]:
    """``params`` with an empty type column for each flag: typer's help writes a flag's type (``--version
    <bool>``) as if it took a value."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class VitpruneGroup(TyperGroup):
    """The ``vitprune`` command group, with the error edge around every command (see the module docstring)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_flags(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            plain_flags(cmd.get_params(ctx))
        return cmd

    def make_context(self, info_name: Any, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickException as e:
            if isinstance(e, NoArgsIsHelpError):  # `vitprune` alone prints the help
                raise
            err.print(f"[bold red]Error:[/] {escape(parser_message(e))}", highlight=False)
            raise typer.Exit(e.exit_code) from None

    def resolve_command(self, ctx: Any, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta["vitprune.command"] = (cmd, tuple(a.split("=", 1)[0] for a in rest if a.startswith("-")))
        return name, cmd, rest

    def invoke(self, ctx: Any) -> Any:
        def say(text: str) -> str:
            command, typed = ctx.meta.get("vitprune.command", (None, ()))
            return escape(cli_message(text, command, typed))

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, VitpruneWarning):
                if is_main_process():
                    err.print(f"[yellow]warning:[/] {say(str(message))}", highlight=False)
            else:
                shown(message, category, filename, lineno, file, line)

        with warnings.catch_warnings():
            warnings.simplefilter("default", VitpruneWarning)  # each different line once per command
            shown, warnings.showwarning = warnings.showwarning, show
            try:
                return super().invoke(ctx)
            except VitpruneError as e:
                err.print(f"[bold red]Error:[/] {say(str(e))}", highlight=False)
                raise typer.Exit(e.exit_code) from None
            except KeyboardInterrupt:
                err.print("Interrupted.")
                raise typer.Exit(130) from None
            except ClickException as e:  # the parser's own errors: a flag's value of the wrong type, unknown flag
                if isinstance(e, NoArgsIsHelpError):
                    raise
                err.print(f"[bold red]Error:[/] {escape(parser_message(e))}", highlight=False)
                raise typer.Exit(e.exit_code) from None


def parser_message(e: Any) -> str:
    """A click error (``BadParameter``, ``NoSuchOption``...) in one line: click's own message, the value that was
    refused when the type check says it (``got 'abc'``), and, for a value read from a ``--config`` recipe file, the
    file and its key instead of the flag."""
    message = e.format_message()
    cause = e.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors):  # typer's type check (a pydantic ValidationError): the refused value
        try:
            first = errors()[0]
            message = f"{message.rstrip('.')} (got {first['input']!r})."
        except (IndexError, KeyError, TypeError):
            pass
    param, ctx = getattr(e, "param", None), getattr(e, "ctx", None)
    if param is not None and ctx is not None and param.name:
        source = ctx.get_parameter_source(param.name)
        config = ctx.params.get("config")
        if getattr(source, "name", "") == "DEFAULT_MAP" and config is not None:
            key = param.name[len(METHOD_PARAM):] if param.name.startswith(METHOD_PARAM) else param.name
            text = message.split(": ", 1)[1] if message.startswith("Invalid value for ") else message
            message = f"--config {config}: key {key!r}: {text}"
    return " ".join(message.split())


#: seconds a step runs before its start line is printed when stderr is not a terminal (quick steps, and errors in
#: them, stay one line); ``VITPRUNE_PROGRESS_AFTER=0`` announces every step at once
PROGRESS_AFTER = 5.0


def _progress_after() -> float:
    try:
        return max(0.0, float(os.environ.get("VITPRUNE_PROGRESS_AFTER", PROGRESS_AFTER)))
    except ValueError:
        return PROGRESS_AFTER


class Steps:
    """Long steps one after the other (see the module docstring): ``start(message)`` ends the step before it;
    ``end()`` ends the current one; ``close()`` stops without an end line (after an error, whose own line says
    why). Not on a terminal, a step that runs ``after`` seconds (default ``VITPRUNE_PROGRESS_AFTER``, else 5) gets
    its start line then, with how long it has run, and its end line when it ends; a quicker one prints nothing."""

    def __init__(self, console: Console = err, live: Optional[bool] = None, after: Optional[float] = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.after = _progress_after() if after is None else after
        self.current: Optional[tuple[str, float]] = None
        self.announced = False
        self.timer: Any = None
        self.status: Any = None
        self.lock = threading.Lock()

    def _announce(self, message: str, t0: float) -> None:
        with self.lock:
            if self.current != (message, t0):
                return
            self.announced = True
            ran = time.perf_counter() - t0
            self.console.print(f"{message} …" + (f" (running for {ran:.0f} s)" if ran >= 1 else ""), markup=False,
                               highlight=False)

    def start(self, message: str) -> None:
        self.end()
        t0 = time.perf_counter()
        with self.lock:
            self.current, self.announced = (message, t0), False
        if self.live:
            if self.status is None:
                self.status = self.console.status(escape(message))
                self.status.start()
            else:
                self.status.update(escape(message))
        elif self.after <= 0:
            self._announce(message, t0)
        else:
            self.timer = threading.Timer(self.after, self._announce, (message, t0))
            self.timer.daemon = True
            self.timer.start()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def end(self) -> None:
        self._stop_timer()
        with self.lock:
            if self.current is not None and self.announced:
                message, t0 = self.current
                self.console.print(f"{message}: done in {time.perf_counter() - t0:.1f} s", markup=False,
                                   highlight=False)
            self.current, self.announced = None, False

    def close(self) -> None:
        self._stop_timer()
        if self.status is not None:
            self.status.stop()
            self.status = None
        with self.lock:
            self.current, self.announced = None, False


@contextmanager
def step(message: str) -> Iterator[None]:
    """One long step: a spinner on a terminal, else a line when it starts and one when it ends (see ``Steps``)."""
    steps = Steps()
    steps.start(message)
    try:
        yield
        steps.end()
    finally:
        steps.close()


def is_main_process() -> bool:
    """False on the other ranks under ``torchrun`` (they stay quiet)."""
    return os.environ.get("RANK", "0") == "0"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- arguments shared by commands

ModelArg = Annotated[str, typer.Argument(
    help="timm model name, hf-hub:org/repo, a local folder (timm or vitprune), or 'demo' (bundled).")]
def _check_method(value: Optional[str]) -> Optional[str]:
    return check_method(value)


MethodOpt = Annotated[Optional[str], typer.Option(
    "--method", "-m", callback=_check_method, help="token method to apply (see `vitprune methods`); its options are the flags under "
                           "Method options.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON.")]
def settings_option(f: Any, **extra: Any) -> Any:
    """A run setting's typer annotation (``vitprune.settings.Flag``): its flags, help, panel, range and metavar
    as declared with the setting, once."""
    kw = {k: v for k, v in dict(help=escape(f.help), rich_help_panel=f.panel, min=f.min, metavar=f.metavar).items()
          if v is not None}
    kind = Optional[list[str]] if f.type == list[str] else Optional[f.type] if f.default is None else f.type
    return Annotated[kind, typer.Option(*f.decls, **kw, **extra)]


def settings_parameters(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """The command-line parameters of the run settings of ``cls`` (``vitprune.settings``), by their parameter
    names (``batch_size``, ``no_speed``, ``logger``)."""
    return [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=settings_option(f))
            for f in settings.flags(cls) if f.field not in skip]


def speed_option(name: str) -> Any:
    """The flag of ``SpeedSettings.<name>`` (``vitprune.settings``), for the commands that time models."""
    return settings_option(settings.flag(settings.SpeedSettings, name))


TargetGmacsOpt = settings_option(settings.flag(settings.CompressConfig, "target_gmacs"))
NoWeightsOpt = settings_option(settings.flag(settings.ExportSettings, "pretrained"))  # --no-weights
DeviceOpt = speed_option("device")


def _allow_large(ctx: typer.Context, value: bool) -> bool:
    """``--allow-large``: the command runs inside ``vitprune.hub.limits.allow_large()``."""
    if value:
        from ..hub.limits import allow_large  # deferred: CLI startup

        ctx.with_resource(allow_large())
    return value


AllowLargeOpt = Annotated[bool, typer.Option(
    "--allow-large/--no-allow-large", callback=_allow_large, help="build a model a config describes even when it is "
    "larger than the memory available now or has more than 16,384 patch tokens per image.")]


def print_budget(budget: Optional[dict]) -> None:
    """The setting --target-gmacs chose, in one line."""
    if budget:
        out.print(f"Budget: {budget['setting']}", markup=False, highlight=False)
