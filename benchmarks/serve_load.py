"""Load on `adapterbank serve` over loopback: concurrent clients against one-at-a-time requests and the
in-process API, latency percentiles, errors, and a task added under load. Prints JSON.

    python benchmarks/serve_load.py [--quick] [--data ../shared/data] [--seed 0] [--skip causal]

classification: a bank of 15 CLINC150 tasks (10 intents each, dealt by a seeded shuffle, every training
text); 2,000 requests of one test text each, from 16 concurrent clients, against the same requests sent
one at a time, against `bank.predict` on all 2,000 texts in one call, and against `bank.predict` in calls
of 16 texts (the largest batch 16 clients with one request each can make). While the concurrent load runs,
`adapterbank add-task` adds a Banking77 task (11 intents); the time from the CLI's return to the first
request routed to the new task is reported.
causal: SmolLM2-135M with 4 domain modules (scitldr abstracts, federalist papers, tinyshakespeare,
Banking77 questions as text); 64 chat requests (max_tokens 32, greedy) from 8 concurrent clients against
the same requests one at a time: generated tokens/s (non-streamed requests), then the same requests
with `stream: true`: time to the first content chunk. Concurrent streams share batches.
--quick: 4 CLINC tasks, 300 requests, 16 chat requests (the same keys).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx2 as httpx  # noqa: E402

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from adapterbank.serve.server import free_port  # noqa: E402
from common import subset  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
START_TIMEOUT = 300


class Server:
    def __init__(self, bank: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "adapterbank_cli", "serve", str(bank), "--port", str(self.port),
                                         "--device", "cpu"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited; see {log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.5)
        raise SystemExit("server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load(url: str, path: str, payloads: list[dict], clients: int) -> dict:
    """Send every payload from `clients` concurrent clients (each sends its next request when its last one
    is answered); throughput, latencies, errors. The clients are asyncio tasks on one connection pool,
    as a gateway would send them: 16 client threads cost this 2-core machine more CPU than the server."""
    return asyncio.run(_load(url, path, payloads, clients))


async def _load(url: str, path: str, payloads: list[dict], clients: int) -> dict:
    latencies: list[float] = [0.0] * len(payloads)
    answers: list = [None] * len(payloads)
    errors: list[str] = []
    order = iter(range(len(payloads)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker() -> None:
            for i in order:  # one iterator shared by the workers: each takes the next request
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=payloads[i])
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        answers[i] = response.json()
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies[i] = time.perf_counter() - started

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "requests": len(payloads), "errors": len(errors), "error_samples": errors[:3],
            "lost": sum(a is None for a in answers) - len(errors), "requests_per_s": round(len(payloads) / seconds, 1),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1), "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "answers": answers}


def stream_load(url: str, payloads: list[dict], clients: int) -> dict:
    """The same requests with `stream: true`: time to the first content chunk, and to the end."""
    return asyncio.run(_stream_load(url, payloads, clients))


async def _stream_load(url: str, payloads: list[dict], clients: int) -> dict:
    first: list[float] = []
    total: list[float] = []
    errors: list[str] = []
    order = iter(range(len(payloads)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker() -> None:
            for i in order:
                started, seen = time.perf_counter(), None
                async with client.stream("POST", "/v1/chat/completions", json={**payloads[i], "stream": True}) as response:
                    if response.status_code != 200:
                        errors.append(str(response.status_code))
                        continue
                    async for line in response.aiter_lines():
                        if seen is None and line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                            seen = time.perf_counter() - started
                first.append(seen if seen is not None else time.perf_counter() - started)
                total.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "errors": len(errors), "ttft_p50_ms": round(1000 * percentile(first, 0.5), 1),
            "ttft_p99_ms": round(1000 * percentile(first, 0.99), 1), "p50_ms": round(1000 * percentile(total, 0.5), 1)}


def classification(args, workdir: Path) -> dict:
    clinc = args.data / "clinc150"
    train, test = load_dataset(clinc / "train.jsonl"), load_dataset(clinc / "test.jsonl")
    intents = sorted(train.labels)
    random.Random(args.seed).shuffle(intents)
    n_tasks, n_requests = (4, 300) if args.quick else (15, 2000)
    tasks = [intents[i * 10:(i + 1) * 10] for i in range(n_tasks)]
    bank_dir = workdir / "clinc"
    bank = AdapterBank.create(bank_dir, device="cpu")
    started = time.perf_counter()
    for i, labels in enumerate(tasks):
        bank.add_task(f"t{i:02d}", subset(train, labels, f"t{i}"), progress=False)
    build = time.perf_counter() - started
    every = [label for labels in tasks for label in labels]
    texts = subset(test, every, "test").texts
    texts = [texts[i % len(texts)] for i in random.Random(args.seed).sample(range(len(texts) * 2), n_requests)]
    bank.predict(texts[:64])
    started = time.perf_counter()
    bank.predict(texts)
    in_process = time.perf_counter() - started
    started = time.perf_counter()  # the most a server can batch with 16 clients of one text each: calls of 16
    for i in range(0, len(texts), 16):
        bank.predict(texts[i:i + 16])
    in_process_16 = time.perf_counter() - started
    banking = load_dataset(args.data / "banking77" / "train.jsonl")
    new_labels = sorted(banking.labels)[:11]
    new_file = workdir / "banking-task.jsonl"
    new_data = subset(banking, new_labels, "banking")
    new_file.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(new_data.texts, new_data.targets)))
    probe = subset(load_dataset(args.data / "banking77" / "test.jsonl"), new_labels, "probe").texts[0]
    server = Server(bank_dir, workdir / "clinc-server.log")
    try:
        payloads = [{"texts": [t]} for t in texts]
        load(server.url, "/v1/classify", payloads[:32], 16)  # warm-up
        sequential = load(server.url, "/v1/classify", payloads, 1)
        added: dict = {}

        def add_under_load() -> None:
            time.sleep(1.0)
            result = subprocess.run([sys.executable, "-m", "adapterbank_cli", "add-task", str(bank_dir), "banking77", "--train",
                                     str(new_file), "-q", "--device", "cpu"], capture_output=True, text=True)
            landed = time.perf_counter()
            added["exit"] = result.returncode
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while time.perf_counter() - landed < 30:
                    answer = client.post("/v1/route", json={"texts": [probe]}).json()["data"][0]
                    if answer["task"] == "banking77":
                        added["routed_after_s"] = round(time.perf_counter() - landed, 3)
                        return

        concurrent_run = load(server.url, "/v1/classify", payloads, 16)
        health = httpx.get(f"{server.url}/healthz").json()
        adder = threading.Thread(target=add_under_load)  # the same load again, with add-task training beside it
        adder.start()
        under_add = load(server.url, "/v1/classify", payloads, 16)
        adder.join()
        under_add.pop("answers")
        added.update(errors=under_add["errors"], lost=under_add["lost"], requests=under_add["requests"],
                     requests_per_s_while_training=under_add["requests_per_s"])
    finally:
        server.stop()
    agree = sum(a is not None and b is not None and a["data"][0]["label"] == b["data"][0]["label"]
                for a, b in zip(sequential["answers"], concurrent_run["answers"]))
    for run in (sequential, concurrent_run):
        run.pop("answers")
    return {"tasks": n_tasks, "build_seconds": round(build, 1), "requests": n_requests, "clients": 16,
            "concurrent": concurrent_run, "one_at_a_time": sequential,
            "in_process_texts_per_s": round(len(texts) / in_process, 1),
            "speedup_vs_one_at_a_time": round(concurrent_run["requests_per_s"] / sequential["requests_per_s"], 2),
            "ratio_vs_in_process": round(concurrent_run["requests_per_s"] / (len(texts) / in_process), 3),
            "in_process_calls_of_16_texts_per_s": round(len(texts) / in_process_16, 1),
            "ratio_vs_in_process_calls_of_16": round(concurrent_run["requests_per_s"] / (len(texts) / in_process_16), 3),
            "same_labels_concurrent_vs_sequential": agree, "add_task_under_load": added,
            "server_batches": health["batches"], "server_requests": health["requests"]}


def causal(args, workdir: Path) -> dict:
    bank_dir = workdir / "lm"
    bank = AdapterBank.create(bank_dir, base="smollm2-135m", device="cpu")
    domains = {"science": args.data / "scitldr_abstracts", "federalist": args.data / "federalist_papers",
               "shakespeare": args.data / "tinyshakespeare"}
    prompts = {}
    for name, folder in domains.items():
        texts = [json.loads(line)["text"] for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        bank.add_task(name, texts[:200], block_size=64, max_steps=6 if args.quick else 20, progress=False)
        prompts[name] = [t[:200] for t in texts[-40:]]
    banking = load_dataset(args.data / "banking77" / "train.jsonl").texts
    bank.add_task("banking", banking[:600], block_size=64, max_steps=6 if args.quick else 20, progress=False)
    prompts["banking"] = banking[-40:]
    n = 16 if args.quick else 64
    names = list(prompts)
    chats = [{"model": "auto", "max_tokens": 32, "temperature": 0, "messages": [{"role": "user", "content": prompts[names[i % 4]][i // 4]}]}
             for i in range(n)]
    server = Server(bank_dir, workdir / "lm-server.log")
    try:
        load(server.url, "/v1/chat/completions", chats[:4], 4)  # warm-up: modules loaded
        sequential = load(server.url, "/v1/chat/completions", chats, 1)
        concurrent_run = load(server.url, "/v1/chat/completions", chats, 8)
        streamed = {"one_at_a_time": stream_load(server.url, chats, 1), "concurrent": stream_load(server.url, chats, 8)}
        health = httpx.get(f"{server.url}/healthz").json()
    finally:
        server.stop()

    def tokens(run: dict) -> int:
        return sum(32 for a in run["answers"] if a is not None)  # greedy, no EOS stop: every answer is max_tokens long

    out = {}
    for label, run in (("concurrent", concurrent_run), ("one_at_a_time", sequential)):
        routed = [a["choices"][0]["adapterbank"]["task"] for a in run["answers"] if a]
        out[label] = {**{k: v for k, v in run.items() if k != "answers"}, "tokens_per_s": round(tokens(run) / run["seconds"], 1),
                      "routed_to_its_domain": sum(r == names[i % 4] for i, r in enumerate(routed)),
                      "streamed": streamed[label]}
    return {"modules": 4, "requests": n, "clients": 8, "max_tokens": 32, **out,
            "tokens_per_s_ratio": round(out["concurrent"]["tokens_per_s"] / out["one_at_a_time"]["tokens_per_s"], 2),
            "server_batches": health["batches"], "server_requests": health["requests"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=["classification", "causal"], default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="adapterbank-serve-load-"))
    out = {"quick": args.quick, "cpu_count": os.cpu_count()}
    try:
        if args.skip != "classification":
            out["classification"] = classification(args, workdir)
        if args.skip != "causal":
            out["causal"] = causal(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
