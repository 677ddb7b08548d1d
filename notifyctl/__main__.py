from __future__ import annotations

from .cli import main

if __name__ == "__main__":  # not when a spawned worker imports the main module again
    raise SystemExit(main())
