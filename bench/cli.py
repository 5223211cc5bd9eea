"""How long `aipt` takes to start: `aipt --help` and `aipt status --help` beside `python -c "import typer"`
and a one-command typer app's `--help`, in the same run.

Each command is a fresh process (what an operator waits for). The runs alternate (one of each in
turn), so a host that speeds up or slows down mid-run moves every column alike; wall time is the median,
CPU time (user + system of the child) its median too. Ratios are against `import typer` (the issue's
yardstick) and against a bare two-command typer app printing the same plain help (what typer itself
costs to parse a command line and print a subcommand's help: the floor for any typer CLI).

    python bench/cli.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE_APP = '''
import os
os.environ.setdefault("TYPER_USE_RICH", "0")  # plain help, as aipt prints it
import typer
app = typer.Typer()

@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="One JSON object.")) -> None:
    """Say how things are."""

@app.command()
def other() -> None:
    """Another command, so that status is a subcommand as in aipt."""

app()
'''


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds of one run of argv (CPU: this child's user + system time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (default 30)")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("TYPER_")}
    py = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        bare = Path(folder) / "bare.py"
        bare.write_text(BARE_APP)
        commands = {
            'python -c "import typer"': [py, "-c", "import typer"],
            "bare typer app: status --help": [py, str(bare), "status", "--help"],
            "aipt --help": [py, "-m", "aipt", "--help"],
            "aipt status --help": [py, "-m", "aipt", "status", "--help"],
        }
        for argv in commands.values():  # warm the page cache and .pyc files
            timed(argv, env)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                samples[name].append(timed(argv, env))

    wall = {name: statistics.median(w for w, _ in runs) for name, runs in samples.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in samples.items()}
    typer_only, floor = wall['python -c "import typer"'], wall["bare typer app: status --help"]
    print(f"{args.runs} runs each, alternating; python {sys.version.split()[0]}")
    print(f"{'command':34} {'wall ms':>8} {'cpu ms':>7} {'x import typer':>15} {'x bare app':>11}")
    for name in commands:
        print(
            f"{name:34} {wall[name] * 1000:8.1f} {cpu[name] * 1000:7.1f} {wall[name] / typer_only:15.2f} "
            f"{wall[name] / floor:11.2f}"
        )


if __name__ == "__main__":
    main()
