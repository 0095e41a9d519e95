"""Example agentstream apps and a demo producer (see ``scripts/run-example``)."""
