"""What every command shares: consoles, the error edge, and the method-option flags."""
from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import MethodOptionError, VitpruneError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def as_flags(message: str) -> str:
    """Library messages name parameters by their Python keyword in backticks (`batch_size`); here, those that are
    options of the running command read as its flags (--batch-size)."""
    try:  # typer runs its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - a typer that uses click itself
        from click import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return message
    flags = {p.name: next((o for o in p.opts if o.startswith("--")), p.opts[0])
             for p in ctx.command.params if p.param_type_name == "option" and p.opts}
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: flags.get(m.group(1), m.group(0)), message)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn vitprune's user-facing errors into one line on stderr and exit code 1 (no traceback)."""
    try:
        yield
    except VitpruneError as e:
        err.print(f"[bold red]Error:[/] {escape(as_flags(str(e)))}", highlight=False)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("Interrupted.")
        raise typer.Exit(130) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- method options

ModelArg = Annotated[str, typer.Argument(
    help="timm model name, hf-hub:org/repo, a local folder (timm or vitprune), or 'demo' (bundled).")]
MethodOpt = Annotated[Optional[str], typer.Option(
    "--method", "-m", help="token method (see `vitprune methods`): dynamicvit, evovit, sait, dge, tome, evit.")]
KeepRateOpt = Annotated[Optional[float], typer.Option(
    "--keep-rate", help="fraction of patch tokens kept (dynamicvit, evit, evovit, sait fixed mode).")]
ROpt = Annotated[Optional[str], typer.Option(
    "--r", help="ToMe: tokens merged per block (int, or comma list per block).")]
BudgetOpt = Annotated[Optional[float], typer.Option("--budget", help="DGE: target fraction of dense MACs.")]
RegionOpt = Annotated[Optional[int], typer.Option("--region-size", help="DGE: region side in patches.")]
ThresholdOpt = Annotated[Optional[float], typer.Option(
    "--threshold", help="SaiT adaptive mode: cumulative class-attention mass kept per image.")]
ModeOpt = Annotated[Optional[str], typer.Option(
    "--mode", help="SaiT: dense, fixed or adaptive (switchable at run time without retraining).")]
ExtraOpt = Annotated[Optional[list[str]], typer.Option(
    "--opt", help="any other method option as KEY=VALUE (repeatable), e.g. --opt fuse=false.")]


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if "," in text:
        return [_parse_value(t) for t in text.split(",") if t.strip()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def method_options(
    keep_rate: Optional[float] = None,
    r: Optional[str] = None,
    budget: Optional[float] = None,
    region_size: Optional[int] = None,
    threshold: Optional[float] = None,
    extra: Optional[list[str]] = None,
    mode: Optional[str] = None,
) -> dict[str, Any]:
    """Only the options the user gave, by their method-option names."""
    opts: dict[str, Any] = {}
    if keep_rate is not None:
        opts["keep_rate"] = keep_rate
    if r is not None:
        opts["r"] = _parse_value(r)
    if budget is not None:
        opts["budget"] = budget
    if region_size is not None:
        opts["region_size"] = region_size
    if threshold is not None:
        opts["threshold"] = threshold
    if mode is not None:
        opts["mode"] = mode
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MethodOptionError(f"--opt takes KEY=VALUE, got {item!r}.")
        opts[key.strip().replace("-", "_")] = _parse_value(value)
    return opts
