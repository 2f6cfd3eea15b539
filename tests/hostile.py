"""Small real payloads shared by the tests of hostile or broken environments."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

#: ``python -c BLOCK_EXTRA MODULE ARGS...``: runs ``vitprune ARGS...`` in a process where importing MODULE (an
#: optional extra) fails as if it were not installed: ``import MODULE`` (and of its submodules) raises
#: ModuleNotFoundError, and ``importlib.util.find_spec(MODULE)`` answers None, as torch's own probes of installed
#: packages (``torch._dynamo``) expect of a missing one (a None entry in ``sys.modules``)
BLOCK_EXTRA = """
import sys
blocked = sys.argv.pop(1)
sys.modules[blocked] = None
sys.argv = ["vitprune"] + sys.argv[1:]
from vitprune.cli.main import main
main()
"""


class WritesAMarker:
    """Unpickling this runs a shell command that creates ``marker`` (what an attacker's weights or checkpoint file
    would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)
