import torch

from adapterbank.routing import PrototypeRouter, class_statistics, load_statistics, save_statistics


def test_class_statistics_are_per_class_means_in_label_order():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 3.0]])
    stats = class_statistics(embeddings, ["b", "a", "b", "a"], ["b", "a"])
    assert torch.allclose(stats["prototypes"], torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert stats["counts"].tolist() == [2.0, 2.0]


def test_router_picks_task_of_nearest_class_and_ranks_candidates():
    router = PrototypeRouter()
    router.add_task("east", {"prototypes": torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.7, 0.0]])})
    router.add_task("up", {"prototypes": torch.tensor([[0.0, 0.0, 1.0]])})
    router.add_task("north", {"prototypes": torch.tensor([[0.0, 1.0, 0.0]])})
    routes = router.route(torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 1.0], [0.1, 1.0, 0.0]]), top_k=2)
    assert [r.tasks[0] for r in routes] == ["east", "up", "north"]
    assert routes[2].tasks == ["north", "east"]  # east's second prototype is close to north
    for route in routes:
        assert route.probabilities == sorted(route.probabilities, reverse=True)
        assert 0.5 < route.probabilities[0] <= 1.0 and sum(route.probabilities) <= 1.0 + 1e-6


def test_top_k_is_capped_and_empty_router_routes_nowhere():
    router = PrototypeRouter()
    assert router.route(torch.ones(2, 3))[0].tasks == []
    router.add_task("only", {"prototypes": torch.ones(1, 3)})
    route = router.route(torch.ones(1, 3), top_k=5)[0]
    assert route.tasks == ["only"] and abs(route.probabilities[0] - 1.0) < 1e-6


def test_statistics_round_trip_through_safetensors(tmp_path):
    stats = {"prototypes": torch.randn(3, 4), "counts": torch.tensor([1.0, 2.0, 3.0])}
    save_statistics(tmp_path, stats)
    loaded = load_statistics(tmp_path)
    assert torch.equal(loaded["prototypes"], stats["prototypes"]) and torch.equal(loaded["counts"], stats["counts"])


def test_length_batches_group_similar_lengths_and_vary_per_epoch():
    import random

    from adapterbank.encoding import length_batches

    token_ids = [[0] * (i % 5 + 1) for i in range(40)]
    fixed = length_batches(token_ids, 4)
    assert fixed == length_batches(token_ids, 4) and sorted(i for b in fixed for i in b) == list(range(40))
    assert all(len({len(token_ids[i]) for i in batch}) == 1 for batch in fixed)  # 8 texts of each length
    rng = random.Random(0)
    epochs = [length_batches(token_ids, 4, rng) for _ in range(2)]
    assert {frozenset(b) for b in epochs[0]} != {frozenset(b) for b in epochs[1]}
    assert all(sorted(i for b in e for i in b) == list(range(40)) for e in epochs)
