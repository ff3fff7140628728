"""``python -m example_app``: create the database, seed it, and serve the shop."""

from __future__ import annotations

import os

from . import create_app, db
from .models import seed


def main() -> None:
    """Run the demo on embedded defaults (SQLite file, embedded Redis)."""
    app = create_app()
    with app.app_context():
        db.create_all()
        seed()
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    print(f"Example shop on http://{host}:{port}/  (accounts are listed on the login page)")
    app.run(host=host, port=port, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
