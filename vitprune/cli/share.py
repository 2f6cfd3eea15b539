"""`vitprune push`, `vitprune visualize` and `vitprune sweep`: parse, call the library, render."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Optional

import typer

from .app import app, not_yet
from .common import (
    BudgetOpt, ExtraOpt, KeepRateOpt, MethodOpt, RegionOpt, ROpt, ThresholdOpt, _parse_value, err, method_options,
    out, print_json, user_errors,
)


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


# ------------------------------------------------------------------------------------------ visualize


def _int_list(text: Optional[str], flag: str) -> Optional[list[int]]:
    if text is None:
        return None
    from ..errors import MethodOptionError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise MethodOptionError(f"{flag} takes block numbers like 3,6,9, got {text!r}.") from None


@app.command()
def visualize(
    model: Annotated[str, typer.Argument(
        help="a compressed model (folder or hf-hub:user/name), or a dense one (timm name, 'demo'...) with --method.")],
    images: Annotated[list[str], typer.Argument(
        help="image files (any format PIL reads), or demo:N for the N-th digit of the bundled demo val split.")],
    output: Annotated[str, typer.Option("--out", "-o", help="PNG file to write.")] = "tokens.png",
    method: MethodOpt = None,
    keep_rate: KeepRateOpt = None,
    r: ROpt = None,
    budget: BudgetOpt = None,
    region_size: RegionOpt = None,
    threshold: ThresholdOpt = None,
    opt: ExtraOpt = None,
    blocks: Annotated[Optional[str], typer.Option(
        help="only these stages (0-based blocks after which tokens changed), e.g. 3,6,9 (default: all).")] = None,
    dpi: Annotated[int, typer.Option(help="resolution (100: 200-pixel panels).")] = 100,
    no_weights: Annotated[bool, typer.Option(
        "--no-weights", help="build the architecture with random weights (download nothing).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the token counts per stage as JSON.")] = False,
) -> None:
    """Draw which tokens each stage keeps: one row per image, the input then one column per stage.

    Pruned patches are greyed out; patches merged into one token (ToMe) share a colour; pooled regions (DGE) are
    coloured by their granularity. Images go through the model's own timm eval transform.
    """
    with errors():
        from ..report.plots import require_matplotlib, visualize as do_visualize

        require_matplotlib()
        opts = method_options(keep_rate, r, budget, region_size, threshold, opt)
        with err.status("running the model with token tracking and drawing…"):
            res = do_visualize(model, images, output, method=method, blocks=_int_list(blocks, "--blocks"), dpi=dpi,
                               pretrained=not no_weights, **opts)
        if json_out:
            print_json({"out": str(res.path), "size": list(res.size), **res.maps.to_dict()})
            return
        maps = res.maps
        P = maps.grid[0] * maps.grid[1]
        out.print(f"Wrote {res.path} ({res.size[0]}×{res.size[1]} px): {len(maps.labels)} image(s) × "
                  f"{len(maps.stages)} stage(s) of {maps.model} · {maps.method}", highlight=False)
        for s in maps.stages:
            kept = [maps.kept(s, i) for i in range(len(maps.labels))]
            shown = ", ".join(map(str, kept))
            out.print(f"  after block {s.block}: {shown} of {P} patch tokens", highlight=False)
        if not maps.stages:
            out.print("  (the method changed no tokens for these images)", highlight=False)


@app.command()
def sweep() -> None:
    """Accuracy/GMACs/throughput over several settings, with a Pareto plot."""
    not_yet("sweep", "it lands with issue #7")
