"""Causal-LM banks on a tiny random Llama: domain modules, routed generation, merges into versioned
bases, rollback, export (merged checkpoint and PEFT directory), data errors and crash safety."""

import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from adapterbank import AdapterBank
from adapterbank.errors import AdapterBankError, BaseMismatchError, DataError
from adapterbank.causal.merging import MERGE_METHODS
from adapterbank.causal.training import make_blocks

from conftest import DEVICE, tree_hashes, write_jsonl
from conftest import domain_texts

TRAIN = dict(block_size=32, max_steps=40, lr=1e-2, progress=False)


@pytest.fixture(scope="session")
def trained_bank_template(tmp_path_factory, tiny_llama, tiny_base):
    """A causal bank with modules `alpha` and `beta` trained on v0 (copied per test: tests change banks)."""
    root = tmp_path_factory.mktemp("causal") / "bank"
    bank = AdapterBank.create(root, base=tiny_llama, router_encoder=tiny_base, device=DEVICE)
    for domain in ("alpha", "beta"):
        bank.add_task(domain, domain_texts(domain, 160, seed=0), **TRAIN)
    return root


@pytest.fixture()
def bank(trained_bank_template, tmp_path):
    import shutil

    shutil.copytree(trained_bank_template, tmp_path / "bank")
    return AdapterBank.open(tmp_path / "bank", device=DEVICE)


def module_model(bank, name, version="v0"):
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(bank.base_at(version).model).cpu(), str(bank.task(name).path)).eval()


