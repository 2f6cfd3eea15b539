"""The ``vitprune`` command. Every command is registered here, in the order ``vitprune --help`` lists them; each
lives in the module of its name, parses its flags, calls the library and renders the result."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

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
    if value:
        from importlib.metadata import version

        import timm
        import torch

        from .. import __version__

        typer.echo(f"vitprune {__version__} (torch {torch.__version__}, timm {timm.__version__}, "
                   f"huggingface_hub {version('huggingface_hub')})")
        raise typer.Exit()


@app.callback()
def _app(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_print_version, is_eager=True, help="print the versions and exit.")] = None,
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
