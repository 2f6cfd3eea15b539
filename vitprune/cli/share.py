"""`vitprune push`, `vitprune visualize` and `vitprune sweep`."""
from __future__ import annotations

from .app import app, not_yet


@app.command()
def push() -> None:
    """Upload a saved folder to the Hugging Face Hub with a generated model card."""
    not_yet("push", "it lands with issue #7")


@app.command()
def visualize() -> None:
    """Draw which tokens each stage keeps (PNG), for images you give."""
    not_yet("visualize", "it lands with issue #7")


@app.command()
def sweep() -> None:
    """Accuracy/GMACs/throughput over several settings, with a Pareto plot."""
    not_yet("sweep", "it lands with issue #7")
