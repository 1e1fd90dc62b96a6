"""Errors a user can act on. Each carries a one-line message naming the file, line or field at fault.

The CLI prints these as `error: <message>` and exits non-zero; anything else escaping is a bug.
"""


class AdapterBankError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class DataError(AdapterBankError):
    """A dataset file is missing, empty, malformed or lacks a required field."""


class BankError(AdapterBankError):
    """The bank directory is missing, not a bank, or inconsistent."""


class TaskExistsError(BankError):
    """A task with that name is already in the bank."""


class TaskNotFoundError(BankError):
    """No task with that name is in the bank."""


class InvalidNameError(AdapterBankError):
    """A task name that is not safe to use as a directory name."""


class ModelNotFoundError(AdapterBankError):
    """The base model could not be resolved or loaded."""


class StorageError(BankError):
    """The file system refused a write or a read (disk full, read-only, permissions, path gone); the bank
    is left as it was before the operation."""


class IntegrityError(BankError):
    """A bank file does not match its recorded checksum: edited, truncated, swapped or damaged."""


class BaseMismatchError(BankError):
    """The base model offered does not match the one the bank was built on."""


class UnsupportedOperationError(AdapterBankError, AttributeError):
    """An operation of the other bank family (`predict` on a causal-LM bank, `generate` on a classification
    bank). Also an AttributeError, so `hasattr(bank, "predict")` tells which operations a bank has."""


class AdapterBankWarning(UserWarning):
    """Something the user should know that does not stop the operation (a damaged task skipped, a derived
    file not saved). The CLI prints these as one `warning: ...` line."""
