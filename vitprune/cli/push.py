"""`vitprune push`: upload a saved folder to the Hugging Face Hub with a model card generated from its run."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from .common import JsonOpt, out, print_json, step


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def push(
    folder: Annotated[str, typer.Argument(help="a folder saved by vitprune (e.g. the output of `vitprune compress`).")],
    repo: Annotated[str, typer.Option("--repo", "-r", help="Hub repo to upload to, as user/name (created if needed).")],
    private: Annotated[bool, typer.Option("--private", help="create the repo as private.")] = False,
    revision: Annotated[Optional[str], typer.Option(
        help="branch to push to (created from main if missing; default main).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="list the files and print the model card that would go; send nothing.")] = False,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="commit message.")] = None,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", help="also send files matching this glob, relative to the folder (repeatable), e.g. teacher, "
        "'samples/*.png'; still only files inside the folder.")] = None,
    include_onnx: Annotated[bool, typer.Option(
        "--include-onnx", help="upload model.onnx too, exported into the folder first when missing (`vitprune "
                               "export`; needs vitprune\\[export]).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Upload a saved model folder to the Hugging Face Hub with a model card generated from its run.

    Sends the model, not the disk: config.json, model.safetensors, report.json, train_log.jsonl, model.onnx, the
    images the card shows and the card (README.md, regenerated from config.json and report.json so that it names
    the repo); anything else only with --include. Files that lead outside the folder are refused. The token comes
    from HF_TOKEN or `hf auth login`; it is never printed. The local folder is not changed.
    """
    from ..hub.push import push as do_push  # deferred: CLI startup

    kwargs = dict(private=private, revision=revision, commit_message=message, include=include or ())
    if dry_run:
        result = do_push(folder, repo, dry_run=True, include_onnx=include_onnx, **kwargs)
    else:
        with step(f"uploading {folder} to {repo}"):
            result = do_push(folder, repo, include_onnx=include_onnx, **kwargs)
    if json_out:
        print_json(result.to_dict())
        return
    from rich.table import Table

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
