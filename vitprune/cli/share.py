"""`vitprune push`, `vitprune visualize` and `vitprune sweep`: parse, call the library, render."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Optional

import typer

from .app import app, not_yet
from .common import err, out, print_json, user_errors


@contextmanager
def errors() -> Iterator[None]:
    """``user_errors`` with the message escaped for rich, so text in brackets (``vitprune[plot]``, a server's
    message) is printed as is instead of being read as markup."""
    from rich.markup import escape

    from ..errors import VitpruneError

    with user_errors():
        try:
            yield
        except VitpruneError as e:
            escaped = escape(str(e))
            if escaped == str(e):
                raise
            raise type(e)(escaped) from None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# ------------------------------------------------------------------------------------------ push


@app.command()
def push(
    folder: Annotated[str, typer.Argument(help="a folder saved by vitprune (e.g. the output of `vitprune compress`).")],
    repo: Annotated[str, typer.Option("--repo", "-r", help="Hub repo to upload to, as user/name (created if needed).")],
    private: Annotated[bool, typer.Option("--private", help="create the repo as private.")] = False,
    revision: Annotated[Optional[str], typer.Option(
        help="branch to push to (created from main if missing; default main).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="list the files and print the model card that would go; send nothing.")] = False,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="commit message.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON.")] = False,
) -> None:
    """Upload a saved folder to the Hugging Face Hub with a model card generated from its run.

    The token comes from HF_TOKEN or `hf auth login`; it is never printed. The local folder is not changed: the
    README.md that goes is regenerated from config.json and report.json so that it names the repo.
    """
    with errors():
        from ..hub.push import push as do_push

        if dry_run:
            result = do_push(folder, repo, private=private, revision=revision, dry_run=True, commit_message=message)
        else:
            with err.status(f"uploading {folder} to {repo}…"):
                result = do_push(folder, repo, private=private, revision=revision, commit_message=message)
        if json_out:
            print_json(result.to_dict())
            return
        from rich.table import Table

        verb = "Would upload" if result.dry_run else "Uploaded"
        table = Table(title=f"{verb} to {result.repo_id} ({'private' if result.private else 'public'}, branch "
                      f"{result.revision})", title_justify="left")
        table.add_column("file")
        table.add_column("size", justify="right")
        table.add_column("")
        for f in result.files:
            table.add_row(f.path, _size(f.size), "generated model card" if f.source == "generated" else "")
        table.add_row(f"{len(result.files)} files", _size(result.total_bytes), "", style="bold")
        out.print(table)
        for note in result.notes:
            out.print(f"[dim]· {note}[/]")
        if result.dry_run:
            out.rule("README.md (model card)")
            out.print(result.card, markup=False, highlight=False)
            out.print(f"Dry run: nothing was sent. Push with: vitprune push {folder} --repo {result.repo_id}",
                      highlight=False)
        else:
            out.print(f"Done: {result.url} · load it with vitprune.load(\"hf-hub:{result.repo_id}\")",
                      highlight=False)


@app.command()
def visualize() -> None:
    """Draw which tokens each stage keeps (PNG), for images you give."""
    not_yet("visualize", "it lands with issue #7")


@app.command()
def sweep() -> None:
    """Accuracy/GMACs/throughput over several settings, with a Pareto plot."""
    not_yet("sweep", "it lands with issue #7")
