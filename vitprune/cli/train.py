"""`vitprune compress` and `vitprune eval`."""
from __future__ import annotations

from .app import app, not_yet


@app.command()
def compress() -> None:
    """Patch MODEL with a method, fine-tune it with distillation on your data, measure it and save it."""
    not_yet("compress", "distillation fine-tuning lands with issue #6")


@app.command("eval")
def eval_() -> None:
    """Top-1/top-5 and loss of a model or saved folder on a dataset."""
    not_yet("eval", "it lands with issue #6")
