"""`vitprune push`: upload a saved folder to the Hugging Face Hub with a model card generated from its run."""
from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..settings import PushSettings, help_of
from ._options import run_settings
from .common import JsonOpt, out, print_json, step


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@run_settings(PushSettings)
def push(
    folder: Annotated[str, typer.Argument(help=help_of(PushSettings, "folder"))],
    repo: Annotated[str, typer.Option("--repo", "-r", help=help_of(PushSettings, "repo"))],
    settings: dict[str, Any] = {},  # noqa: B006 - replaced by the push's settings flags (vitprune.settings)
    json_out: JsonOpt = False,
) -> None:
    """Upload a saved model folder to the Hugging Face Hub with a model card generated from its run.

    Sends the model, not the disk: config.json, model.safetensors, report.json, train_log.jsonl, model.onnx, the
    images the card shows and the card (README.md, regenerated from config.json and report.json so that it names
    the repo); anything else only with --include. Files that lead outside the folder are refused. The token comes
    from HF_TOKEN or `hf auth login`; it is never printed. The local folder is not changed.
    """
    from ..hub.push import push as do_push  # deferred: CLI startup

    if settings["dry_run"]:
        result = do_push(folder, repo, **settings)
    else:
        with step(f"uploading {folder} to {repo}"):
            result = do_push(folder, repo, **settings)
    if json_out:
        print_json(result.to_dict())
        return
    verb = "Would upload" if result.dry_run else "Uploaded"
    table = Table(title=f"{verb} to {escape(result.repo_id)} ({'private' if result.private else 'public'}, "
                  f"branch {escape(result.revision)})", title_justify="left")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("")
    why = {"generated": "generated model card", "included": "--include"}
    for f in result.files:
        table.add_row(escape(f.path), _size(f.size), why.get(f.source, ""))
    table.add_row(f"{len(result.files)} files", _size(result.total_bytes), "", style="bold")
    out.print(table)
    for note in result.notes:
        out.print(f"[dim]· {escape(note)}[/]")
    if result.dry_run:
        out.rule("README.md (model card)")
        out.print(result.card, markup=False, highlight=False)
        out.print(f"Dry run: nothing was sent. Push with: vitprune push {folder} --repo {result.repo_id}",
                  markup=False, highlight=False)
    else:
        out.print(f"Done: {result.url} · load it with vitprune.load(\"hf-hub:{result.repo_id}\")",
                  markup=False, highlight=False)
