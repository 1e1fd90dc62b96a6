"""A tiny random Llama with a byte-level tokenizer (any text tokenizes), and small domain corpora."""

from __future__ import annotations

import random
from pathlib import Path


def write_tiny_llama(directory: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


DOMAIN_WORDS = {"alpha": "abcdef", "beta": "ghijkl", "gamma": "mnopqr"}


def domain_texts(domain: str, count: int, seed: int) -> list[str]:
    """Texts made of words over the domain's letters, with a repeated pattern a module can learn."""
    rng = random.Random(f"{domain}-{seed}")
    letters = DOMAIN_WORDS[domain]
    texts = []
    for _ in range(count):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(4, 9))]
        texts.append(" ".join(words) + " " + letters[:3] + ".")
    return texts
