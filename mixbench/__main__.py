"""``python -m mixbench``: the command line (torchrun starts workers this way)."""

from mixbench.cli import main

if __name__ == "__main__":
    main()
