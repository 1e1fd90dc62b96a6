"""Router methods: how a task's evidence is scored from the index's class statistics (a registry).

Each method derives what it needs from the index once (`derive`, saved with the index) and scores a
batch of features against every class of every task (`task_scores`: log-probabilities over tasks).

- `mahalanobis` (default, measured best): Gaussian classes with one covariance shared by all tasks,
  pooled from every task's statistics and shrunk toward a scaled identity; a task's evidence is the
  log-sum of its classes' likelihoods.
- `prototype`: cosine similarity to the nearest class mean; a task scores its best class.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # torch is imported by the methods, so the CLI can list them without loading it
    import torch

DEFAULT_METHOD = "mahalanobis"
# out of scope: a text scoring below this quantile of its task's own (held-out) texts gets no task (scope.py).
# Classification: chosen on validation (CLINC150 refuses 3.0 % of its in-scope validation texts, a fifth of Banking77's
# training texts 2.1 %); causal banks keep the earlier 1 % (a prompt refused there is answered by the base; not re-measured)
DEFAULT_OOD_QUANTILE = 0.02
DEFAULT_PROMPT_OOD_QUANTILE = 0.01
SHRINKAGE = 0.02  # weight of the scaled identity in the pooled covariance (measured: 0.02-0.05 best on CLINC150)
PROTOTYPE_TEMPERATURE = 0.05
# large banks: classes scored in bf16 first, the best SHORTLIST of each text again in fp32 (see _shortlisted_logits)
SHORTLIST_MIN_CLASSES = 2048
SHORTLIST = 8


class RouterMethod:
    name: ClassVar[str]
    summary: ClassVar[str]

    def derive(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Matrices computed once per index from its class statistics (`means`, `scatter`, `total`, ...)."""
        return {}

    def task_scores(self, t: dict[str, torch.Tensor], x: torch.Tensor, n_tasks: int) -> torch.Tensor:
        """[B, n_tasks] unnormalised log-evidence per task."""
        raise NotImplementedError


METHODS: dict[str, RouterMethod] = {}


def register(cls: type[RouterMethod]) -> type[RouterMethod]:
    METHODS[cls.name] = cls()
    return cls


@register
class Mahalanobis(RouterMethod):
    name = "mahalanobis"
    summary = "Gaussian classes with one shared, shrunk covariance (default)"

    def derive(self, t):
        import torch

        means = t["means"]
        dim = means.shape[1]
        covariance = (t["scatter"] / t["total"].clamp_min(1)).float()
        covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * covariance.diagonal().mean().clamp_min(1e-6) * torch.eye(dim)
        weights = torch.linalg.solve(covariance, means.T).T if len(means) else means
        return {"discriminant": weights.contiguous(), "bias": -0.5 * (weights * means).sum(-1)}

    def task_scores(self, t, x, n_tasks):
        if len(t["bias"]) >= SHORTLIST_MIN_CLASSES and _bf16_is_fast(x.device):
            logits = _shortlisted_logits(t, x)
        else:
            logits = x @ t["discriminant"].T + t["bias"]
        peak = logits.max(-1, keepdim=True).values
        evidence = logits.new_zeros(x.shape[0], n_tasks)
        evidence.index_add_(1, t["owner"], (logits - peak).exp())
        return evidence.clamp_min(1e-30).log()


def _shortlisted_logits(t, x):
    """Every class's logit in bf16 (4x faster on CPUs with bf16 units: 20 -> 5 ms for 64 texts x 10,150
    classes), then the SHORTLIST best of each row exactly in fp32. The best class is exact unless bf16 error
    moved it out of the shortlist; the other classes only add their (tiny) share to their task's evidence."""
    import torch

    if "_discriminant_bf16" not in t:  # derived in memory, never saved (index.py skips `_` keys)
        t["_discriminant_bf16"] = t["discriminant"].to(torch.bfloat16)
    logits = (x.to(torch.bfloat16) @ t["_discriminant_bf16"].T).float() + t["bias"]
    shortlist = logits.topk(min(SHORTLIST, logits.shape[1]), dim=-1).indices
    exact = torch.einsum("bd,bkd->bk", x, t["discriminant"][shortlist]) + t["bias"][shortlist]
    return logits.scatter_(1, shortlist, exact)


def _bf16_is_fast(device) -> bool:
    return _bf16_is_fast_on(device.type)


@lru_cache(maxsize=None)
def _bf16_is_fast_on(device_type: str) -> bool:
    """Asked once per device type, not on every routed batch."""
    import torch

    if device_type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # AVX512-BF16 / AMX: a fast bf16 GEMM
    except (AttributeError, RuntimeError):
        return False


@register
class Prototype(RouterMethod):
    name = "prototype"
    summary = "cosine similarity to the nearest class mean"

    def task_scores(self, t, x, n_tasks):
        import torch

        similarity = torch.nn.functional.normalize(x, dim=-1) @ t["prototypes"].T / PROTOTYPE_TEMPERATURE
        per_task = similarity.new_full((x.shape[0], n_tasks), -float("inf"))
        per_task.scatter_reduce_(1, t["owner"].expand_as(similarity), similarity, reduce="amax")
        return per_task
