"""How pipeline steps report progress: a callable that takes one line (`print` by default).

Every stage takes a `log: Log = print` so tests can collect the lines and
`invoke` shows them as they come.
"""

from __future__ import annotations

from typing import Callable

Log = Callable[[str], None]
