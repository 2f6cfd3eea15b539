"""The Typer application every command module registers on."""
import typer

app = typer.Typer(
    name="vitprune",
    help="Make pretrained Vision Transformers faster by token sparsification.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def not_yet(command: str, issue: str) -> None:
    """A command whose capability has not landed: one line, exit 1."""
    from ..errors import NotAvailableError
    from .common import user_errors

    with user_errors():
        raise NotAvailableError(f"`vitprune {command}` is not available in this version yet ({issue}).")
