"""Where the project's files live.

`data/` sits next to the package in the repository (the course installs it editable).
`LAZYMOE_DATA` overrides it, `LAZYMOE_HOME` says where per-learner state goes.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder holding catalogs, quiz banks, the bundled model and results."""
    return Path(os.environ.get("LAZYMOE_DATA", REPO_ROOT / "data"))


def bundled_model_dir() -> Path:
    """The bundled tiny MoE model, in the Hugging Face layout."""
    return data_dir() / "models" / "tiny-moe"


def home_dir() -> Path:
    """Per-learner state (quiz progress, measured bandwidths); created on demand."""
    path = Path(os.environ.get("LAZYMOE_HOME", Path.home() / ".lazymoe"))
    path.mkdir(parents=True, exist_ok=True)
    return path
