"""Instruction (sft) tasks on a causal bank, on the tiny random Llama: data checks, response-only loss,
chat rendering, routed mixed batches (LoRA, prompt tuning, clm and base rows), streaming, evaluation."""

import copy
import json
import random

import pytest
import torch

from adapterbank import AdapterBank
from adapterbank.errors import DataError

from conftest import DEVICE, copy_bank, domain_texts, invoke, tree_hashes, write_jsonl

SQL_WORDS, CHAT_WORDS = "abcdef", "uvwxyz"


def task_rows(letters: str, answer: str, count: int, seed: int, chat: bool = False) -> list[dict]:
    """Prompts made of one domain's letters, all answered with the same text (learnable by a tiny model)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = " ".join("".join(rng.choice(letters) for _ in range(4)) for _ in range(5))
        if chat:
            rows.append({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt},
                                      {"role": "assistant", "content": answer}]})
        else:
            rows.append({"prompt": prompt, "response": answer})
    return rows


@pytest.fixture(scope="module")
def sft_template(tmp_path_factory, tiny_llama, tiny_base):
    """A causal bank with a clm domain (alpha), an sft LoRA task (sql) and an sft prompt-tuning task (support)."""
    root = tmp_path_factory.mktemp("sft") / "bank"
    bank = AdapterBank.create(root, base=tiny_llama, router_encoder=tiny_base, device=DEVICE)
    bank.add_task("alpha", domain_texts("alpha", 60, seed=0), block_size=32, max_steps=4, lr=1e-2, progress=False)
    bank.add_task("sql", task_rows(SQL_WORDS, "SELECT", 48, 0), objective="sft", max_steps=150, lr=3e-2, batch_size=8,
                  progress=False)
    bank.add_task("support", task_rows(CHAT_WORDS, "hello", 48, 1, chat=True), objective="sft", kind="prompt",
                  virtual_tokens=4, max_steps=30, progress=False)
    return root


@pytest.fixture()
def sft_bank(sft_template, tmp_path):
    return AdapterBank.open(copy_bank(sft_template, tmp_path / "bank"), device=DEVICE)


def test_the_loss_is_on_response_tokens_only_and_batches_equal_single_examples(tiny_llama):
    from transformers import AutoModelForCausalLM

    from adapterbank.causal.sft import Tokenized, response_nll

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    short, long = Tokenized(list(range(5, 12)), 2), Tokenized(list(range(20, 40)), 5)
    expected = 0.0
    for example in (short, long):
        ids = torch.tensor([example.ids])
        targets = ids[0, 1:].clone()
        targets[: len(example.ids) - 1 - example.response_len] = -100  # prompt tokens carry no loss
        expected += float(torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], targets, reduction="sum"))
    nll, count = response_nll(model, [short, long], pad_id=0)
    assert count == 7 and float(nll) == pytest.approx(expected, rel=1e-5)


def test_a_shared_prefix_runs_once_with_the_same_loss_and_gradients(tiny_llama, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapterbank.causal import sft
    from adapterbank.causal.sft import Tokenized, response_nll, shared_prefix

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    head = list(range(30, 42))  # a system prompt / instruction every row shares
    batch = [Tokenized(head + [5, 6, 7, 8], 2), Tokenized(head + [9, 10, 11, 12, 13, 14], 3), Tokenized(head + [15, 16, 17], 1)]
    assert shared_prefix(batch) == len(head)

    def loss_and_grads():
        model.zero_grad()
        nll, count = response_nll(model, batch, pad_id=0)
        nll.backward()
        return float(nll), count, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    shared = loss_and_grads()
    monkeypatch.setattr(sft, "SHARED_PREFIX_MIN", 10_000)  # the plain path: every row runs its whole prompt
    plain = loss_and_grads()
    assert shared[1] == plain[1] == 6 and shared[0] == pytest.approx(plain[0], rel=1e-5)
    for a, b in zip(shared[2], plain[2]):
        assert torch.allclose(a, b, atol=1e-5)


def test_chat_rendering_uses_the_template_and_the_last_assistant_turn_is_the_target(tiny_llama):
    from transformers import AutoTokenizer

    from adapterbank.causal.chat import render_completion
    from adapterbank.causal.sft import parse_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    example = parse_example({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "first"},
                                          {"role": "user", "content": "again"}, {"role": "assistant", "content": "second"},
                                          {"role": "user", "content": "ignored"}]}, "x:1")
    assert example.response == "second" and example.route_text == "hi\nagain" and len(example.context) == 3
    prompt, completion = render_completion(tokenizer, list(example.context), example.response)  # no template: plain lines
    assert prompt == "user: hi\nassistant: first\nuser: again\nassistant:" and completion == " second<eos>"
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt, completion = render_completion(tokenizer, [{"role": "user", "content": "hi"}], "yes")
    assert prompt == "<user>hi</s>\n<assistant>" and completion == "yes</s>"


BAD_LINES = [
    ({"text": "unlabelled"}, "expected 'prompt' and 'response', or 'messages'"),
    ({"prompt": "q", "response": "   "}, "empty response"),
    ({"prompt": "q"}, "missing field 'response'"),
    ({"prompt": "q", "response": 3}, "field 'response' must be a string"),
    ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}, "no user message before"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}, "message #2: expected"),
    ({"messages": [], "prompt": "q", "response": "a"}, "not both"),
    ({"prompt": "abcd " * 400, "response": "a"}, "longer than the model's context"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_bad_sft_lines_are_refused_naming_file_and_line_before_training(sft_template, tmp_path, line, message):
    bank_dir = copy_bank(sft_template, tmp_path / "bank")
    before = tree_hashes(bank_dir)
    data = write_jsonl(tmp_path / "train.jsonl", [*task_rows(SQL_WORDS, "x", 3, 0), line])
    code, _ = invoke("add-task", bank_dir, "new", "--train", data, "--objective", "sft", "--device", DEVICE, "-q")
    assert code != 0 and invoke.stderr.startswith(f"error: {data}:4"), invoke.stderr
    assert message in invoke.stderr and len(invoke.stderr.strip().splitlines()) == 1
    assert tree_hashes(bank_dir) == before


def test_sft_modules_learn_and_prompts_are_routed_to_them(sft_bank):
    sql = task_rows(SQL_WORDS, "SELECT", 6, 7)
    support = task_rows(CHAT_WORDS, "hello", 6, 8)
    results = sft_bank.generate([r["prompt"] for r in sql + support], max_new_tokens=7, ood_quantile=0)
    assert [r.task for r in results] == ["sql"] * 6 + ["support"] * 6
    assert sum(r.text == " SELECT" for r in results[:6]) >= 5, [r.text for r in results[:6]]  # unseen prompts
    info = sft_bank.task("sql")
    assert info.objective == "sft" and info.record["metrics"]["response_loss_after"] < info.record["metrics"]["response_loss_before"]
    chat = sft_bank.chat([[{"role": "system", "content": "be brief"}, {"role": "user", "content": sql[0]["prompt"]}]],
                         max_new_tokens=4)
    assert chat[0].task == "sql"


def test_mixed_batches_equal_one_prompt_at_a_time(sft_bank):
    """LoRA (sql), prompt tuning (support), clm (alpha) and base rows in one batched generate."""
    from adapterbank.causal.generation import VersionGenerator

    prompts = [task_rows(SQL_WORDS, "", 1, 3)[0]["prompt"], "uvw xyz", domain_texts("alpha", 1, seed=9)[0][:40], "zz top",
               "abc", task_rows(CHAT_WORDS, "", 1, 4)[0]["prompt"] * 2]
    modules = ["sql", "support", "alpha", None, "sql", "support"]
    at = {info.name: (info.path, info.kind) for info in sft_bank.tasks()}
    options = {"max_new_tokens": 6, "do_sample": False}
    generator = VersionGenerator(sft_bank.base.model, sft_bank.base.tokenizer)
    together = generator.generate(prompts, modules, at, batch_size=8, options=options)
    alone = [VersionGenerator(sft_bank.base.model, sft_bank.base.tokenizer).generate([p], [m], at, 1, options)[0]
             for p, m in zip(prompts, modules)]
    assert together == alone
    assert together[0] != together[4] or prompts[0] == prompts[4]  # rows are not copies of each other


def test_a_soft_prompt_batched_per_row_answers_as_peft_does_alone(sft_bank):
    """The reference recomputes PEFT's forward at every step rather than calling its generate: with transformers
    5.25 and PEFT 0.21, PEFT's cached generate for a prompt-tuned model departs from its own forward (a random
    tiny model's top two tokens lie 0.003-0.07 apart, so any drift in the cache shows)."""
    from peft import PeftModel

    from adapterbank.causal.chat import render_prompt, single_turn

    prompt = task_rows(CHAT_WORDS, "", 1, 5)[0]["prompt"]
    ours = sft_bank.generate([prompt, "abcd abcd"], task="support", max_new_tokens=5)
    base = sft_bank.base
    peft = PeftModel.from_pretrained(copy.deepcopy(base.model), str(sft_bank.task("support").path)).eval()
    for generation, text in zip(ours, [prompt, "abcd abcd"]):
        ids = base.tokenizer(render_prompt(base.tokenizer, single_turn(text)), return_tensors="pt")["input_ids"]
        seq = ids
        with torch.no_grad():  # PEFT's prompt-tuned forward over the whole sequence at every step: greedy, no cache
            for _ in range(5):
                logits = peft(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0, -1]
                seq = torch.cat([seq, logits.argmax()[None, None]], 1)
        assert generation.text == base.tokenizer.decode(seq[0, ids.shape[1]:], skip_special_tokens=True)


