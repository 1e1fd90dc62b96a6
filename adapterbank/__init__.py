"""adapterbank: one frozen base model, a growing bank of small per-task modules, task-agnostic inference."""

__version__ = "0.1.0"

from .bank import AdapterBank, Prediction, TaskInfo  # noqa: E402
from .data import Dataset, dataset_from_pairs, load_dataset  # noqa: E402
from .errors import AdapterBankError  # noqa: E402

__all__ = ["AdapterBank", "AdapterBankError", "Dataset", "Prediction", "TaskInfo", "__version__",
           "dataset_from_pairs", "load_dataset"]
