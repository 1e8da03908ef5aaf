"""Project tasks: `invoke --list` is the menu, `invoke --help TASK` the manual.

Tasks only parse flags and call into tested modules (`src/pdp_pipeline`,
`src/power_device_plugin`); no logic lives here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Context, task

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))

# --- plugin tasks (protos) ---------------------------------------------------

# --- host tasks (setup) ------------------------------------------------------

# --- image tasks (build, verify) ---------------------------------------------

# --- manifest tasks ----------------------------------------------------------

# --- release tasks -----------------------------------------------------------

# --- quality tasks (lint, test) ----------------------------------------------
