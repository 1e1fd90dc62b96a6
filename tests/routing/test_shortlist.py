"""Large banks score classes in int8 and re-score a shortlist exactly (routing/methods.py): the same
decisions as an independent fp64 posterior on features that, like real kernel features, share a large
common component; the int8 copy never saved nor left stale; indexes saved before the centring derived again."""

import pytest
import torch

from adapterbank.routing import methods
from adapterbank.routing.index import RouterIndex
from adapterbank.routing.statistics import PACKED, pack_covariance, unpack_covariance

pytestmark = pytest.mark.skipif(not methods._int8_is_fast(torch.device("cpu")), reason="no fast int8 on this CPU")

DIM = 128


def _spectrum(dim: int) -> torch.Tensor:
    return torch.logspace(-4, -6, dim)


def _covariance(dim: int) -> dict:
    # an uneven spectrum, as real features have: the shrunk inverse weights a few directions 100x the others
    spectrum = _spectrum(dim)
    packed = dict(zip(PACKED, pack_covariance(torch.diag(spectrum))))
    return {**packed, "covariance": unpack_covariance(*packed.values())}


def _big_index(tasks: int, per_task: int, dim: int, common: float = 0.0) -> RouterIndex:
    """`common`: the weight of one direction every class mean shares (RBF kernel features of real text:
    about 0.96 of a unit vector), which made uncentred low-precision logits useless."""
    g = torch.Generator().manual_seed(0)
    packed = _covariance(dim)
    shared = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    index = RouterIndex.empty(dim)
    for k in range(tasks):
        own = torch.nn.functional.normalize(torch.randn(per_task, dim, generator=g), dim=-1)
        means = torch.nn.functional.normalize(common * shared + (1 - common) * own, dim=-1)
        index.add(f"t{k}", f"id{k}", {"means": means, "counts": torch.full((per_task,), 50.0), **packed,
                                      "score_quantiles": torch.zeros(101)})
    return index


def _fp64_decisions(index: RouterIndex, queries: torch.Tensor) -> torch.Tensor:
    """The best class by the textbook discriminant, uncentred, in fp64: independent of the fast path."""
    t = index.t
    covariance = t["scatter"] / t["total"]
    covariance = (1 - methods.SHRINKAGE) * covariance + methods.SHRINKAGE * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=torch.float64)
    means = t["means"].double()
    weights = torch.linalg.solve(covariance, means.T).T
    return (queries.double() @ weights.T - 0.5 * (weights * means).sum(-1)).argmax(-1)


def test_shortlisted_scores_decide_as_the_exact_ones(monkeypatch, tmp_path):
    index = _big_index(tasks=260, per_task=10, dim=DIM, common=0.96)  # 2,600 classes: over the shortlist's threshold
    g = torch.Generator().manual_seed(1)
    classes = torch.randint(0, 2600, (300,), generator=g)
    queries = index.t["means"][classes] + _spectrum(DIM).sqrt() * torch.randn(300, DIM, generator=g)  # the classes' spread
    fast = index.task_scores(queries)
    assert "_discriminant_int8" in index.t
    owner = index.t["owner"][_fp64_decisions(index, queries)]
    assert torch.equal(fast.argmax(-1), owner)
    assert (owner == index.t["owner"][classes]).float().mean() > 0.9  # a task to find, not noise
    monkeypatch.setattr(methods, "SHORTLIST_MIN_CLASSES", 10 ** 9)  # the exact path
    exact = index.task_scores(queries)
    assert torch.equal(exact.argmax(-1), owner)
    assert torch.allclose(fast.exp(), exact.exp(), atol=1e-3)
    index.save(tmp_path / "index.safetensors")  # the int8 copy is not saved, and the saved index loads
    loaded = RouterIndex.load(tmp_path / "index.safetensors")
    assert not [k for k in loaded.t if k.startswith("_")]
    # a task added after: the copy is derived again, not reused stale
    index.add("late", "late", {"means": torch.nn.functional.normalize(torch.ones(1, DIM), dim=-1),
                               "counts": torch.full((1,), 50.0), **_covariance(DIM),
                               "score_quantiles": torch.zeros(101)})
    monkeypatch.undo()  # the shortlist again, from its own threshold
    late = torch.nn.functional.normalize(torch.ones(1, DIM), dim=-1)
    assert index.task_names[int(index.task_scores(late).argmax())] == "late"


def test_an_index_saved_before_the_centring_is_derived_again(tmp_path):
    index = _big_index(tasks=30, per_task=10, dim=DIM, common=0.96)
    queries = index.t["means"][::7] + 0.01 * torch.randn(len(index.t["means"][::7]), DIM)
    expected = index.task_scores(queries)
    old = RouterIndex(list(index.task_names), list(index.task_ids), {k: v for k, v in index.t.items() if k != "centre"})
    old._fresh_weights = True  # saved as an earlier version did: derived matrices, but no centre
    old.save(tmp_path / "old.safetensors")
    loaded = RouterIndex.load(tmp_path / "old.safetensors")
    assert "centre" not in loaded.t
    assert torch.allclose(loaded.task_scores(queries), expected, atol=1e-4)
    assert "centre" in loaded.t
