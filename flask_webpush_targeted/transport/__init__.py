"""Everything that talks to push services: encryption, VAPID, the HTTP client, the guard.

Nothing here imports Flask, SQLAlchemy, RQ or Redis, or any module of the package but
``exceptions`` and ``statuses`` (import-linter contracts in setup.cfg): the sender turns
messages into results, and what a result means for the ledger is decided elsewhere.
"""
