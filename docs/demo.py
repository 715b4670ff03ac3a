"""The walk-through `make demo` runs on the embedded defaults (grows with each capability)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUSTODES = [sys.executable, "-m", "protos.cli"]


def main() -> int:
    """Run each demo step, printing what it shows; stop at the first failure."""
    print("Custodes demo: nothing to show yet beyond the CLI.")
    return subprocess.call([*CUSTODES, "--help"], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
