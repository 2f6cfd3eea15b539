"""The ``vitprune`` command. Each command module parses flags, calls the library and renders the result."""
from __future__ import annotations

from . import train, measure, export, share  # noqa: F401, I001  (each registers its commands, in this order)
from .app import app


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
