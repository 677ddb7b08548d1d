"""The idle floor: starting Python and importing what any Typer + SQLAlchemy CLI needs.

The figure compares a whole idle ``notifyctl dispatch`` process with exactly
this process (nothing else, no script file to read)::

    python -c "import typer, sqlalchemy.orm"

Running this file execs that command, so ``python benchmarks/floor_import.py``
shows what the floor is; the runner builds the same command with ``command()``.
"""

from __future__ import annotations

import os
import sys

CODE = "import typer, sqlalchemy.orm"


def command(python: str = sys.executable) -> list[str]:
    return [python, "-c", CODE]


if __name__ == "__main__":
    args = command()
    os.execv(args[0], args)
