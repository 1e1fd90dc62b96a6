"""What an adapter kind is, and the registry of kinds.

A kind is one module of this package with one `Kind` subclass, registered with `@register`. It
declares its hyper-parameters (a dataclass of `settings.setting` fields), its default learning rate,
the bank families it serves, how it is batched and whether it folds into base weights, and it
implements the few operations those declarations promise. Banks, the CLI and the evaluation only ask
the registry; nothing outside this package names a kind.

Two ways a kind serves a mixed batch (rows of one batch using different tasks' modules); the
classification bank's inference implements each once:
- `upper`: the module changes linear layers of the top transformer layers; each row's change is added
  by forward hooks on those layers, so one pass serves the whole batch. Training reuses the frozen
  lower layers' states, computed once.
- `prefix`: the module is a sequence of vectors before the input; a full pass with each row's own prefix.

Importing this package is cheap (PEFT and torch are imported by the methods that need them), so the
CLI can build its choices from the registry without loading a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import AdapterBankError
from ..settings import check

if TYPE_CHECKING:
    import torch

KINDS: dict[str, "Kind"] = {}
DEFAULT_KIND = "lora"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A kind without hyper-parameters of its own."""


class Kind:
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help
    peft_type: ClassVar[str]  # adapter_config.json's peft_type
    Params: ClassVar[type] = NoParams
    default_lr: ClassVar[float]
    families: ClassVar[tuple[str, ...]] = ("classifier",)  # bank families that can train and serve it
    batching: ClassVar[str] = "upper"  # "upper" or "prefix" (module docstring)
    merges_into_weights: ClassVar[bool] = True  # PEFT's merge_and_unload folds it into the base (export)
    dense_deltas: ClassVar[bool] = False  # its update is a weight change independent of the base: merge methods apply

    def params(self, **values: Any) -> Any:
        """The kind's hyper-parameters: defaults, overridden by `values`, validated."""
        known = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AdapterBankError(f"{unknown[0]} is not a setting of kind {self.name!r} "
                                   f"(its settings: {', '.join(sorted(known)) or 'none'})")
        return check(self.Params(**values))

    # -- training ---------------------------------------------------------------------------------
    def peft_config(self, model, params: Any, layers: list[int] | None = None, causal: bool = False):
        """The PEFT config to train with: on `layers` only (the upper layers of a split encoder) when given;
        `causal`: a causal-LM module (PEFT task type CAUSAL_LM)."""
        raise NotImplementedError

    def hyperparameters(self, peft_config) -> dict:
        """What task.json records of the trained module's PEFT config."""
        raise NotImplementedError

    def reserved_positions(self, params: Any) -> int:
        """Input positions the module itself occupies (a soft prompt's tokens)."""
        return 0

    # -- inference --------------------------------------------------------------------------------
    def load_updates(self, task_dir: Path, layers: set[int]) -> dict[str, Any]:
        """`upper` kinds: {linear module path: tensors} the module changes, all within `layers`."""
        raise NotImplementedError

    def row_update(self, tensors: Any, linear: "torch.nn.Linear", x: "torch.Tensor", out: "torch.Tensor",
                   rows: "torch.Tensor") -> "torch.Tensor":
        """`upper` kinds: what the module adds to `linear`'s output for its rows: `x` holds their inputs,
        `out[rows]` the base's outputs (`out` is the whole batch's, indexed only by kinds that need it)."""
        raise NotImplementedError

    def load_prefix(self, task_dir: Path) -> "torch.Tensor":
        """`prefix` kinds: the [positions, hidden] vectors put before every input."""
        raise NotImplementedError

    def weight_deltas(self, task_dir: Path) -> dict[str, "torch.Tensor"]:
        """`dense_deltas` kinds: {base parameter name: dense update}, what merge methods combine."""
        raise NotImplementedError


def register(cls: type[Kind]) -> type[Kind]:
    KINDS[cls.name] = cls()
    return cls


def get_kind(name: str, family: str | None = None) -> Kind:
    """The registered kind `name`, checked to be available on `family` banks when given."""
    if name not in KINDS:
        raise AdapterBankError(f"unknown module kind {name!r}; choose one of: {', '.join(KINDS)}")
    kind = KINDS[name]
    if family is not None and family not in kind.families:
        available = [k for k, v in KINDS.items() if family in v.families]
        raise AdapterBankError(f"--kind {name} is not available on {family} banks (choose: {', '.join(available)})")
    return kind


def build_config(config_cls: type, family: str, values: dict[str, Any]) -> Any:
    """A training config (`config_cls`, whose fields include `kind` and `params`) from flat keyword
    settings, as `add_task(..., rank=4)` or the CLI give them: the kind's hyper-parameters go to `params`."""
    values = dict(values)
    kind = get_kind(values.get("kind") or DEFAULT_KIND, family)
    params = {key: values.pop(key) for key in list(values) if key in _params(kind)}
    fields = {f.name for f in dataclasses.fields(config_cls)} - {"params"}
    for key in values:
        if key not in fields:
            owners = [k.name for k in KINDS.values() if key in _params(k)]
            if owners:
                raise AdapterBankError(f"{key} is a setting of kind {' / '.join(owners)}, not {kind.name}")
            raise AdapterBankError(f"{key} is not a setting of {config_cls.objective} tasks "
                                   f"(settings: {', '.join(sorted(fields | _params(kind)))})")
    return config_cls(**{**values, "kind": kind.name}, params=kind.params(**params))


def _params(kind: Kind) -> set[str]:
    return {f.name for f in dataclasses.fields(kind.Params)}


def resolve_params(kind: Kind, params: Any) -> Any:
    """A config's `params` as the kind's dataclass: given as one, as a dict (read back from task.json), or None (defaults)."""
    if params is None:
        return kind.params()
    if isinstance(params, dict):
        return kind.params(**params)
    if not isinstance(params, kind.Params):
        raise AdapterBankError(f"params for kind {kind.name!r} must be a {kind.Params.__name__}, got {type(params).__name__}")
    return params


@contextlib.contextmanager
def quiet_peft():
    """PEFT calls a transformers API that transformers has deprecated; keep that noise off users' screens."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def save_module(peft_model, directory: Path) -> None:
    """The trained module in PEFT's own format; PEFT's model card is left out (only JSON and safetensors here)."""
    peft_model.save_pretrained(str(directory))
    (Path(directory) / "README.md").unlink(missing_ok=True)


def write_peft_dir(task_dir: Path, out: Path, base_name: str) -> None:
    """A module as a PEFT directory whose config names the base to load it on (PEFT, vLLM, LoRAX)."""
    shutil.copyfile(task_dir / PEFT_FILES[1], out / PEFT_FILES[1])
    config = json.loads((task_dir / PEFT_FILES[0]).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_name
    (out / PEFT_FILES[0]).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def merged_model(base_model, task_dir: Path):
    """A copy of `base_model` with the module at `task_dir` folded into its weights (PEFT's merge_and_unload)."""
    import copy

    from peft import PeftModel

    with quiet_peft():
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(task_dir))
    return peft_model.merge_and_unload()
