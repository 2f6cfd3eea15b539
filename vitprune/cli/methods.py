"""`vitprune methods`: every registered method with its options as the flags the commands take."""
from __future__ import annotations

from .common import JsonOpt, out, print_json


def methods(json_out: JsonOpt = False) -> None:
    """List the token methods with their options (as flags), defaults and papers."""
    from ..methods import describe_methods
    from ..report.tables import methods_tables

    info = describe_methods()
    if json_out:
        print_json(info)
        return
    for table in methods_tables(info):
        out.print(table)
