from __future__ import annotations

from bridge.logs import configure_logging

# The service's own log lines are not what tests look at; keep only warnings and errors.
configure_logging("console", "warning")
