"""Small real payloads shared by the tests of hostile or broken environments."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

#: ``python -c BLOCK_EXTRA MODULE ARGS...``: runs ``vitprune ARGS...`` in a process where importing MODULE (an
#: optional extra) fails as if it were not installed
BLOCK_EXTRA = """
import sys
blocked = sys.argv.pop(1)
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == blocked or name.startswith(blocked + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
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
