"""The HTTP server as users run it: `adapterbank serve` started as a real process on a free loopback
port, queried with plain HTTP and with the official `openai` client."""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

import httpx2 as httpx
import pytest

from adapterbank.serve.server import free_port

from conftest import DEVICE, copy_bank, invoke, synthetic_rows, write_jsonl

START_TIMEOUT = 90  # seconds for the server to load the bank and answer /healthz


class Server:
    def __init__(self, bank, *extra):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen([sys.executable, "-m", "adapterbank_cli", "serve", str(bank), "--port", str(self.port),
                                         "--device", DEVICE, *map(str, extra)], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.25)
        self.stop()
        raise AssertionError(f"server did not answer /healthz in {START_TIMEOUT} s; it printed: {self.process.stdout.read()[-2000:]}")

    def post(self, path, payload, **kwargs):
        return httpx.post(f"{self.url}{path}", json=payload, timeout=60, **kwargs)

    def get(self, path, **kwargs):
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture()
def classifier_server(classifier_template, tmp_path):
    bank = copy_bank(classifier_template, tmp_path / "bank")
    server = Server(bank)
    server.bank = bank
    yield server
    server.stop()


@pytest.fixture(scope="module")
def causal_server(causal_template, tmp_path_factory):
    bank = copy_bank(causal_template, tmp_path_factory.mktemp("served") / "lm")
    key_file = bank.parent / "key"
    key_file.write_text("s3cret-key\n")
    server = Server(bank, "--api-key-file", key_file, "--max-tokens", "32")
    server.bank = bank
    yield server
    server.stop()


def test_classify_route_models_and_errors(classifier_server):
    server = classifier_server
    assert [m["id"] for m in server.get("/v1/models").json()["data"]][:3] == ["auto", "alpha", "beta"]
    answer = server.post("/v1/classify", {"texts": ["aaaaaa bc de", "gggggg hi jk"], "top_labels": 2}).json()["data"]
    assert [a["task"] for a in answer] == ["alpha", "beta"] and len(answer[0]["labels"]) == 2
    assert server.post("/v1/route", {"texts": ["aaaaaa bc"]}).json()["data"][0]["task"] == "alpha"
    for path, payload, status, field in (
            ("/v1/classify", {"texts": []}, 422, "texts"),
            ("/v1/classify", {"texts": ["x"], "top_labels": -1}, 422, "top_labels"),
            ("/v1/classify", {"texts": ["x"], "task": "../../etc"}, 400, None),
            ("/v1/classify", {"text": "x"}, 422, "texts"),
            ("/v1/completions", {"prompt": "x"}, 400, None)):
        response = server.post(path, payload)
        assert response.status_code == status, (payload, response.text)
        assert set(response.json()["error"]) >= {"message", "type"} and response.json()["error"]["param"] == field
    big = server.post("/v1/classify", {"texts": ["x" * 60_000] * 30})
    assert big.status_code == 413 and big.json()["error"]["param"] == "body"
    assert httpx.post(f"{server.url}/v1/classify", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_a_task_added_or_removed_while_serving_is_served_without_restart(classifier_server, tmp_path):
    server = classifier_server
    text = "ssssss tu vw"
    assert server.post("/v1/route", {"texts": [text]}).json()["data"][0]["task"] != "delta"
    train = write_jsonl(tmp_path / "delta.jsonl", synthetic_rows("delta", 10, 0))
    assert invoke("add-task", server.bank, "delta", "--train", train, "--epochs", "2", "-q", "--device", DEVICE)[0] == 0
    assert "delta" in [m["id"] for m in server.get("/v1/models").json()["data"]]
    assert server.post("/v1/classify", {"texts": [text]}).json()["data"][0]["task"] == "delta"
    assert invoke("remove", server.bank, "delta")[0] == 0
    assert server.post("/v1/classify", {"texts": [text]}).json()["data"][0]["task"] != "delta"


def test_concurrent_requests_share_batches_and_all_get_their_own_answer(classifier_server):
    server = classifier_server
    texts = [r["text"] for r in synthetic_rows("alpha", 8, 3) + synthetic_rows("beta", 8, 3)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: server.post("/v1/classify", {"texts": [t]}).json()["data"][0], texts))
    assert [a["text"] for a in answers] == texts
    assert sum(a["task"] == expected for a, expected in zip(answers, ["alpha"] * 16 + ["beta"] * 24)) >= 36
    health = server.get("/healthz").json()
    assert health["requests"] >= len(texts) and health["batches"] < health["requests"]