def ids(bank, text):
    return torch.tensor([bank.base.tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_init_stores_the_base_as_safetensors_and_reopens_without_the_source(tmp_path, tiny_llama, tiny_base):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_llama, source)
    AdapterBank.create(tmp_path / "bank", base=str(source), router_encoder=tiny_base, device=DEVICE)
    shutil.rmtree(source)
    bank = AdapterBank.open(tmp_path / "bank", device=DEVICE)
    assert bank.family == "causal" and bank.current_base_version == "v0"
    files = sorted(p.name for p in (tmp_path / "bank" / "bases" / "v0").iterdir())
    assert "model.safetensors" in files and all(f.endswith((".json", ".safetensors")) for f in files)
    assert [v["version"] for v in bank.base_versions()] == ["v0"]
    assert bank.base.model.config.model_type == "llama"


def test_clm_task_lowers_held_out_perplexity_and_is_a_peft_causal_module(bank):
    info = bank.task("alpha")
    metrics = info.record["metrics"]
    assert metrics["perplexity_after"] < 0.85 * metrics["perplexity_before"]
    assert metrics["held_out_tokens"] > 0 and metrics["train_tokens_per_s"] > 0
    assert info.record["base"]["version"] == "v0" and info.record["objective"] == "clm"
    config = json.loads((info.path / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["peft_type"] == "LORA"
    assert sorted(p.name for p in info.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                            "router.safetensors", "task.json"]


def test_generation_routes_each_prompt_to_its_domain_in_one_mixed_batch(bank):
    prompts = ["abc fed cab", "ghi lkj hig", "bad cafe", "jig kilh"]
    results = bank.generate(prompts, max_new_tokens=6, ood_quantile=0)
    assert [r.task for r in results] == ["alpha", "beta", "alpha", "beta"]
    # the mixed batch gives what each module gives alone
    for prompt, result in zip(prompts, results):
        alone = bank.generate([prompt], max_new_tokens=6, task=result.task)[0]
        assert alone.text == result.text
    forced = bank.generate(prompts[:1], max_new_tokens=6, task="beta")[0]
    expected = module_model(bank, "beta").generate(ids(bank, prompts[0]), max_new_tokens=6, do_sample=False)
    assert forced.task == "beta"
    assert forced.text == bank.base.tokenizer.decode(expected[0, ids(bank, prompts[0]).shape[1]:], skip_special_tokens=True)


def test_prompts_no_domain_matches_go_to_the_base(bank):
    results = bank.generate(["abc fed", "ghi"], max_new_tokens=5, ood_quantile=0.99)
    assert [r.task for r in results] == [None, None]
    base_out = bank.base.model.generate(ids(bank, "abc fed"), max_new_tokens=5, do_sample=False)
    assert results[0].text == bank.base.tokenizer.decode(base_out[0, ids(bank, "abc fed").shape[1]:], skip_special_tokens=True)


def test_linear_merge_of_one_module_equals_peft_merge_and_unload(bank):
    record = bank.merge(["alpha"], method="linear")
    assert record["version"] == "v1" and bank.current_base_version == "v1"
    assert record["lineage"]["parent"] == "v0" and record["lineage"]["tasks"][0]["name"] == "alpha"
    expected = module_model(bank, "alpha").merge_and_unload().state_dict()
    merged = bank.base_at("v1").model.state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name].cpu(), tensor, atol=1e-6, rtol=0)


def test_every_method_makes_a_new_version_and_never_rewrites_v0(bank):
    v0_files = tree_hashes(bank.path / "bases" / "v0")
    v0 = bank.base_at("v0").model.state_dict()
    fingerprints = {}
    for method in ("linear", "ties", "dare_linear", "dare_ties", "svd"):
        bank.rollback("v0")
        density = 0.5 if "density" in MERGE_METHODS[method].params else None
        record = bank.merge(["alpha", "beta"], method=method, weights=[0.6, 0.4], density=density, seed=3)
        fingerprints[method] = record["fingerprint"]
        assert record["lineage"]["method"] == method and record["lineage"]["weights"] == [0.6, 0.4]
    assert len(set(fingerprints.values())) == 5  # five different bases
    assert tree_hashes(bank.path / "bases" / "v0") == v0_files
    bank.rollback("v0")
    again = bank.merge(["alpha", "beta"], method="dare_ties", weights=[0.6, 0.4], density=0.5, seed=3)
    assert again["fingerprint"] == fingerprints["dare_ties"]  # seeded: the same merge, the same base
    reopened = AdapterBank.open(bank.path, device=DEVICE)
    assert [v["version"] for v in reopened.base_versions()] == [f"v{i}" for i in range(7)]
    reopened.rollback("v0")
    for name, tensor in reopened.base.model.state_dict().items():
        assert torch.equal(tensor, v0[name])


def test_svd_truncates_the_summed_update_to_the_module_rank(bank):
    name = "model.layers.0.self_attn.q_proj.weight"
    v0 = bank.base_at("v0").model.state_dict()[name]
    linear = bank.merge(["alpha", "beta"], method="linear")["version"]
    bank.rollback("v0")
    svd = bank.merge(["alpha", "beta"], method="svd")
    assert svd["lineage"]["svd_rank"] == 8
    rank = lambda version: int(torch.linalg.matrix_rank(bank.base_at(version).model.state_dict()[name] - v0, atol=1e-5))
    assert rank(linear) == 16 and rank(svd["version"]) == 8


def test_ties_at_full_density_of_one_module_equals_linear(bank):
    linear = bank.merge(["alpha"], method="linear")
    bank.rollback("v0")
    ties = bank.merge(["alpha"], method="ties", density=1.0)
    a, b = bank.base_at(linear["version"]).model.state_dict(), bank.base_at(ties["version"]).model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_modules_of_an_older_base_are_pinned_refused_by_merge_and_served_on_their_version(bank):
    before = bank.generate(["ghi jkl"], max_new_tokens=6, task="beta")[0]
    bank.merge(["alpha"])
    with pytest.raises(BaseMismatchError, match="trained on base v0, the current base is v1"):
        bank.merge(["beta"])
    after = bank.generate(["ghi jkl"], max_new_tokens=6, task="beta")[0]
    assert after.base_version == "v0" and after.text == before.text
    assert bank.merge(["beta"], retarget=True)["lineage"]["retarget"] is True
    with pytest.raises(BaseMismatchError, match="trained on base v0, not v2"):
        bank.export(bank.path.parent / "out", task="beta", base_version="v2")


def test_export_loads_with_plain_transformers_and_matches_the_unmerged_module(bank, tmp_path):
    from transformers import AutoModelForCausalLM

    out = bank.export(tmp_path / "merged", task="alpha")
    assert all(p.suffix in (".json", ".safetensors") for p in out.iterdir())
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    text = ids(bank, "abc fed cab bad fade")
    with torch.no_grad():
        diff = (exported(input_ids=text).logits - module_model(bank, "alpha")(input_ids=text).logits).abs().max()
    assert diff < 1e-4


def test_peft_export_serves_on_the_base_with_peft(bank, tmp_path):
    from peft import PeftModel

    from transformers import AutoModelForCausalLM

    out = bank.export(tmp_path / "peft", task="beta", peft=True)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    named = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == str((bank.path / "bases" / "v0").resolve())  # the exact weights it was trained on, offline
    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(named), str(out)).eval()
    text = ids(bank, "ghi jkl")
    with torch.no_grad():
        torch.testing.assert_close(served(input_ids=text).logits, module_model(bank, "beta")(input_ids=text).logits)


