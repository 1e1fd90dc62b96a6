"""The kinds registry: what each kind declares, its validated hyper-parameters, configs built from flat
settings, and the one reader of PEFT's LoRA files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from adapterbank import CLMConfig, ClassificationConfig
from adapterbank.errors import AdapterBankError, IntegrityError
from adapterbank.kinds import DEFAULT_KIND, KINDS, build_config, get_kind
from adapterbank.kinds.lora import LoraParams, read_factors


def test_every_kind_declares_what_the_banks_ask_of_it():
    assert DEFAULT_KIND in KINDS and list(KINDS)[0] == DEFAULT_KIND and {"lora", "prompt"} <= set(KINDS)
    for name, kind in KINDS.items():
        assert kind.name == name and kind.summary and kind.peft_type and kind.default_lr > 0
        assert kind.batching in ("upper", "prefix") and set(kind.families) <= {"classifier", "causal"}
        assert kind.params() == kind.Params()  # every hyper-parameter has a default


def test_unknown_kinds_and_kinds_of_another_family_are_refused():
    with pytest.raises(AdapterBankError, match=f"unknown module kind 'adapterfusion'; choose one of: {', '.join(KINDS)}"):
        get_kind("adapterfusion")
    with pytest.raises(AdapterBankError, match="--kind ia3 is not available on causal banks"):
        get_kind("ia3", "causal")


@pytest.mark.parametrize("rank, message", [(0, "rank must be positive"), (float("nan"), "rank must be an integer"),
                                           (2.5, "rank must be an integer"), (-3, "rank must be positive")])
def test_hyper_parameters_are_validated_where_they_are_declared(rank, message):
    with pytest.raises(AdapterBankError, match=message):
        get_kind("lora").params(rank=rank)


def test_configs_are_built_from_flat_settings_and_keep_each_default_once():
    config = build_config(ClassificationConfig, "classifier", {"kind": "lora", "rank": 4, "epochs": 2})
    assert config.params == LoraParams(rank=4) and config.epochs == 2 and config.batch_size == 32
    assert ClassificationConfig().params.rank == LoraParams().rank == 8
    assert build_config(ClassificationConfig, "classifier", {"kind": "prompt"}).params.virtual_tokens == 16
    assert CLMConfig().resolved_lr() == 2e-3 and ClassificationConfig().resolved_lr() == KINDS["lora"].default_lr
    # a deeper module's default learning rate is the kind's over sqrt(depth); a given one is kept
    assert ClassificationConfig(depth=4).resolved_lr() == pytest.approx(KINDS["lora"].default_lr / 2)
    assert ClassificationConfig(depth=4, lr=5e-3).resolved_lr() == 5e-3
    with pytest.raises(AdapterBankError, match="rank is a setting of kind lora, not prompt"):
        build_config(ClassificationConfig, "classifier", {"kind": "prompt", "rank": 4})
    with pytest.raises(AdapterBankError, match="max_steps is not a setting of classification tasks"):
        build_config(ClassificationConfig, "classifier", {"max_steps": 3})
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"lr": 0}, {"batch_size": 0}, {"epochs": -1}):
        with pytest.raises(AdapterBankError, match="must be"):
            build_config(ClassificationConfig, "classifier", bad)
    with pytest.raises(AdapterBankError, match="block_size must be at least 2"):
        CLMConfig(block_size=1)


def _lora_dir(tmp_path, fan_in_fan_out: bool, with_b: bool = True):
    torch.manual_seed(0)
    a, b = torch.randn(2, 5), torch.randn(3, 2)
    tensors = {"base_model.model.h.0.attn.c_attn.lora_A.weight": a}
    if with_b:
        tensors["base_model.model.h.0.attn.c_attn.lora_B.weight"] = b
    directory = tmp_path / f"lora-{fan_in_fan_out}-{with_b}"
    directory.mkdir()
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "fan_in_fan_out": fan_in_fan_out}))
    return directory, a, b


def test_the_lora_reader_scales_and_honours_fan_in_fan_out(tmp_path):
    plain, a, b = _lora_dir(tmp_path, fan_in_fan_out=False)
    factors, _ = read_factors(plain)
    assert list(factors) == ["h.0.attn.c_attn"] and factors["h.0.attn.c_attn"].scale == 2.0
    deltas = get_kind("lora").weight_deltas(plain)
    torch.testing.assert_close(deltas["h.0.attn.c_attn.weight"], (b @ a) * 2.0)
    conv, _, _ = _lora_dir(tmp_path, fan_in_fan_out=True)  # GPT-2's Conv1D stores weights as [in, out]
    torch.testing.assert_close(get_kind("lora").weight_deltas(conv)["h.0.attn.c_attn.weight"], ((b @ a) * 2.0).T)
    broken, _, _ = _lora_dir(tmp_path, fan_in_fan_out=False, with_b=False)
    with pytest.raises(IntegrityError, match="adapter_model.safetensors: .*lora_A.weight has no matching lora_B"):
        read_factors(broken)
