"""``python -m vitprune`` (and ``torchrun --nproc_per_node N -m vitprune compress ...``) runs the CLI."""
from .cli.main import app

if __name__ == "__main__":
    app(prog_name="vitprune")
