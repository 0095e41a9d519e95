"""``python -m agentstream``: the operator command line."""

from __future__ import annotations

from agentstream._entry import admin

admin()
