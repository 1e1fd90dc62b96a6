"""Router methods: how a task's evidence is scored from the index's class statistics (a registry).

Each method derives what it needs from the index once (`derive`, saved with the index) and scores a
batch of features against every class of every task (`task_scores`: log-probabilities over tasks).

- `task-covariance` (default for classification banks, measured best): `mahalanobis`, then each text's
  best tasks scored again with the task's own stored covariance blended into the shared one.
- `mahalanobis` (default for causal banks): Gaussian classes with one covariance shared by all tasks,
  pooled from every task's statistics and shrunk toward a scaled identity; a task's evidence is the
  log-sum of its classes' likelihoods.
- `prototype`: cosine similarity to the nearest class mean; a task scores its best class.

The Gaussian methods also score the classes within one task (`class_scores`): a classification bank
multiplies its module's label probabilities by that posterior (DEFAULT_LABEL_WEIGHT, classify/inference.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # torch is imported by the methods, so the CLI can list them without loading it
    import torch

DEFAULT_METHOD = "task-covariance"  # classification banks (chosen on validation, see TaskCovariance)
DEFAULT_PROMPT_METHOD = "mahalanobis"  # causal banks: their tasks keep a cosine out-of-scope table and no second stage
# out of scope: a text scoring below this quantile of its task's own (held-out) texts gets no task (scope.py).
# Classification: chosen on validation (CLINC150 refuses 3.0 % of its in-scope validation texts, a fifth of Banking77's
# training texts 2.1 %); causal banks keep the earlier 1 % (a prompt refused there is answered by the base; not re-measured)
DEFAULT_OOD_QUANTILE = 0.02
# a classification bank's answer: the module's label probabilities times the router's posterior over the task's classes
# to this power (0: the module alone, as banks made before this weight have it). Chosen on validation
# (benchmarks/label_fusion.py: CLINC150's validation split and a fifth of Banking77's training texts, each with all
# training texts and with 10 a label): the best mean routed accuracy over those four sets (88.76 % alone, 88.93 here).
# With all texts the mean is flat from 0.02 to 0.3 (+0.4 points), but with 10 texts a label the router's class
# posterior is too sure of itself and those weights lose 0.4-0.8 points on Banking77; 0.005 and 0.01 lose on none
DEFAULT_LABEL_WEIGHT = 0.01
DEFAULT_PROMPT_OOD_QUANTILE = 0.01
SHRINKAGE = 0.02  # weight of the scaled identity in the pooled covariance (measured: 0.02-0.05 best on CLINC150)
PROTOTYPE_TEMPERATURE = 0.05
# banks of SHORTLIST_MIN_CLASSES classes or more: classes scored in int8 first, the best SHORTLIST of each text again
# in fp32 (see _shortlisted_logits). Measured (benchmarks/shortlist_recall.py): route for 64 texts 0.64 -> 0.47 ms at
# 227 classes, 1.9 -> 0.58 at 1,027, with the same decisions; below ~25 tasks the fp32 product costs next to nothing.
# On an AVX2-only CPU the shortlist only pays from ~1,000 classes (4.7 -> 4.9 ms at 527, 7.5 -> 6.9 at 1,027): one
# threshold for both (at most ~0.2 ms lost between 256 and 1,000 classes there), not one per instruction set
SHORTLIST_MIN_CLASSES = 256
SHORTLIST = 8
INT8_CPU_CAPABILITIES = ("AVX2", "AVX512")  # torch.backends.cpu.get_cpu_capability() values with fbgemm's int8 kernels
# a class more than this many nats below a text's best adds nothing (exp underflows): flooring it first keeps exp off
# its slow path for huge negative inputs (64 texts x 10,150 classes: 2.8 -> 0.26 ms) and changes no decision
EVIDENCE_FLOOR = -80.0
TASK_EVIDENCE_MIN = 1e-30  # a task's evidence is floored here (log: -69 nats), so tasks further behind tie
# task-covariance's second stage, chosen on validation (benchmarks/task_covariance.py, task_covariance_router.py: CLINC150's
# validation split and a fifth of Banking77's training texts; task routing 96.4 -> 97.1 % and 92.5 -> 93.1 %)
TASK_BLEND = 0.6  # weight of a task's own covariance against the shared one
BLEND_RANK = 48  # columns of the task's stored factor that enter its blend
RESCORED = 3  # each text's best tasks re-scored ...
# ... those of them within this many nats of the best: the first stage floors a task's evidence 69 nats below the best
# class (TASK_EVIDENCE_MIN), so candidates beyond are ties it did not rank; on validation no decision moved from a gap
# over 61
RESCORE_WITHIN = 65.0
BLEND_CACHED = 256  # tasks whose blend is kept in memory (0.4 MB each on MiniLM, 10 classes)


class RouterMethod:
    name: ClassVar[str]
    summary: ClassVar[str]
    derived: ClassVar[tuple[str, ...]] = ()  # the keys `derive` returns: a saved index without them is derived again

    def derive(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Matrices computed once per index from its class statistics (`means`, `scatter`, `total`, ...)."""
        return {}

    def task_scores(self, t: dict[str, torch.Tensor], x: torch.Tensor, n_tasks: int) -> torch.Tensor:
        """[B, n_tasks] unnormalised log-evidence per task."""
        raise NotImplementedError

    def refine(self, index, x: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """A second stage over `log_probs` ([B, T] from `task_scores`), which may read per-task statistics
        through `index` (a RouterIndex: `parts`, `cache`); none by default."""
        return log_probs

    def class_scores(self, index, x: torch.Tensor, task: int) -> torch.Tensor | None:
        """[B, c] logits over the classes of the task at position `task`, in its label order (the router's
        view of which of the task's labels a text has); None: the method does not score a task's classes."""
        return None


METHODS: dict[str, RouterMethod] = {}


def register(cls: type[RouterMethod]) -> type[RouterMethod]:
    METHODS[cls.name] = cls()
    return cls


@register
class Mahalanobis(RouterMethod):
    name = "mahalanobis"
    summary = "Gaussian classes with one shared, shrunk covariance (causal banks' default)"
    derived = ("centre", "discriminant", "bias")

    def derive(self, t):
        """Centred on the mean class mean: a class's logit then differs from the textbook
        x'S^-1 m - m'S^-1 m / 2 by one constant per text, which cancels in every probability, but it is
        a small number, not the difference of two large ones (uncentred, kernel-space logits reach 5e5
        for gaps of ~100, which fp32 resolves poorly and a low-precision shortlist not at all)."""
        import torch

        means = t["means"]
        centre = means.mean(0) if len(means) else means.new_zeros(means.shape[1])
        offsets = means - centre
        weights = torch.linalg.solve(shared_covariance(t), offsets.T).T if len(means) else means
        return {"centre": centre, "discriminant": weights.contiguous(), "bias": -0.5 * (weights * offsets).sum(-1)}

    def task_scores(self, t, x, n_tasks):
        x = x - t["centre"]
        if len(t["bias"]) >= SHORTLIST_MIN_CLASSES and _int8_is_fast(x.device):
            logits, peak = _shortlisted_logits(t, x)
        else:
            logits = x @ t["discriminant"].T + t["bias"]
            peak = logits.max(-1, keepdim=True).values
        evidence = logits.new_zeros(x.shape[0], n_tasks)
        evidence.index_add_(1, t["owner"], logits.sub_(peak).clamp_min_(EVIDENCE_FLOOR).exp_())
        return evidence.clamp_min(TASK_EVIDENCE_MIN).log()

    def class_scores(self, index, x, task):
        t = index.t
        block = (t["owner"] == task).nonzero().squeeze(1)
        return (x - t["centre"]) @ t["discriminant"][block].T + t["bias"][block]


@register
class TaskCovariance(Mahalanobis):
    """`mahalanobis`, then each text's RESCORED best tasks scored again with the task's own covariance blended
    in: S_t = (1 - TASK_BLEND) S + TASK_BLEND F F^T, S the shared covariance, F the first BLEND_RANK columns of
    the factor the task stores (statistics.py), with S_t's log-determinant (a regularised QDA over tasks).
    Texts of a task spread their own way; one pooled covariance scores every task as if they spread alike.

    Woodbury over the shared precision makes a task's share one [D, r] matrix W_t: -d_t(x, m_j) / 2 =
    logit_j(x) / (1 - a) + |W_t^T (x - m_j)|^2 / 2 + a term common to all tasks, which is linear in x per
    class (the `mahalanobis` row changed by W_t W_t^T m_j) plus |W_t^T x|^2 / 2 per task: one [n, D + 1] x
    [D + 1, r + c] product per candidate task (the last row the biases), all concatenated once (64 texts, 14
    candidates, 2-core AVX2 CPU: 4.0 ms, against 4.7 with each product sliced into place apart). The rows
    depend on S, so a task's are derived when first needed after each change of the index and kept
    (BLEND_CACHED tasks). Candidates are re-scored whenever the first
    stage ranked them (RESCORE_WITHIN), however sure it was of its best: it is too sure of itself to gate on
    (CLINC150 validation: 98 % of texts give their best task over 0.99999, and re-scoring only the others
    kept 0.16 of the 0.76-point gain). A text some of whose candidates have no factor to read (tasks from
    before, causal banks, online pseudo-tasks, an index loaded apart from its task files) keeps the first
    stage's scores."""

    name = "task-covariance"
    summary = ("mahalanobis, then each text's best tasks re-scored with their own covariance blended in "
               "(classification banks' default)")
    derived = ("precision",)

    def derive(self, t):
        import torch

        return {"precision": torch.cholesky_inverse(torch.linalg.cholesky(shared_covariance(t)))}

    def refine(self, index, x, log_probs):
        import torch

        from .scope import HELD_OUT_DISTANCE

        t = index.t
        k = min(RESCORED, log_probs.shape[1])
        if k < 2:
            return log_probs
        values, top = log_probs.topk(k, dim=-1)
        within = values > values[:, :1] - RESCORE_WITHIN  # candidates the first stage ranked (the best always)
        usable = t["scope_kind"] == HELD_OUT_DISTANCE
        if index.parts.source is None:  # no task files to read from: only the factors still in memory
            for task in top[within].unique().tolist():
                usable[task] &= index.parts.has_factor(index.task_ids[task])
        chosen = (within.sum(-1) > 1) & (usable[top] | ~within).all(-1)
        if not chosen.any():
            return log_probs
        rows = chosen.nonzero().squeeze(1)
        pairs, valid = top[rows], within[rows]  # [n, k] candidates of the re-scored texts, and which are re-scored
        text_of = rows.repeat_interleave(k)[valid.flatten()]
        order = pairs[valid].argsort()
        tasks, counts = pairs[valid][order].unique_consecutive(return_counts=True)
        # one row per (text, candidate), grouped by task, with a column of ones that picks up each task's biases
        centred = x.new_ones(len(order), x.shape[1] + 1)
        torch.sub(x[text_of[order]], t["centre"], out=centred[:, :-1])
        # per candidate task one product; everything else once for all (a task with fewer classes: -inf columns)
        parts = [self._rows(index, task) for task in tasks.tolist()]
        widest = max(weights.shape[1] for weights, _ in parts)
        scored = torch.cat([_padded(centred[begin:begin + count] @ weights, widest) for (weights, _), begin, count
                            in zip(parts, (counts.cumsum(0) - counts).tolist(), counts.tolist())])
        along, logits = scored[:, :BLEND_RANK], scored[:, BLEND_RANK:]  # W_t^T x, then the classes' logits
        log_det = torch.tensor([log_det for _, log_det in parts]).repeat_interleave(counts)
        evidence = logits.logsumexp(-1) + 0.5 * along.pow(2).sum(-1) - 0.5 * log_det
        adjusted = values.new_full(pairs.shape, -math.inf)
        adjusted[valid] = torch.empty_like(evidence).scatter_(0, order, evidence)
        mass = values[rows].masked_fill(~valid, -math.inf).logsumexp(-1, keepdim=True)
        rescored = torch.where(valid, mass + torch.log_softmax(adjusted, -1), values[rows])
        out = log_probs.clone()
        out[rows] = out[rows].scatter(1, pairs, rescored)
        return out

    def class_scores(self, index, x, task):
        """The blended covariance's class logits, as the second stage scores them; a task without a factor to
        read (see above) keeps `mahalanobis`'s."""
        from .scope import HELD_OUT_DISTANCE

        if int(index.t["scope_kind"][task]) != HELD_OUT_DISTANCE or (
                index.parts.source is None and not index.parts.has_factor(index.task_ids[task])):
            return super().class_scores(index, x, task)
        weights, _ = self._rows(index, task)
        return (x - index.t["centre"]) @ weights[:-1, BLEND_RANK:] + weights[-1, BLEND_RANK:]

    @staticmethod
    def _rows(index, task: int):
        """For task position `task`: ([D + 1, BLEND_RANK + c] W_t (zero columns where the factor is narrower), then
        its classes' columns, with their biases in the last row; log|I + a F^T B^-1 F|)."""
        import torch

        cache = index.cache.setdefault("task_blends", OrderedDict())
        task_id = index.task_ids[task]
        if task_id not in cache:
            t = index.t
            block = (t["owner"] == task).nonzero().squeeze(1)
            factor, scales, _ = index.parts.factor(index.task_names[task], task_id)
            f = factor[:, :BLEND_RANK].float() * scales[:BLEND_RANK].float()
            g = t["precision"] @ f  # S^-1 F
            inner = f.T @ g / (1 - TASK_BLEND)  # F^T B^-1 F, B = (1 - a) S
            inner.diagonal().add_(1 / TASK_BLEND)
            chol = torch.linalg.cholesky(inner)
            blend = torch.linalg.solve_triangular(chol, g.T, upper=False) / (1 - TASK_BLEND)  # W_t^T [r, D]
            projected = (t["means"][block] - t["centre"]) @ blend.T  # [c, r]
            rows = t["discriminant"][block] / (1 - TASK_BLEND) - projected @ blend
            bias = t["bias"][block] / (1 - TASK_BLEND) + 0.5 * projected.pow(2).sum(-1)
            log_det = f.shape[1] * math.log(TASK_BLEND) + 2 * float(chol.diagonal().log().sum())
            weights = rows.new_zeros(rows.shape[1] + 1, BLEND_RANK + len(rows))  # on the index's device
            weights[:-1, :len(blend)] = blend.T
            weights[:-1, BLEND_RANK:] = rows.T
            weights[-1, BLEND_RANK:] = bias
            cache[task_id] = (weights, log_det)
            while len(cache) > BLEND_CACHED:
                cache.popitem(last=False)
        cache.move_to_end(task_id)
        return cache[task_id]


def _padded(scored: torch.Tensor, width: int) -> torch.Tensor:
    """`scored` with -inf columns up to `width`: classes a task does not have, which logsumexp ignores."""
    import torch

    if scored.shape[1] == width:
        return scored
    return torch.nn.functional.pad(scored, (0, width - scored.shape[1]), value=-math.inf)


def shared_covariance(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The covariance pooled over every task's statistics, shrunk toward a scaled identity (SHRINKAGE)."""
    return shrunk((t["scatter"] / t["total"].clamp_min(1)).float())


def shrunk(covariance: torch.Tensor) -> torch.Tensor:
    """`covariance` shrunk toward the identity scaled to its mean variance, with weight SHRINKAGE (dtype kept)."""
    import torch

    scale = covariance.diagonal().mean().clamp_min(1e-6)
    return (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * torch.eye(len(covariance), dtype=covariance.dtype)


def _shortlisted_logits(t, x):
    """Every class's logit from int8 products, then the SHORTLIST best of each row exactly in fp32. The first
    pass is PyTorch's dynamically quantised linear (the x86 engine, fbgemm: the text quantised to uint8, the
    discriminant to int8 with a scale per row, bias and scales applied in the same call): 64 texts x 10,227
    classes in 1.8 ms, against 2.2 for `torch._int_mm` with the scaling done apart, 5 in bf16 and 20 in fp32.
    The best class is exact unless quantisation moved it out of the shortlist (CLINC150 + Banking77, 8,580
    texts: it was always in the best 4, 99.0 % the best 1); the other classes only add their share to their
    task's evidence. Returns the logits and each row's peak."""
    import torch

    logits = int8_logits(t, x)
    shortlist = logits.topk(min(SHORTLIST, logits.shape[1]), dim=-1).indices
    rows = t["discriminant"].index_select(0, shortlist.flatten()).view(*shortlist.shape, -1)  # 7x faster than [shortlist]
    exact = torch.einsum("bd,bkd->bk", x, rows) + t["bias"][shortlist]
    # the peak for the evidence: the best exact logit. No other class exceeds it by more than the quantisation
    # error (under a nat), far from exp's overflow, and the whole matrix is not scanned again
    return logits.scatter_(1, shortlist, exact), exact.max(-1, keepdim=True).values


def int8_logits(t, x):
    """The first pass alone: every class's (centred) logit from int8 products. The discriminant is packed
    once per index (about 0.2 s at 10,000 classes), in memory only (index.py never saves `_` keys).
    PyTorch marks quantised tensor constructors deprecated; the pinned torch has them, and where a later
    one lacks them `_int8_is_fast` sends every class through fp32."""
    import warnings

    import torch

    if "_discriminant_int8" not in t:
        weight = t["discriminant"]
        scale = (weight.abs().amax(-1).clamp_min(1e-30) / 127).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rows = torch.quantize_per_channel(weight, scale, torch.zeros(len(weight), dtype=torch.long), 0, torch.qint8)
        t["_discriminant_int8"] = torch.ops.quantized.linear_prepack(rows, t["bias"])
    return torch.ops.quantized.linear_dynamic(x, t["_discriminant_int8"], True)  # reduce_range: no int16 overflow


def _int8_is_fast(device) -> bool:
    return _int8_is_fast_on(device.type)


@lru_cache(maxsize=None)
def _int8_is_fast_on(device_type: str) -> bool:
    """Asked once per device type, not on every routed batch. A GPU scores every class in fp32 faster than
    it would shortlist; a CPU shortlists where PyTorch's x86 quantised engine (fbgemm) has vector kernels:
    AVX2 or AVX512 (without AVX2 fbgemm has no fast path). Route for 64 texts among ~10,000 classes: 20 ms in
    fp32 -> 1.8 ms where AVX512-VNNI is; on a 2-core AVX2-only EPYC 86 -> 45 ms (benchmarks/routing.py), and
    28 -> 18 ms at 4,027 classes with the same decisions (benchmarks/shortlist_recall.py)."""
    import torch

    if device_type != "cpu" or "x86" not in torch.backends.quantized.supported_engines:
        return False
    if not hasattr(torch.ops.quantized, "linear_dynamic") or not hasattr(torch, "quantize_per_channel"):
        return False
    return torch.backends.cpu.get_cpu_capability() in INT8_CPU_CAPABILITIES


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
