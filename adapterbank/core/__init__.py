"""The frozen model side: loading bases and checkpoints (models.py), tokenizing and batching
(encoding.py), the split backbone (backbone.py) and the one training loop (loop.py)."""

DEFAULT_MAX_LENGTH = 128  # tokens per text; longer texts are truncated
