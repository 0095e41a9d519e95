"""The ``agentstream`` operator command: stats, dead letters, publish and tail.

``agentstream._entry:admin`` (the ``agentstream`` console script and
``python -m agentstream``) calls :func:`run_admin`.
"""

from __future__ import annotations

from agentstream.admin._main import run_admin

__all__ = ["run_admin"]
