"""task-covariance (routing/methods.py): its Woodbury second stage gives each text's best tasks the
posterior an independent dense computation gives (blended covariance, inverted and its determinant taken
in fp64); it moves decisions toward the task whose texts spread the text's way; it recomputes after a task
is added; texts with a candidate that stores no factor keep the first stage."""

import math

import pytest
import torch

from adapterbank.routing import methods
from adapterbank.routing.index import RouterIndex
from adapterbank.routing.statistics import PACKED, class_statistics

DIM = 24


def _task(g, shift: torch.Tensor, spread: torch.Tensor, n_classes: int = 3, per_class: int = 60, centres=None) -> tuple:
    """Features of one task: class centres around `shift` (or `centres`), texts spread along `spread` (per dimension)."""
    centres = shift + 0.5 * torch.randn(n_classes, DIM, generator=g) if centres is None else centres
    rows = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[rows] + spread * torch.randn(len(rows), DIM, generator=g), rows.tolist(), n_classes


def _index(tasks, scope=True) -> RouterIndex:
    index = RouterIndex.empty(DIM)
    for k, (x, rows, n) in enumerate(tasks):
        index.add(f"t{k}", f"id{k}", class_statistics(x, rows, n, held_out_scope=scope))
    return index


def _dense(index: RouterIndex, x: torch.Tensor, task: int) -> torch.Tensor:
    """log-evidence of `task` for each row of x: log-sum of its classes' Gaussian likelihoods under the blend."""
    t, a, r = index.t, methods.TASK_BLEND, methods.BLEND_RANK
    shared = methods.shared_covariance(t).double()
    factor, scales, _ = index.parts.factor(index.task_names[task], index.task_ids[task])
    f = factor[:, :r].double() * scales[:r].double()
    blended = (1 - a) * shared + a * f @ f.T
    means = t["means"][t["owner"] == task].double()
    diff = x.double().unsqueeze(1) - means.unsqueeze(0)
    d = torch.einsum("bcd,de,bce->bc", diff, torch.linalg.inv(blended), diff)
    return torch.logsumexp(-0.5 * d, -1) - 0.5 * torch.logdet(blended)


