"""The server's bounds, defined once (the CLI reads them without importing FastAPI)."""

DEFAULT_MAX_BODY = 1 << 20  # bytes in one request body
DEFAULT_TOKEN_LIMIT = 1024  # the most max_tokens a request may ask for
MAX_KEY_FILE_BYTES = 4096