def test_streaming_yields_the_same_text_for_one_prompt_and_for_a_batch(sft_bank):
    prompts = [task_rows(SQL_WORDS, "", 1, 3)[0]["prompt"], task_rows(CHAT_WORDS, "", 1, 4)[0]["prompt"], "qq"]
    whole = sft_bank.generate(prompts, max_new_tokens=8, ood_quantile=0)
    pieces = list(sft_bank.generate(prompts, max_new_tokens=8, ood_quantile=0, stream=True))
    assert len(pieces) > len(prompts) and {p.index for p in pieces} == {0, 1, 2}
    for i, result in enumerate(whole):
        assert "".join(p.text for p in pieces if p.index == i) == result.text
        assert all(p.task == result.task for p in pieces if p.index == i)
    one = list(sft_bank.generate(prompts[:1], max_new_tokens=8, ood_quantile=0, stream=True))
    assert "".join(map(str, one)) == whole[0].text


def test_generate_chat_and_stream_through_the_cli(sft_template, tmp_path):
    bank_dir = copy_bank(sft_template, tmp_path / "bank")
    prompt = task_rows(SQL_WORDS, "", 1, 3)[0]["prompt"]
    conversation = tmp_path / "conversation.json"
    conversation.write_text(json.dumps([{"role": "user", "content": prompt}]), encoding="utf-8")
    code, out = invoke("generate", bank_dir, "--chat", conversation, "--json", "--ood-quantile", "0", "--max-new-tokens", "4",
                       "--device", DEVICE)
    assert code == 0, invoke.stderr
    answer = json.loads(out)
    assert answer["task"] == "sql" and answer["prompt"] == prompt
    code, streamed = invoke("generate", bank_dir, "--prompt", prompt, "--stream", "--ood-quantile", "0",
                            "--max-new-tokens", "4", "--device", DEVICE)
    assert code == 0 and streamed.strip() == answer["text"].strip()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"role": "assistant", "content": "no user"}]), encoding="utf-8")
    code, _ = invoke("generate", bank_dir, "--chat", bad, "--device", DEVICE)
    assert code != 0 and "no user message" in invoke.stderr and str(bad) in invoke.stderr


