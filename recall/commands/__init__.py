"""CLI subcommands: thin argument parsing over library functions."""

import argparse
from pathlib import Path


def add_output(parser: argparse.ArgumentParser, help: str) -> None:
    """--out and --overwrite, the same for every command that writes a folder."""
    parser.add_argument("--out", required=True, type=Path, help=help)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out even when it holds files recall did not write"
    )


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    """The opt-in to code shipped in a model folder (config.json's `auto_map`), for every command that loads
    models; the command passes it to `recall.models.allow_remote_code` before anything is loaded."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped in model folders (config.json's auto_map); only for folders you trust",
    )
