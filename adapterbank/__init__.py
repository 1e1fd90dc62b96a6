"""adapterbank: one frozen base model, a growing bank of small per-task modules, task-agnostic inference."""

from .version import __version__  # noqa: E402

from .bank import AdapterBank, TaskInfo  # noqa: E402
from .classify.bank import ClassifierBank, Prediction  # noqa: E402  (registers the classification family)
from .causal.bank import CausalBank, Generation  # noqa: E402  (registers the causal-LM family)
from .classify.config import ClassificationConfig  # noqa: E402
from .causal.config import CLMConfig, GenerationSettings, SFTConfig  # noqa: E402
from .classify.exported import load_classifier  # noqa: E402
from .data import Dataset, dataset_from_pairs, load_dataset  # noqa: E402
from .errors import AdapterBankError, AdapterBankWarning  # noqa: E402
from .store import VerifyReport, verify_bank  # noqa: E402

__all__ = ["AdapterBank", "AdapterBankError", "AdapterBankWarning", "CLMConfig", "CausalBank", "GenerationSettings", "SFTConfig", "ClassificationConfig", "ClassifierBank",
           "Dataset", "Generation", "Prediction", "TaskInfo", "VerifyReport", "__version__", "dataset_from_pairs",
           "load_classifier", "load_dataset", "verify_bank"]
