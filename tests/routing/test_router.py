import pytest
import torch

from adapterbank.routing import methods
from adapterbank.routing.index import RouterIndex, save_index, sync_index
from adapterbank.routing.statistics import class_statistics, save_statistics
from adapterbank.store.registry import INDEX_FILE


def _gaussian_task(centres: list[list[float]], per_class: int, seed: int, spread: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.tensor(c) + spread * torch.randn(per_class, len(c), generator=g) for c in centres])
    targets = [i for i in range(len(centres)) for _ in range(per_class)]
    return x, targets


def test_class_statistics_means_counts_covariance_and_leave_one_out_quantiles():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    stats = class_statistics(x, [0, 0, 1, 1], 2, held_out_scope=False)  # the cosine table (causal banks)
    assert torch.allclose(stats["means"], torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert stats["counts"].tolist() == [2.0, 2.0]
    # within-class scatter / n: each class contributes (+-1)^2 on its own axis
    assert torch.allclose(stats["covariance"].float(), torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    # leave-one-out: each text's own class mean without it is the other text, on the same axis -> cosine 1
    assert torch.allclose(stats["score_quantiles"], torch.ones(101))


def _index(method_tasks: dict[str, tuple[torch.Tensor, list[int], int]]) -> RouterIndex:
    index = RouterIndex.empty(next(iter(method_tasks.values()))[0].shape[1])
    for i, (name, (x, targets, n)) in enumerate(method_tasks.items()):
        index.add(name, f"id{i}", class_statistics(x, targets, n))
    return index


def test_both_methods_route_to_the_task_of_the_nearest_class():
    east = _gaussian_task([[1.0, 0.0, 0.0], [0.7, 0.7, 0.0]], 30, 0)
    up = _gaussian_task([[0.0, 0.0, 1.0], [0.0, -0.7, 0.7]], 30, 1)
    index = _index({"east": (*east, 2), "up": (*up, 2)})
    queries = torch.tensor([[0.95, 0.05, 0.0], [0.0, 0.1, 1.0], [0.6, 0.8, 0.0], [0.0, -0.6, 0.8]])
    for method in ("prototype", "mahalanobis"):
        routes = index.route(queries, top_k=2, method=method, ood_quantile=0.0)
        assert [r.tasks[0] for r in routes] == ["east", "up", "east", "up"], method
        for route in routes:
            assert len(route.tasks) == 2 and route.probabilities == sorted(route.probabilities, reverse=True)
            assert abs(sum(route.probabilities) - 1.0) < 1e-4


def test_mahalanobis_uses_the_shared_covariance_where_cosine_fails():
    # classes stretched along y: a point far along y from its class is still that class; cosine disagrees
    a = _gaussian_task([[1.0, 0.0]], 200, 0, spread=0.02)
    a[0][:, 1] *= 50  # large spread in y, tiny in x
    b = _gaussian_task([[0.6, 0.8]], 200, 1, spread=0.02)
    b[0][:, 1] = (b[0][:, 1] - 0.8) * 50 + 0.8
    index = _index({"a": (*a, 1), "b": (*b, 1)})
    query = torch.tensor([[1.0, 0.9]])  # x says a (1.0 vs 0.6), y is uninformative
    assert index.route(query, method="mahalanobis", ood_quantile=0.0)[0].tasks == ["a"]
    assert index.route(query, method="prototype", ood_quantile=0.0)[0].tasks == ["b"]


def test_out_of_scope_threshold_rejects_a_text_far_from_every_class():
    east = _gaussian_task([[1.0, 0.0, 0.0], [0.7, 0.7, 0.0]], 50, 0, spread=0.05)
    index = _index({"east": (*east, 2)})
    near, far = torch.tensor([[0.98, 0.05, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    assert index.route(near, ood_quantile=0.05)[0].in_scope
    assert not index.route(far, ood_quantile=0.05)[0].in_scope
    assert index.route(far, ood_quantile=0.0)[0].in_scope  # 0 turns the threshold off


def test_index_is_saved_reused_extended_and_rebuilt(tmp_path):
    tasks = {}
    for i, name in enumerate(["a", "b", "c"]):
        directory = tmp_path / "tasks" / name
        directory.mkdir(parents=True)
        x, targets = _gaussian_task([[float(i == 0), float(i == 1), float(i == 2)]], 20, i)
        save_statistics(directory, class_statistics(x, targets, 1))
        tasks[name] = (f"id-{name}", directory)
    first = sync_index(tmp_path, {k: tasks[k] for k in ["a", "b"]}, 3)
    assert not (tmp_path / INDEX_FILE).exists() and first.task_names == ["a", "b"]  # reading never writes
    assert save_index(tmp_path, first) is None and (tmp_path / INDEX_FILE).exists()  # the writers save it
    extended = sync_index(tmp_path, tasks, 3)  # only an addition: extended from the saved index
    assert extended.task_names == ["a", "b", "c"]
    save_index(tmp_path, extended)
    reloaded = RouterIndex.load(tmp_path / INDEX_FILE)
    assert reloaded.task_ids == ["id-a", "id-b", "id-c"]
    query = torch.tensor([[0.0, 0.0, 1.0]])
    assert reloaded.route(query, ood_quantile=0)[0].tasks == ["c"]
    removed = sync_index(tmp_path, {k: tasks[k] for k in ["a", "c"]}, 3)  # a removal: rebuilt from task files
    assert removed.task_names == ["a", "c"] and removed.route(query, ood_quantile=0)[0].tasks == ["c"]
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")  # a damaged index is rebuilt, never trusted
    assert sync_index(tmp_path, tasks, 3).task_names == ["a", "b", "c"]


def test_router_files_keep_the_covariance_in_under_a_megabyte_and_old_files_still_load(tmp_path):
    from safetensors.torch import save_file

    from adapterbank.routing.statistics import ROUTER_FILE, load_statistics

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1152, generator=g) @ torch.randn(1152, 1152, generator=g) * 0.05  # MiniLM's feature width
    targets = [i % 10 for i in range(400)]
    stats = class_statistics(x, targets, 10)
    save_statistics(tmp_path, stats)
    assert (tmp_path / ROUTER_FILE).stat().st_size < 1024 * 1024  # 2.65 MB as a full fp16 matrix
    assert torch.equal(load_statistics(tmp_path)["covariance"], stats["covariance"])  # rounded alike in memory and on disk
    centred = x - stats["means"][torch.tensor(targets)]
    exact = centred.T @ centred / len(x)
    assert (stats["covariance"] - exact).norm() / exact.norm() < 0.02  # int8 rounding of the factor only (rank 390)
    values = torch.linalg.eigvalsh(stats["covariance"].double())
    assert values.min() > -1e-6 * values.max()  # positive semi-definite, whatever the rounding
    big = torch.randn(3000, 1152, generator=g)  # full rank: the spectrum beyond the stored factor is spread evenly
    wide = class_statistics(big, [i % 10 for i in range(3000)], 10)["covariance"]
    assert abs(wide.trace() - (big - big.mean(0)).pow(2).sum() / 3000) < 0.05 * wide.trace()
    old = {k: v for k, v in stats.items() if not k.startswith("covariance")}
    save_file({**old, "covariance": exact.half()}, str(tmp_path / ROUTER_FILE))  # a file written before compact storage
    assert torch.equal(load_statistics(tmp_path)["covariance"], exact.half())


def test_int8_shortlist_is_asked_for_on_cpus_with_fbgemm_vector_kernels(monkeypatch):
    """AVX2-only CPUs shortlist too (int8 2x faster than fp32 there); no vector kernels or a GPU: fp32."""
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("no x86 quantised engine in this torch build")
    answers = {}
    for capability in ("AVX512", "AVX2", "DEFAULT"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        methods._int8_is_fast_on.cache_clear()
        answers[capability] = methods._int8_is_fast(torch.device("cpu"))
    answers["cuda"] = methods._int8_is_fast_on("cuda")
    methods._int8_is_fast_on.cache_clear()  # the real CPU's answer again for the tests after this one
    assert answers == {"AVX512": True, "AVX2": True, "DEFAULT": False, "cuda": False}
