"""The ``vitprune`` command. Every command is registered here, in the order ``vitprune --help`` lists them; each
lives in the module of its name, parses its flags, calls the library and renders the result.

Importing this module imports no torch, timm or method module: each command imports the library when it runs, and
the flags derived from the methods come from data (``catalog.py``), so ``--version``, ``--help`` and usage errors
answer at once (``benchmarks/startup.py`` times them; a test checks that torch stays unimported)."""
from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

from .. import __version__
from .common import VitpruneGroup
from .compress import compress
from .eval import eval_
from .export import export
from .import_checkpoint import import_checkpoint
from .methods import methods
from .profile import profile
from .push import push
from .sweep import sweep
from .visualize import visualize

app = typer.Typer(
    name="vitprune",
    cls=VitpruneGroup,
    help="Make pretrained Vision Transformers faster by token sparsification.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    """The installed versions, read from the packages' metadata (importing torch and timm takes seconds)."""
    if value:
        typer.echo(f"vitprune {__version__} (torch {version('torch')}, timm {version('timm')}, "
                   f"huggingface_hub {version('huggingface_hub')})")
        raise typer.Exit()


@app.callback()
def _app(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="print the versions and exit.")] = False,
) -> None:
    """Make pretrained Vision Transformers faster by token sparsification."""


app.command()(compress)
app.command("eval")(eval_)
app.command()(profile)
app.command()(methods)
app.command("import-checkpoint")(import_checkpoint)
app.command()(export)
app.command()(push)
app.command()(visualize)
app.command()(sweep)


def main() -> None:
    """The console script ``vitprune``; ``python -m vitprune`` runs the same app."""
    app(prog_name="vitprune")


if __name__ == "__main__":  # pragma: no cover
    main()
