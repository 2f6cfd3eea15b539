"""`vitprune visualize`: which tokens each stage keeps, drawn over the images."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from ._options import method_options
from .common import AllowLargeOpt, MethodOpt, NoWeightsOpt, print_json, step
from .common import out as console


def _int_list(text: Optional[str], name: str) -> Optional[list[int]]:
    if text is None:
        return None
    from ..errors import UsageError  # deferred: CLI startup

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"`{name}` takes block numbers like 3,6,9, got {text!r}.") from None


@method_options()
def visualize(
    model: Annotated[str, typer.Argument(
        help="a compressed model (folder or hf-hub:user/name), or a dense one (timm name, 'demo'...) with --method.")],
    images: Annotated[list[str], typer.Argument(
        help="image files (any format PIL reads), or demo:N for the N-th digit of the bundled demo val split.")],
    out: Annotated[str, typer.Option("--out", "-o", help="PNG file to write.")] = "tokens.png",
    method: MethodOpt = None,
    blocks: Annotated[Optional[str], typer.Option(
        help="only these stages (0-based blocks after which tokens changed), e.g. 3,6,9 (default: all).")] = None,
    dpi: Annotated[int, typer.Option(help="resolution (100: 200-pixel panels).")] = 100,
    no_weights: NoWeightsOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the token counts per stage as JSON.")] = False,
    allow_large: AllowLargeOpt = False,
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the method flags (see _options)
) -> None:
    """Draw which tokens each stage keeps: one row per image, the input then one column per stage.

    Pruned patches are covered in hatched red; patches merged into one token (ToMe) share a colour; pooled regions (DGE) are
    coloured by their granularity. Images go through the model's own timm eval transform. A compressed folder's
    run-time options (e.g. --mode fixed on SaiT) can be changed for the picture.
    """
    from ..report.plots import require_matplotlib  # deferred: CLI startup
    from ..tokenmaps import visualize as do_visualize  # deferred: CLI startup

    require_matplotlib()
    with step("running the model with token tracking and drawing"):
        res = do_visualize(model, images, out, method=method, blocks=_int_list(blocks, "blocks"), dpi=dpi,
                           pretrained=not no_weights, **method_options)
    if json_out:
        print_json({"out": str(res.path), "size": list(res.size), **res.maps.to_dict()})
        return
    maps = res.maps
    P = maps.grid[0] * maps.grid[1]
    console.print(f"Wrote {res.path} ({res.size[0]}×{res.size[1]} px): {len(maps.labels)} image(s) × "
              f"{len(maps.stages)} stage(s) of {maps.model} · {maps.method}", markup=False, highlight=False)
    for s in maps.stages:
        kept = [maps.kept(s, i) for i in range(len(maps.labels))]
        shown = ", ".join(map(str, kept))
        console.print(f"  after block {s.block}: {shown} of {P} patch tokens", highlight=False)
    if not maps.stages:
        console.print("  (the method changed no tokens for these images)", highlight=False)
