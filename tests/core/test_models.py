import pytest
import torch

from adapterbank.errors import AdapterBankError
from adapterbank.core.models import DEFAULT_BASE, canonical_base_id, fingerprint_model, load_base, resolve_device


def test_device_auto_and_explicit():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(AdapterBankError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(AdapterBankError, match="CUDA is not available"):
            resolve_device("cuda")


def test_packaged_aliases_and_local_paths_are_canonical(tmp_path):
    assert canonical_base_id("minilm") == DEFAULT_BASE
    assert canonical_base_id("all-MiniLM-L6-v2") == DEFAULT_BASE
    assert canonical_base_id(str(tmp_path)) == str(tmp_path.resolve())
    assert canonical_base_id("org/model") == "org/model"


def test_fingerprint_is_stable_and_sees_any_weight_change(tiny_base):
    base = load_base(tiny_base)
    assert base.fingerprint == load_base(tiny_base).fingerprint
    assert not any(p.requires_grad for p in base.model.parameters()) and not base.model.training
    with torch.no_grad():
        next(base.model.parameters()).view(-1)[0] += 1e-3
    assert fingerprint_model(base.model) != base.fingerprint


def test_pickle_weights_are_refused_with_how_to_convert(tmp_path, tiny_base):
    import shutil

    from adapterbank.errors import ModelNotFoundError
    from adapterbank.core.models import load_base

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_base, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")  # a .bin is never opened, whatever it holds
    with pytest.raises(ModelNotFoundError, match=r"only pickle weights \(pytorch_model.bin\).*safe_serialization=True"):
        load_base(str(pickled))
