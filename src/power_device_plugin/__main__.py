"""`python -m power_device_plugin` is the `power-device-plugin` command."""

from __future__ import annotations

import sys

from power_device_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main())
