"""``python -m agentstream``: the operator command line."""

from __future__ import annotations

from agentstream.cli import main

main()
