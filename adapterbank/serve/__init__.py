"""The HTTP server: `adapterbank serve` (app.py), batching across requests (batching.py), request schemas."""
