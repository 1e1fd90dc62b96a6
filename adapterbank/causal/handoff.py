"""Handing a causal bank's modules to a GPU engine: the command lines that load `export --all` output.

vLLM serves one base with LoRA modules named at launch (`--lora-modules name=path`); LoRAX loads an
adapter per request from a local path (`adapter_id`, `adapter_source: local`). Routing stays with the
bank (`adapterbank serve --upstream URL` forwards each request with `model` set to the chosen module).
"""

from __future__ import annotations


def engine_commands(base: str, modules: dict[str, str], rank: int) -> dict:
    """{base, modules, vllm, lorax} for the modules (name -> exported folder) that run on `base`."""
    max_rank = 1 << max(3, (rank - 1).bit_length())  # vLLM takes powers of two from 8
    return {
        "base": base,
        "modules": modules,
        "vllm": f"vllm serve {base} --enable-lora --max-lora-rank {max_rank} --max-loras {len(modules)} --lora-modules "
                + " ".join(f"{name}={path}" for name, path in modules.items()),
        "lorax": {"launch": f"lorax-launcher --model-id {base}",
                  "requests": {name: {"adapter_id": path, "adapter_source": "local"} for name, path in modules.items()}},
    }
