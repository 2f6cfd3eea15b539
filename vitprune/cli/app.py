"""The Typer application every command module registers on."""
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="vitprune",
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
def main(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_print_version, is_eager=True, help="print the versions and exit.")] = None,
) -> None:
    """Make pretrained Vision Transformers faster by token sparsification."""
