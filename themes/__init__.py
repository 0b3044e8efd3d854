"""The workbench's built-in colour themes (`*.yaml`) and stylesheet (`workbench.tcss`)."""

from pathlib import Path

FOLDER = Path(__file__).parent
STYLESHEET = FOLDER / "workbench.tcss"
