"""CLI subcommands: thin argument parsing over library functions."""

import argparse
from pathlib import Path


def add_output(parser: argparse.ArgumentParser, help: str) -> None:
    """--out and --overwrite, the same for every command that writes a folder."""
    parser.add_argument("--out", required=True, type=Path, help=help)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out even when it holds files recall did not write"
    )
