"""`vitprune methods [NAME]`: the methods one line each, or one method's options as the flags the commands take.

Read from the CLI's catalog (``catalog.py``): nothing is imported, so the answer is immediate. Plain text wrapped
to the terminal's width (at most 100 columns), so that it reads the same at 80 columns and in a log file.
"""
from __future__ import annotations

import shutil
import textwrap
from typing import Annotated, Any, Optional

import typer

from . import catalog
from .common import JsonOpt, out, print_json


def methods(
    name: Annotated[Optional[str], typer.Argument(
        metavar="NAME", help="one method: its paper, options (as flags, with defaults) and notes.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the token methods (one line each), or one method's options as flags with defaults and notes."""
    info = catalog.methods() if name is None else [catalog.find_method(name)]
    if json_out:
        print_json(info)
        return
    width = max(40, min(shutil.get_terminal_size((80, 24)).columns, 100))
    lines = overview(info) if name is None else details(info[0], width)
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def _value(v: Any) -> str:
    """A default as it is typed on the command line."""
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return {True: "true", False: "false", None: "none"}.get(v, str(v)) if isinstance(v, (bool, type(None))) else str(v)


def option_flags(option: dict) -> str:
    """How the commands take an option: ``--keep-rate``, ``--fuse/--no-fuse``, ``--tome-r (or --r)``."""
    flag = option["flag"]
    if option["type"] == "bool":
        return f"{flag}/--no-{flag[2:]}"
    return flag + "".join(f" (or {a})" for a in option.get("aliases", ()))


def _applies(option: dict, values: dict[str, Any]) -> bool:
    want = option.get("applies_when") or {}
    return all(values.get(k) in (w if isinstance(w, list) else [w]) for k, w in want.items())


def headline(method: dict) -> str:
    """The method's headline options with their defaults, as flags: ``--keep-rate 0.7``, ``--mode adaptive``."""
    values = {o["name"]: o["default"] for o in method["options"]}
    parts = [f"{o['flag']} {_value(o['default'])}" for o in method["options"]
             if o["headline"] and _applies(o, values)]
    return ", ".join(parts)


def citation(paper: str) -> str:
    """``Liang et al. (ICLR 2022, arXiv 2202.07800)`` from the full reference."""
    first = paper.split(",")[0].split()[0]
    venue = paper[paper.rfind("(") + 1:].rstrip(")") if paper.endswith(")") else ""
    return f"{first} et al." + (f" ({venue})" if venue else "")


def overview(info: list[dict]) -> list[str]:
    rows = [("method", "headline option", "paper")]
    rows += [(m["name"], headline(m), citation(m["paper"])) for m in info]
    w0 = max(len(r[0]) for r in rows) + 2
    w1 = max(len(r[1]) for r in rows) + 2
    lines = [f"{a:<{w0}}{b:<{w1}}{c}" for a, b, c in rows]
    lines.append("")
    lines.append("`vitprune methods NAME` shows a method's options, flags, defaults and notes.")
    return lines


def details(m: dict, width: int) -> list[str]:
    """One method: what it does, its paper, each option as ``--flag (accepts; default D): help`` and its notes,
    wrapped to ``width`` columns."""

    def wrap(text: str, first: str = "", rest: str = "") -> list[str]:
        return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                             break_long_words=False, break_on_hyphens=False) or [first.rstrip()]

    training = "fine-tune it with `vitprune compress`" if m["needs_training"] else "works off the shelf"
    lines = wrap(f"{m['name']} ({m['title']}): {m['summary']}; {training}.")
    lines += wrap(f"Paper: {m['paper']}.", "", "  ")
    lines += [""] + wrap("Options, as flags of compress, profile, export, sweep and visualize (the run-time ones "
                         "also of eval):")
    for o in m["options"]:
        roles = []
        if o["runtime"]:
            roles.append("Run-time: changes a saved model.")
        if o.get("sweep_flag"):
            roles.append(f"sweep takes its values as {o['sweep_flag']}.")
        if o.get("applies_when"):
            cond = " and ".join(f"{next((p['flag'] for p in m['options'] if p['name'] == k), k)} is "
                                + (" or ".join(map(_value, v)) if isinstance(v, list) else _value(v))
                                for k, v in o["applies_when"].items())
            roles.append(f"Applies when {cond}.")
        text = f"{option_flags(o)} ({o['accepts']}; default {_value(o['default'])}): {o['help'].rstrip('.')}."
        lines += wrap(" ".join([text, *roles]), "  ", "      ")
    if m["notes"]:
        lines += ["", "Notes:"]
        for note in m["notes"]:
            lines += wrap(note, "  * ", "    ")
    return lines
