import torch

from adapterbank.core.backbone import SplitEncoder
from adapterbank.core.encoding import collate, mean_pool, tokenize
from adapterbank.core.models import load_base


def test_lower_then_upper_equals_one_full_pass_and_router_reads_lower_layers(tiny_base):
    base = load_base(tiny_base, torch.device("cpu"))
    ids, mask = collate(tokenize(base.tokenizer, ["abc def", "a much longer text here", "x"]), 0, torch.device("cpu"))
    split = SplitEncoder(base.model, upper_layers=1)
    with torch.no_grad():
        full = base.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        lower = split.lower(ids, mask)
        upper = split.upper(lower.hidden, lower.mask)
    assert torch.allclose(upper[mask.bool()], full.last_hidden_state[mask.bool()], atol=1e-5)
    expected = torch.cat([torch.nn.functional.normalize(mean_pool(full.hidden_states[i], mask), dim=-1)
                          for i in split.router_layers], -1)
    assert torch.allclose(lower.router_features, expected, atol=1e-5)
    assert split.upper_indices == [1] and split.router_layers == [0, 1]
