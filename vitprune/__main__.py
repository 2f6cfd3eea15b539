"""``python -m vitprune`` (and ``torchrun --nproc_per_node N -m vitprune compress ...``) runs the CLI."""
from .cli.main import main

if __name__ == "__main__":
    main()
