"""Large banks score classes in bf16 and re-score a shortlist exactly (routing/methods.py): the same
decisions as the exact scores, and the bf16 copy never saved nor left stale."""

import pytest
import torch

from adapterbank.routing import methods
from adapterbank.routing.index import RouterIndex
from adapterbank.routing.statistics import PACKED, pack_covariance, unpack_covariance

pytestmark = pytest.mark.skipif(not methods._bf16_is_fast(torch.device("cpu")), reason="no fast bf16 on this CPU")


def _covariance(dim: int) -> dict:
    packed = dict(zip(PACKED, pack_covariance(torch.eye(dim) / dim)))
    return {**packed, "covariance": unpack_covariance(*packed.values())}


def _big_index(tasks: int, per_task: int, dim: int) -> RouterIndex:
    g = torch.Generator().manual_seed(0)
    packed = _covariance(dim)
    index = RouterIndex.empty(dim)
    for k in range(tasks):
        means = torch.nn.functional.normalize(torch.randn(per_task, dim, generator=g), dim=-1)
        index.add(f"t{k}", f"id{k}", {"means": means, "counts": torch.full((per_task,), 50.0), **packed,
                                      "score_quantiles": torch.zeros(101)})
    return index


def test_shortlisted_scores_decide_as_the_exact_ones(monkeypatch, tmp_path):
    index = _big_index(tasks=260, per_task=10, dim=64)  # 2,600 classes: over the shortlist's threshold
    g = torch.Generator().manual_seed(1)
    queries = index.t["means"][torch.randint(0, 2600, (200,), generator=g)] + 0.05 * torch.randn(200, 64, generator=g)
    fast = index.task_scores(queries)
    assert "_discriminant_bf16" in index.t
    monkeypatch.setattr(methods, "SHORTLIST_MIN_CLASSES", 10 ** 9)  # the exact path
    exact = index.task_scores(queries)
    assert torch.equal(fast.argmax(-1), exact.argmax(-1))
    assert torch.allclose(fast.exp(), exact.exp(), atol=1e-3)
    index.save(tmp_path / "index.safetensors")  # the bf16 copy is not saved, and the saved index loads
    loaded = RouterIndex.load(tmp_path / "index.safetensors")
    assert not [k for k in loaded.t if k.startswith("_")]
    # a task added after: the copy is derived again, not reused stale
    index.add("late", "late", {"means": torch.nn.functional.normalize(torch.ones(1, 64), dim=-1),
                               "counts": torch.full((1,), 50.0), **_covariance(64),
                               "score_quantiles": torch.zeros(101)})
    monkeypatch.setattr(methods, "SHORTLIST_MIN_CLASSES", 2048)
    late = torch.nn.functional.normalize(torch.ones(1, 64), dim=-1)
    assert index.task_names[int(index.task_scores(late).argmax())] == "late"
