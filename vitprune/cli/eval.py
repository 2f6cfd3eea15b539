"""`vitprune eval`: top-1, top-5 and loss of a model on a dataset split, with run-time method options; for a
model without a classifier, the cosine agreement of its embeddings with the dense model's."""
from __future__ import annotations

import logging
from enum import Enum
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

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
    reference: Annotated[Optional[str], typer.Option(
        help="a model without a classifier: the model whose embeddings the cosine agreement compares to (e.g. "
        "the original tower; default: the same weights without the method).")] = None,
    json_out: JsonOpt = False,
    allow_large: AllowLargeOpt = False,
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the run-time method flags (see _options)
) -> None:
    """Top-1/top-5 and loss of a model or saved folder on a dataset split.

    The run-time method options of a compressed model (e.g. --keep-rate, or --mode dense on SaiT) apply to this
    evaluation only. A model without a classifier (no head, or an embedding head such as a CLIP tower's
    projection) is scored without labels: the mean cosine similarity of its embeddings to the dense model's on
    the same images (1.0 for a dense model).
    """
    from ..measure.speed import resolve_device  # deferred: CLI startup

    resolve_device(device)  # a device this machine cannot use is refused before a model is loaded (or downloaded)
    from ..errors import MethodOptionError  # deferred: CLI startup
    from ..hub import load_model  # deferred: CLI startup
    from ..methods import get_method  # deferred: CLI startup
    from ..train.evaluate import evaluate  # deferred: CLI startup

    logging.getLogger("vitprune").addHandler(logging.NullHandler())  # one summary warning below
    from ..train.losses import feature_output  # deferred: CLI startup

    net = load_model(model)
    m = get_method(net)
    if reference is not None and not feature_output(net):
        raise MethodOptionError("--reference compares embeddings: it applies to a model without a classifier.")
    ref_net = load_model(reference) if reference is not None else None
    if method_options:
        if m is None:
            raise MethodOptionError(f"{model} is a dense model; method options apply to compressed models.")
        m.set_runtime(**method_options)

    def run():
        return evaluate(net, data, split=split.value, batch_size=batch_size, device=device, dtype=dtype,
                        workers=workers, val_split=val_split, streaming=streaming, reference=ref_net)

    if json_out:
        res = run()
    else:
        with step(f"evaluating {model} on {data} ({split.value})"):
            res = run()
    ref_name = None
    if res.cosine is not None:
        ref_name = reference if reference is not None else "dense copy" if m is not None else "itself"
    scores = res.to_dict()
    if res.cosine is None:  # a classifier: top-1/top-5/loss only
        scores.pop("cosine")
    else:
        scores["reference"] = ref_name
    info = {"model": model, "data": data, "split": split.value, **scores,
            "method": m.name if m else None, "options": m.options_dict() if m else {},
            "device": str(next(net.parameters()).device), "batch_size": batch_size}
    if json_out:
        print_json(info)
        return
    title = f"{model} · {m.describe() if m else 'dense model'} · {data} {split.value}"
    table = Table(title=escape(title), title_justify="left")
    if res.cosine is not None:  # no classifier: the agreement with the dense model
        for col in (f"cosine to {'the dense copy' if ref_name == 'dense copy' else ref_name}", "images"):
            table.add_column(escape(col), justify="right")
        table.add_row(f"{res.cosine:.4f}", f"{res.images:,}")
    else:
        for col in ("top-1 (%)", "top-5 (%)", "loss", "images"):
            table.add_column(col, justify="right")
        table.add_row(f"{res.top1:.2f}", f"{res.top5:.2f}", f"{res.loss:.4f}", f"{res.images:,}")
    out.print(table)
    if res.skipped:
        err.print(f"[yellow]warning:[/] {res.skipped} unreadable image(s) skipped "
                  f"(e.g. {escape(str(res.skipped_files[0]))}).", highlight=False)