def _spreads():
    narrow = torch.full((DIM,), 0.3)
    wide = narrow.clone()
    wide[: DIM // 2] = 1.5  # this task's texts spread along the first half of the dimensions
    return narrow, wide


@pytest.mark.parametrize("classes", [(3, 3, 3, 3, 3), (3, 5, 2, 4, 3)])  # candidates of unequal width in one batch
def test_second_stage_equals_the_dense_blended_posterior(monkeypatch, classes):
    monkeypatch.setattr(methods, "RESCORE_WITHIN", float("inf"))  # every candidate re-scored, however far behind
    g = torch.Generator().manual_seed(0)
    narrow, wide = _spreads()
    tasks = [_task(g, torch.randn(DIM, generator=g) * 0.6, spread, n)
             for spread, n in zip((narrow, wide, narrow, wide, narrow), classes)]
    index = _index(tasks)
    x = torch.cat([tasks[i][0][:8] for i in range(5)])
    first = index.task_scores(x, method="mahalanobis")
    refined = index.task_scores(x, method="task-covariance")
    top = first.topk(methods.RESCORED, -1).indices
    assert torch.equal(refined.topk(1, -1).values.isfinite(), torch.ones(len(x), 1, dtype=torch.bool))
    dense = torch.stack([_dense(index, x, task) for task in range(5)], -1)
    expected = torch.log_softmax(dense.gather(1, top), -1)
    got = torch.log_softmax(refined.gather(1, top), -1)
    assert torch.allclose(got.double(), expected, atol=2e-3)
    # the candidates keep the first stage's share of probability; the other tasks keep theirs
    assert torch.allclose(refined.exp().sum(-1), torch.ones(len(x)), atol=1e-5)
    rest = torch.ones_like(first, dtype=torch.bool).scatter(1, top, False)
    assert torch.equal(refined[rest], first[rest])


def test_a_task_that_spreads_the_texts_way_wins_it_back():
    """Two tasks with the same class centres: one's texts spread widely along half the dimensions. A text
    far out along them is the wide task's; the shared covariance alone cannot tell, the blend can."""
    g = torch.Generator().manual_seed(1)
    narrow, wide = _spreads()
    centres = 0.5 * torch.randn(3, DIM, generator=g)
    tasks = [_task(g, None, narrow, centres=centres), _task(g, None, wide, centres=centres), _task(g, centres[0] + 3.0, narrow)]
    index = _index(tasks)
    x = tasks[1][0]  # texts of the wide task

    def hits(method):
        return (index.task_scores(x, method=method).argmax(-1) == 1).float().mean().item()

    assert hits("task-covariance") > 0.9 > hits("mahalanobis") + 0.2


def test_recomputed_after_a_task_is_added_and_skipped_without_factors(monkeypatch):
    monkeypatch.setattr(methods, "RESCORE_WITHIN", float("inf"))
    g = torch.Generator().manual_seed(2)
    narrow, wide = _spreads()
    tasks = [_task(g, torch.randn(DIM, generator=g), spread) for spread in (narrow, wide, narrow)]
    index = _index(tasks[:2])
    x = tasks[0][0][:5]
    index.task_scores(x, method="task-covariance")
    assert set(index.cache["task_blends"]) == {"id0", "id1"}
    index.add("t2", "id2", class_statistics(*tasks[2]))
    assert index.task_scores(x, method="task-covariance").shape == (5, 3)
    dense = torch.stack([_dense(index, x, task) for task in range(3)], -1)  # under the new shared covariance
    got = index.task_scores(x, method="task-covariance")
    assert torch.allclose(got.double().exp(), torch.softmax(dense, -1), atol=2e-3)  # all 3 tasks re-scored
    # tasks whose statistics keep a cosine table (causal banks, online pseudo-tasks): the first stage, unchanged
    cosine = _index(tasks, scope=False)
    assert torch.equal(cosine.task_scores(x, method="task-covariance"), cosine.task_scores(x, method="mahalanobis"))
    assert PACKED[0] in class_statistics(*tasks[0]) and math.isfinite(float(got.max()))


def test_candidates_far_behind_keep_the_first_stage():
    """A candidate more than RESCORE_WITHIN nats behind the best was floored, not ranked, by the first stage:
    a text whose other candidates are all that far keeps the first stage's scores; one with a close
    candidate is re-scored."""
    g = torch.Generator().manual_seed(3)
    narrow, wide = _spreads()
    centres = 0.5 * torch.randn(3, DIM, generator=g)
    tasks = [_task(g, None, narrow, centres=centres), _task(g, None, wide, centres=centres), _task(g, centres[0] + 30.0, narrow)]
    index = _index(tasks)
    x = torch.cat([tasks[2][0][:5], tasks[1][0][:5]])  # far from the other tasks; between two overlapping tasks
    first, second = index.task_scores(x, method="mahalanobis"), index.task_scores(x, method="task-covariance")
    gaps = first.topk(2, -1).values
    far = (gaps[:, 0] - gaps[:, 1]) > methods.RESCORE_WITHIN
    assert far[:5].all() and not far[5:].any()
    assert torch.equal(second[:5], first[:5]) and not torch.equal(second[5:], first[5:])


def test_label_scores_are_the_class_posterior_within_the_task():
    """RouterIndex.label_scores: the task's classes only, in its label order. task-covariance gives the posterior of
    the blended covariance (the dense fp64 one: the determinant is the task's, so it cancels among its classes);
    mahalanobis the shared covariance's; a cosine-table task falls back to it; prototype scores no classes."""
    g = torch.Generator().manual_seed(4)
    narrow, wide = _spreads()
    tasks = [_task(g, torch.randn(DIM, generator=g), spread) for spread in (narrow, wide, narrow)]
    index = _index(tasks)
    x = torch.cat([tasks[1][0][:6], tasks[0][0][:6]])
    t = index.t
    block = (t["owner"] == 1).nonzero().squeeze(1)
    means, shared = t["means"][block].double(), methods.shared_covariance(t).double()
    a, r = methods.TASK_BLEND, methods.BLEND_RANK
    factor, scales, _ = index.parts.factor("t1", "id1")
    f = factor[:, :r].double() * scales[:r].double()
    for method, covariance in (("task-covariance", (1 - a) * shared + a * f @ f.T), ("mahalanobis", shared)):
        diff = x.double().unsqueeze(1) - means.unsqueeze(0)
        d = torch.einsum("bcd,de,bce->bc", diff, torch.linalg.inv(covariance), diff)
        got = index.label_scores(x, "t1", method)
        assert got.shape == (12, 3) and torch.allclose(got.double(), torch.log_softmax(-0.5 * d, -1), atol=2e-3), method
    assert not torch.allclose(index.label_scores(x, "t1", "task-covariance"), index.label_scores(x, "t1", "mahalanobis"), atol=1e-2)
    cosine = _index(tasks, scope=False)
    assert torch.equal(cosine.label_scores(x, "t1", "task-covariance"), cosine.label_scores(x, "t1", "mahalanobis"))
    assert index.label_scores(x, "t1", "prototype") is None and index.label_scores(x, "nope", "mahalanobis") is None
