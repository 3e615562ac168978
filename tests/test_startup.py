"""Start-up: the CLI's usage, `recall tasks` and `recall params check` leave the heavy libraries
unimported; every command the usage lists is the module that registers it."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from recall.cli import COMMANDS, build_parser

HEAVY = ("torch", "transformers", "opencompass", "mlflow", "prefect", "sklearn", "matplotlib")


def imported_heavy(argv: list[str]) -> list[str]:
    """The heavy libraries a fresh interpreter holds after running `recall ARGV`."""
    code = (
        "import json, sys\nfrom recall.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], []),
        (["tasks"], []),
        # the params check reads the merge registry, whose kernels are torch functions
        (["params", "check", str(ROOT / "params.yaml")], ["torch"]),
        (["params", "schema"], []),
        (["params", "schema", "--task"], []),
    ],
)
def test_usage_task_listing_and_params_check_import_no_heavy_library(argv, allowed):
    assert imported_heavy(argv) == allowed


def test_every_listed_command_registers_itself(capsys):
    with pytest.raises(SystemExit) as usage:
        build_parser(["--help"]).parse_args(["--help"])
    assert usage.value.code == 0
    listing = " ".join(capsys.readouterr().out.split())  # as argparse wraps it
    for name, help in COMMANDS.items():
        assert help in listing
        with pytest.raises(SystemExit) as done:
            build_parser([name, "--help"]).parse_args([name, "--help"])
        assert done.value.code == 0 and f"usage: recall {name}" in capsys.readouterr().out