def test_openai_client_models_completions_chat_and_streaming(causal_server):
    from openai import AuthenticationError, NotFoundError, OpenAI, UnprocessableEntityError

    client = OpenAI(base_url=f"{causal_server.url}/v1", api_key="s3cret-key", max_retries=0, timeout=60)
    assert {"auto", "alpha", "beta"} <= {m.id for m in client.models.list()}
    chat = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "abc fed cab dea"}],
                                          max_tokens=4, temperature=0)
    assert chat.model == "alpha" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].model_extra["adapterbank"]["task"] == "alpha"
    stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "abc fed cab dea"}],
                                            max_tokens=4, temperature=0, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert "".join(pieces) == chat.choices[0].message.content
    forced = client.completions.create(model="beta", prompt="abc fed", max_tokens=3, temperature=0)
    assert forced.model == "beta" and forced.choices[0].model_extra["adapterbank"]["task"] == "beta"
    base = client.completions.create(model="base", prompt="abc fed", max_tokens=3, temperature=0)
    assert base.choices[0].model_extra["adapterbank"]["task"] is None
    with pytest.raises(NotFoundError):
        client.completions.create(model="../../etc/passwd", prompt="x", max_tokens=2)
    with pytest.raises(UnprocessableEntityError, match="max_tokens"):
        client.completions.create(model="auto", prompt="x", max_tokens=33)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{causal_server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_auth_is_required_everywhere_but_healthz(causal_server):
    assert causal_server.get("/healthz").status_code == 200
    for path, payload in (("/v1/models", None), ("/v1/route", {"texts": ["x"]}), ("/v1/completions", {"prompt": "x"})):
        response = causal_server.get(path) if payload is None else causal_server.post(path, payload)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"
    ok = causal_server.post("/v1/route", {"texts": ["ghi jkl"]}, headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200 and ok.json()["data"][0]["task"] == "beta"


def test_serve_refuses_bad_arguments_in_one_line(tmp_path, classifier_template):
    bank = copy_bank(classifier_template, tmp_path / "bank")
    empty = tmp_path / "key"
    empty.write_text("  \n")
    for args, message in ((["--api-key-file", empty], "expected one key"), (["--api-key-file", tmp_path / "none"], "not a file"),
                          (["--port", "70000"], "port must be at most 65535"), (["--max-tokens", "0"], "max_tokens must be at least 1")):
        code, _ = invoke("serve", bank, *args)
        assert code == 1 and message in invoke.stderr and invoke.stderr.count("\n") == 1, invoke.stderr


def test_stream_events_are_openai_chunks(causal_server):
    response = causal_server.post("/v1/completions", {"model": "auto", "prompt": "abc fed", "max_tokens": 3, "temperature": 0,
                                                      "stream": True}, headers={"Authorization": "Bearer s3cret-key"})
    events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert response.headers["content-type"].startswith("text/event-stream") and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[0]["object"] == "text_completion"
    assert chunks[-1]["choices"][0]["adapterbank"]["task"] == "alpha" and chunks[-1]["model"] == "alpha"
    whole = causal_server.post("/v1/completions", {"model": "auto", "prompt": "abc fed", "max_tokens": 3, "temperature": 0},
                               headers={"Authorization": "Bearer s3cret-key"}).json()["choices"][0]["text"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole  # tokens as generated add up to the answer


def test_concurrent_streams_share_batches_and_each_gets_its_own_text(causal_server):
    auth = {"Authorization": "Bearer s3cret-key"}
    prompts = ["abc fed cab", "ghi jkl ihg", "fed cab abc bad", "jkl ihg ghi", "cab bad", "ihg jig", "bad fade", "gig hij"]

    def streamed(prompt):
        response = causal_server.post("/v1/completions", {"model": "auto", "prompt": prompt, "max_tokens": 8,
                                                          "temperature": 0, "stream": True}, headers=auth)
        chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        return "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["model"]

    before = causal_server.get("/healthz").json()
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        streams = list(pool.map(streamed, prompts))
    after = causal_server.get("/healthz").json()
    assert after["batches"] - before["batches"] < after["requests"] - before["requests"] == len(prompts)  # shared batches
    for prompt, (text, model) in zip(prompts, streams):  # every client got its own row's text, whole and in order
        alone = causal_server.post("/v1/completions", {"model": "auto", "prompt": prompt, "max_tokens": 8, "temperature": 0},
                                   headers=auth).json()
        assert (text, model) == (alone["choices"][0]["text"], alone["model"]), prompt


def test_import_a_plain_peft_lora_and_serve_it(causal_template, tmp_path, tiny_llama):
    """An adapter trained by plain PEFT (not by the bank) is imported, routed, verified and merged like a
    trained module; adapters that do not fit are refused in one line and leave the bank unchanged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapterbank import AdapterBank
    from adapterbank.store.verify import verify_bank

    from conftest import domain_texts, tree_hashes

    def plain_lora(folder, name_or_path, targets=("q_proj", "v_proj"), rank=4):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                               LoraConfig(r=rank, target_modules=list(targets), task_type="CAUSAL_LM", init_lora_weights=False))
        model.save_pretrained(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = name_or_path
        (folder / "adapter_config.json").write_text(json.dumps(config))
        return folder

    bank_dir = copy_bank(causal_template, tmp_path / "lm")
    examples = tmp_path / "examples.txt"
    examples.write_text("\n".join(domain_texts("gamma", 20, seed=0)))
    good = plain_lora(tmp_path / "good", tiny_llama)
    before = tree_hashes(bank_dir)
    wrong_base = plain_lora(tmp_path / "wrong-base", "someone/else")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    few = tmp_path / "few.txt"
    few.write_text("mno pqr\n")
    for args, message in ((["--adapter", wrong_base, "--examples", examples], "trained on base 'someone/else'"),
                          (["--adapter", pickled, "--examples", examples], "pickled weights are never loaded"),
                          (["--adapter", good, "--examples", few], "the router needs at least 8"),
                          (["--adapter", tmp_path / "nowhere", "--examples", examples], "not a directory")):
        code, _ = invoke("import", bank_dir, "gamma", *args)
        assert code == 1 and message in invoke.stderr and invoke.stderr.count("\n") == 1, invoke.stderr
    assert tree_hashes(bank_dir) == before
    code, out = invoke("import", bank_dir, "gamma", "--adapter", good, "--examples", examples, "--device", DEVICE)
    assert code == 0 and "imported gamma: lora" in out, invoke.stderr
    bank = AdapterBank.open(bank_dir, device=DEVICE)
    assert verify_bank(bank_dir).ok and bank.task("gamma").record["objective"] == "imported"
    [result] = bank.generate(["mno pqr onm"], max_new_tokens=2, ood_quantile=0)
    assert result.task == "gamma"
    code, _ = invoke("import", bank_dir, "other", "--adapter", wrong_base, "--examples", examples, "--force-base", "--device", DEVICE)
    assert code == 0
    before = tree_hashes(bank_dir)
    for change, message in (({"r": 8}, "is [4, 32], the base needs [8, 32]"),
                            ({"target_modules": ["w_proj"]}, "does not fit this bank's base")):
        misfit = tmp_path / f"misfit-{len(message)}"
        shutil.copytree(good, misfit)
        config = json.loads((misfit / "adapter_config.json").read_text())
        (misfit / "adapter_config.json").write_text(json.dumps({**config, **change}))
        code, _ = invoke("import", bank_dir, "third", "--adapter", misfit, "--examples", examples)
        assert code == 1 and message in invoke.stderr and invoke.stderr.count("\n") == 1, invoke.stderr
    assert tree_hashes(bank_dir) == before


def test_export_all_writes_every_module_and_the_engine_command_lines(causal_template, classifier_template, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bank_dir = copy_bank(causal_template, tmp_path / "lm")
    out = tmp_path / "handoff"
    code, text = invoke("export", bank_dir, "--out", out, "--peft", "--all")
    assert code == 0 and "exported 2 PEFT modules" in text and "vllm serve" in text, invoke.stderr
    serving = json.loads((out / "serving.json").read_text())
    [group] = serving["bases"]
    assert group["base"] == str((bank_dir / "bases" / "v0").resolve()) and set(group["modules"]) == {"alpha", "beta"}
    assert f"--lora-modules alpha={out.resolve() / 'alpha'} beta={out.resolve() / 'beta'}" in group["vllm"]
    assert group["lorax"]["requests"]["beta"] == {"adapter_id": str(out.resolve() / "beta"), "adapter_source": "local"}
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(group["base"]), group["modules"]["beta"])  # loads offline
    code, _ = invoke("export", bank_dir, "--out", tmp_path / "x", "--all")
    assert code == 1 and "use it with --peft" in invoke.stderr
    classifier_out = tmp_path / "classifier"
    assert invoke("export", copy_bank(classifier_template, tmp_path / "c"), "--out", classifier_out, "--peft", "--all")[0] == 0
    assert (classifier_out / "alpha" / "head.safetensors").is_file() and (classifier_out / "beta" / "labels.json").is_file()


def test_upstream_mode_routes_here_and_generates_there(causal_server, causal_template, tmp_path):
    """A second `adapterbank serve` stands in for vLLM: the front server routes, forwards each request
    with model set to the chosen module, and passes streams through."""
    front_bank = copy_bank(causal_template, tmp_path / "front")
    key = {"Authorization": "Bearer s3cret-key"}
    direct = causal_server.post("/v1/completions", {"model": "alpha", "prompt": "abc fed cab", "max_tokens": 3,
                                                    "temperature": 0}, headers=key).json()
    (tmp_path / "upstream-key").write_text("s3cret-key")
    front = Server(front_bank, "--upstream", causal_server.url, "--upstream-key-file", tmp_path / "upstream-key")
    try:
        answer = front.post("/v1/completions", {"model": "auto", "prompt": ["abc fed cab", "ghi jkl hig"], "max_tokens": 3,
                                                "temperature": 0}).json()
        assert [c["adapterbank"]["upstream_model"] for c in answer["choices"]] == ["alpha", "beta"]
        assert answer["choices"][0]["text"] == direct["choices"][0]["text"]
        streamed = front.post("/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "ghi jkl"}],
                                                       "max_tokens": 3, "temperature": 0, "stream": True})
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert streamed.text.rstrip().endswith("data: [DONE]") and chunks[0]["model"] == "beta"
        assert front.post("/v1/completions", {"model": "base", "prompt": "x", "max_tokens": 2, "temperature": 0}).status_code == 200
    finally:
        front.stop()
