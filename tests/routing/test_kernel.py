import json
import math

import numpy as np
import torch
from conftest import copy_bank

from adapterbank import AdapterBank
from adapterbank.routing.index import RouterIndex
from adapterbank.routing.kernel import KernelMap
from adapterbank.routing.statistics import ROUTER_FILE, class_statistics
from safetensors.torch import load_file


def test_the_map_is_rebuilt_from_its_seed_with_numpys_frozen_stream():
    kernel = KernelMap(input_dim=3, features=5, width=2.0, seed=7)
    x = torch.tensor([[0.1, -0.2, 0.3], [1.0, 0.0, -1.0]])
    state = np.random.RandomState(7)  # the legacy stream: the same numbers on every machine and version
    weight = torch.from_numpy(state.standard_normal((3, 5)) / 2.0).float()
    phase = torch.from_numpy(state.uniform(0, 2 * math.pi, 5)).float()
    assert torch.allclose(kernel(x), math.sqrt(2 / 5) * torch.cos(x @ weight + phase), atol=1e-6)
    assert torch.equal(kernel(x), KernelMap(3, 5, 2.0, 7)(x))
    assert not torch.equal(kernel(x), KernelMap(3, 5, 2.0, 8)(x))


def test_inner_products_of_the_map_approximate_the_gaussian_kernel():
    kernel = KernelMap(input_dim=4, features=8192, width=1.5)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 4, generator=g) * 0.8, torch.randn(20, 4, generator=g) * 0.8
    approx = (kernel(x) * kernel(y)).sum(-1)
    exact = torch.exp(-((x - y) ** 2).sum(-1) / (2 * 1.5 ** 2))
    assert (approx - exact).abs().max() < 0.05


def test_in_kernel_space_a_shared_covariance_separates_classes_that_share_a_mean():
    """XOR-like classes: each class is two blobs on opposite corners, so both classes (and both tasks) have
    the same mean and LDA on raw features is at chance; in the kernel space the router separates them."""
    g = torch.Generator().manual_seed(0)

    def blobs(corners, n=60):
        return torch.cat([torch.tensor(c) + 0.15 * torch.randn(n, 2, generator=g) for c in corners])

    diagonal, anti = blobs([[1.0, 1.0], [-1.0, -1.0]]), blobs([[1.0, -1.0], [-1.0, 1.0]])
    queries = torch.tensor([[0.9, 1.1], [-1.0, -0.9], [1.1, -0.9], [-0.9, 1.0]])
    kernel = KernelMap(input_dim=2, features=512, width=0.7)

    def routed(transform, method="mahalanobis"):
        index = RouterIndex.empty(transform(queries).shape[1])
        index.add("diagonal", "d", class_statistics(transform(diagonal), [0] * len(diagonal), 1))
        index.add("anti", "a", class_statistics(transform(anti), [0] * len(anti), 1))
        return [r.tasks[0] for r in index.route(transform(queries), ood_quantile=0, method=method)]

    assert routed(kernel) == ["diagonal", "diagonal", "anti", "anti"]
    assert routed(lambda x: x) != ["diagonal", "diagonal", "anti", "anti"]
    # each task's own covariance (the default's second stage) tells them apart even on raw features: the two
    # tasks share a mean but spread along different diagonals
    assert routed(lambda x: x, "task-covariance") == ["diagonal", "diagonal", "anti", "anti"]


def test_a_new_classifier_bank_keeps_its_router_statistics_in_the_kernel_space(tmp_path, classifier_template):
    bank_dir = copy_bank(classifier_template, tmp_path / "bank")
    manifest = json.loads((bank_dir / "bank.json").read_text())
    spec = manifest["router"]["kernel"]
    hidden = manifest["base"]["hidden_size"]
    pools = len(manifest["backbone"]["router_layers"])
    assert spec["input_dim"] == pools * hidden and spec["features"] == min(2048, 4 * pools * hidden)
    assert manifest["router"]["feature_dim"] == spec["features"]
    bank = AdapterBank.open(bank_dir, device="cpu")
    assert bank.router_features(["aaaa bcd"]).shape == (1, spec["features"])
    stats = load_file(str(bank_dir / "tasks" / "alpha" / ROUTER_FILE))
    assert stats["means"].shape[1] == spec["features"]
    # the stored covariance factor fits the byte budget whatever the dimension
    assert stats["covariance_factor"].numel() <= 900_000