def test_export_refuses_an_existing_directory_and_writes_nothing(bank, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(AdapterBankError, match="not an empty directory"):
        bank.export(tmp_path / "full", task="alpha")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("content, message", [
    (b"", "no examples"),
    (b'{"text": "abc"}\n{"text": "  "}\n', ":2: field 'text' is empty"),
    (b'{"text": "abc"}\n{"text": "caf\xe9"}\n', ":2: not valid UTF-8"),
    (b'{"text": "ab"}\n', "at least 2 are needed"),
])
def test_corpus_errors_come_before_training_and_leave_the_bank_unchanged(bank, tmp_path, content, message):
    before = tree_hashes(bank.path)
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        bank.add_task("bad", path, block_size=32, progress=False)
    assert tree_hashes(bank.path) == before


def test_text_with_no_tokens_is_named(tiny_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)  # WordPiece drops a lone zero-width space
    with pytest.raises(DataError, match="text #2 is shorter than one token"):
        make_blocks(tokenizer, ["abc", "\u200b"], 8, "corpus.jsonl")


def test_objective_must_match_the_bank(bank, tmp_path, tiny_base):
    rows = write_jsonl(tmp_path / "labelled.jsonl", [{"text": "abc", "label": "x"}, {"text": "ghi", "label": "y"}])
    with pytest.raises(AdapterBankError, match="--objective clm"):
        bank.add_task("c", rows, objective="classification", progress=False)
    with pytest.raises(AdapterBankError, match="predict needs a classification bank"):
        bank.predict(["abc"])
    encoder_bank = AdapterBank.create(tmp_path / "enc", base=tiny_base, device=DEVICE)
    with pytest.raises(AdapterBankError, match="causal-LM bank"):
        encoder_bank.add_task("d", rows, objective="clm", progress=False)
    with pytest.raises(AdapterBankError, match="causal-LM bank"):
        encoder_bank.merge(["d"])


def test_merge_input_errors(bank):
    with pytest.raises(AdapterBankError, match="unknown merge method"):
        bank.merge(["alpha"], method="average")
    with pytest.raises(AdapterBankError, match="weights"):
        bank.merge(["alpha", "beta"], weights=[1.0])
    with pytest.raises(AdapterBankError, match="density"):
        bank.merge(["alpha"], method="ties", density=0)
    assert bank.current_base_version == "v0" and len(bank.base_versions()) == 1


def test_verify_names_a_changed_base_file(bank):
    from adapterbank.store.versions import verify_versions

    assert verify_versions(bank.registry) == []
    config = bank.path / "bases" / "v0" / "config.json"
    config.write_text(config.read_text().replace("\n", " \n", 1))
    problems = verify_versions(bank.registry)
    assert len(problems) == 1 and "config.json: sha256 mismatch" in problems[0]


MERGE_POINTS = ["merged-in-memory", "base-saved", "base-renamed"]


@pytest.mark.parametrize("point", MERGE_POINTS)
def test_sigkill_during_merge_leaves_no_new_version(bank, point):
    manifest = (bank.path / "bank.json").read_bytes()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ADAPTERBANK_KILL_AT": point}
    process = subprocess.run([sys.executable, "-m", "adapterbank_cli", "merge", str(bank.path), "--tasks", "alpha",
                              "--device", DEVICE], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-400:]
    assert (bank.path / "bank.json").read_bytes() == manifest
    reopened = AdapterBank.open(bank.path, device=DEVICE)
    assert [v["version"] for v in reopened.base_versions()] == ["v0"]
    assert reopened.merge(["alpha"])["version"] == "v1"  # the next merge sweeps the leftovers away
    assert sorted(p.name for p in (bank.path / "bases").iterdir()) == ["v0", "v1"]
    from adapterbank.store.versions import verify_versions

    assert verify_versions(reopened.registry) == []


def test_a_causal_bank_takes_no_base_override(bank):
    with pytest.raises(AdapterBankError, match="is a causal-LM bank: its base is stored in the bank"):
        AdapterBank.open(bank.path, base="anything", device=DEVICE)


def test_every_call_sees_merges_and_rollbacks_made_by_another_process(bank):
    other = AdapterBank.open(bank.path, device=DEVICE)  # e.g. another process
    assert bank.current_base_version == "v0"
    other.merge(["alpha"])
    assert bank.current_base_version == "v1"  # bank.json is re-read when it changed on disk
    assert bank.generate(["zzz"], max_new_tokens=2, ood_quantile=0.999)[0].base_version == "v1"
    other.rollback("v0")
    assert bank.current_base_version == "v0" and [v["current"] for v in bank.base_versions()] == [True, False]


def test_route_tells_which_module_each_prompt_would_use(bank):
    routes = bank.route(["abc fed cab", "ghi lkj hig"], ood_quantile=0)
    assert [r.tasks[0] for r in routes] == ["alpha", "beta"]
    assert all(abs(sum(r.probabilities) - 1) < 1e-4 and r.in_scope for r in routes)


def test_merge_refuses_parameters_the_method_does_not_take(bank):
    with pytest.raises(AdapterBankError, match="--density does not apply to merge method linear"):
        bank.merge(["alpha"], method="linear", density=0.5)
    with pytest.raises(AdapterBankError, match="--svd-rank does not apply to merge method ties"):
        bank.merge(["alpha"], method="ties", svd_rank=2)
    with pytest.raises(AdapterBankError, match="weights must be a finite number"):
        bank.merge(["alpha"], weights=[float("nan")])
    assert bank.current_base_version == "v0" and len(bank.base_versions()) == 1


def test_clm_tasks_record_their_config_and_a_sha256_data_fingerprint(bank):
    record = bank.task("alpha").record
    assert record["data"]["train_fingerprint"].startswith("sha256:")
    assert record["config"] == {"kind": "lora", "params": {"rank": 8}, "block_size": 32, "epochs": 1, "max_steps": 40,
                                "lr": 1e-2, "batch_size": 8, "seed": 0}
