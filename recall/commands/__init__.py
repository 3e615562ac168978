"""CLI subcommands: thin argument parsing over library functions."""
