"""The bank on disk: bank.json, task directories, base versions, atomic writes, the writers' lock and
checksums. Standard library (and filelock) only: nothing here imports torch, so commands that only read
or list a bank start fast. A test checks it."""

from .verify import VerifyReport, verify_bank

__all__ = ["VerifyReport", "verify_bank"]