def test_instruction_eval_writes_the_matrix_and_the_baselines(tmp_path, tiny_llama, tiny_base, monkeypatch):
    from adapterbank.evaluation import instruction_protocol, report
    from adapterbank.evaluation.instruction_tasks import load_instruction_tasks

    data = tmp_path / "data"
    for name, letters, answer in (("1_sql", SQL_WORDS, "SELECT"), ("2_chat", CHAT_WORDS, "hello there friend and more")):
        (data / name).mkdir(parents=True)
        write_jsonl(data / name / "train.jsonl", task_rows(letters, answer, 24, 0))
        write_jsonl(data / name / "test.jsonl", task_rows(letters, answer, 4, 1))
    tasks = load_instruction_tasks(data)
    assert [t.metric for t in tasks] == ["exact_match", "rouge_l"]  # short labels vs longer answers
    create = AdapterBank.create
    monkeypatch.setattr(AdapterBank, "create", lambda path, **kw: create(path, router_encoder=tiny_base, **kw))
    results = instruction_protocol.run(tasks, tmp_path / "out", base=tiny_llama, device=DEVICE, progress=False,
                                       settings={"max_steps": 60, "lr": 3e-2})
    matrix = results["accuracy_matrix"]
    assert matrix[0][1] is not None and matrix[1][0] is not None and all(0 <= v <= 1 for row in matrix for v in row)
    assert set(results["baselines"]) == {"base", "joint", "seqlora"} and results["routing_accuracy"] == 1.0
    assert len(results["baselines"]["seqlora"]["accuracy_matrix"]) == 2 and results["zero_training_accuracy"] is not None
    paths = report.write(results, tmp_path / "out")
    assert "instruction-incremental" in paths["report"].read_text() and paths["heatmap"].stat().st_size > 0


def test_instruction_data_errors_name_the_folder_file_and_line(tmp_path):
    from adapterbank.evaluation.instruction_tasks import load_instruction_tasks

    (tmp_path / "a").mkdir()
    write_jsonl(tmp_path / "a" / "train.jsonl", task_rows(SQL_WORDS, "x", 3, 0))
    with pytest.raises(DataError, match=r"a/test.jsonl: file not found"):
        load_instruction_tasks(tmp_path)
    write_jsonl(tmp_path / "a" / "test.jsonl", [{"prompt": "q", "response": ""}])
    with pytest.raises(DataError, match=r"a/test.jsonl:1: empty response"):
        load_instruction_tasks(tmp_path)
    write_jsonl(tmp_path / "a" / "test.jsonl", task_rows(SQL_WORDS, "x", 2, 0))
    (tmp_path / "a" / "eval.json").write_text('{"metric": "bleu"}')
    with pytest.raises(DataError, match="metric \"bleu\": choose one of exact_match, rouge_l"):
        load_instruction_tasks(tmp_path)
