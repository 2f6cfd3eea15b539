"""`vitprune eval`: top-1, top-5 and loss of a model on a dataset split, with run-time method options."""
from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ._options import method_options
from .common import AllowLargeOpt, DeviceOpt, JsonOpt, err, out, print_json, step


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


@method_options(runtime_only=True)
def eval_(
    model: Annotated[str, typer.Argument(
        help="a folder saved by vitprune, hf-hub:org/repo, a timm name, or 'demo'.")],
    data: Annotated[str, typer.Option(
        "--data", "-d", show_default=False, help="'demo' (the default: the bundled handwritten digits, as "
        "`vitprune compress demo` trains on them), an ImageFolder-style folder, a save_to_disk folder, a folder of "
        "webdataset shards, or hf:org/name.")] = "demo",
    streaming: Annotated[bool, typer.Option("--streaming", help="read an hf:org/name dataset as a stream.")] = False,
    split: Annotated[Split, typer.Option(
        help="train, val or test (the held-out split that compress never reads: demo's test digits, a test/ "
        "folder, an hf 'test' split).")] = Split.val,
    val_split: Annotated[Optional[float], typer.Option(
        help="for one folder / one split: the held-out fraction (default 0.1, seed 0, as compress).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    device: DeviceOpt = None,
    dtype: Annotated[Optional[str], typer.Option(help="fp32, bf16 or fp16 (default fp32 on CPU, fp16 on GPU).")]
        = None,
    workers: Annotated[int, typer.Option(min=0)] = 0,
    json_out: JsonOpt = False,
    allow_large: AllowLargeOpt = False,
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the run-time method flags (see _options)
) -> None:
    """Top-1/top-5 and loss of a model or saved folder on a dataset split.

    The run-time method options of a compressed model (e.g. --keep-rate, or --mode dense on SaiT) apply to this
    evaluation only.
    """
    import logging

    from ..errors import MethodOptionError
    from ..hub import load_model
    from ..methods import get_method
    from ..train.evaluate import evaluate

    logging.getLogger("vitprune").addHandler(logging.NullHandler())  # one summary warning below
    net = load_model(model)
    m = get_method(net)
    if method_options:
        if m is None:
            raise MethodOptionError(f"{model} is a dense model; method options apply to compressed models.")
        m.set_runtime(**method_options)

    def run():
        return evaluate(net, data, split=split.value, batch_size=batch_size, device=device, dtype=dtype,
                        workers=workers, val_split=val_split, streaming=streaming)

    if json_out:
        res = run()
    else:
        with step(f"evaluating {model} on {data} ({split.value})"):
            res = run()
    info = {"model": model, "data": data, "split": split.value, **res.to_dict(),
            "method": m.name if m else None, "options": m.options_dict() if m else {},
            "device": str(next(net.parameters()).device), "batch_size": batch_size}
    if json_out:
        print_json(info)
        return
    from rich.table import Table

    title = f"{model} · {m.describe() if m else 'dense model'} · {data} {split.value}"
    table = Table(title=escape(title), title_justify="left")
    for col in ("top-1 (%)", "top-5 (%)", "loss", "images"):
        table.add_column(col, justify="right")
    table.add_row(f"{res.top1:.2f}", f"{res.top5:.2f}", f"{res.loss:.4f}", f"{res.images:,}")
    out.print(table)
    if res.skipped:
        err.print(f"[yellow]warning:[/] {res.skipped} unreadable image(s) skipped "
                  f"(e.g. {escape(str(res.skipped_files[0]))}).", highlight=False)
