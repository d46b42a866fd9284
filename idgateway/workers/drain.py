"""How long a worker drains on SIGTERM: the master's and the workers' default.

Its own module so that the master, which passes it on, need not import the
worker (and the whole data path behind it).
"""

from __future__ import annotations

# Seconds a worker gives in-flight requests after SIGTERM before it cuts them.
DRAIN_TIMEOUT = 30.0
