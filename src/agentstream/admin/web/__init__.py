"""The web console, ``agentstream web``: pages and actions on ``agentstream.admin``.

Needs the ``web`` extra (Starlette, uvicorn, Jinja2, python-multipart); htmx is
vendored in ``static/`` (no CDN, no build step).
"""
