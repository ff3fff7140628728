"""The push API for external systems (CRMs, operations, ticketing): ``/api/v1/...``.

``views`` holds the routes, ``requests`` reads their bodies and query strings,
``openapi`` writes the document they are checked against, ``keys`` creates and checks
the API keys. Nothing here imports the browser's views (an import-linter contract).
"""
