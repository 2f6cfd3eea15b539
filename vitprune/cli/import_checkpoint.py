"""`vitprune import-checkpoint`: a checkpoint released by a method's authors as a vitprune model folder."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ._options import method_options
from .catalog import check_method
from .common import AllowLargeOpt, out


@method_options()
def import_checkpoint(
    file: Annotated[str, typer.Argument(help="official checkpoint (.pth with a 'model' entry, or .safetensors).")],
    method: Annotated[str, typer.Option("--method", "-m", callback=check_method,
                                        help="dynamicvit, evit, evovit or tome.")],
    output: Annotated[str, typer.Option("--output", "-o", help="folder to save the vitprune model in.")],
    base: Annotated[str, typer.Option(help="timm architecture the checkpoint was trained from.")] =
        "deit_small_patch16_224",
    key: Annotated[Optional[str], typer.Option(help="entry holding the weights (default: model, state_dict...).")]
        = None,
    allow_large: AllowLargeOpt = False,
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the method flags (see _options)
) -> None:
    """Turn a checkpoint released by a method's authors into a vitprune model folder."""
    from ..hub import save  # deferred: CLI startup
    from ..hub.convert import import_checkpoint as do_import  # deferred: CLI startup
    from ..hub.lock import output_lock  # deferred: CLI startup
    from ..hub.save import check_overwritable  # deferred: CLI startup

    check_overwritable(output)  # reads only: someone else's config.json or README.md is refused first
    model = do_import(file, base, method, key=key, **method_options)  # a refused checkpoint leaves no folder
    with output_lock(output, "import-checkpoint"):  # refused at once when another run writes there
        check_overwritable(output)  # again, now that no other process can change the folder
        folder = save(model, output, base_model=base)
    out.print(f"Imported {escape(file)} as {escape(model.vitprune_method.describe())} on {escape(base)} → "
              f"{escape(str(folder))}", highlight=False)
