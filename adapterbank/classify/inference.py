"""Running stored modules at inference: one lower pass per batch, then every row through its own module.

The two batching strategies of kinds/base.py are implemented here, once, for every kind:
- `upper` kinds live on the upper layers (core/backbone.py). Instead of wrapping the base with PEFT and
  switching adapters, forward hooks on the upper layers' linear modules add each row's update (the
  kind's `row_update` on the tensors PEFT saved): one upper pass serves a batch that mixes any number
  of tasks, and a row can mix several modules with weights (weight-level composition).
- `prefix` kinds run a full pass with each row's own prefix put before its tokens (PEFT's semantics).
Modules load lazily and are kept in an LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.backbone import LowerPass, SplitEncoder, num_layers
from ..core.encoding import map_batches, tokenize
from ..kinds import Kind, get_kind
from .heads import Head, load_head, pooled

DEFAULT_CACHE_SIZE = 64


@dataclass
class LoadedModule:
    kind: Kind
    head: Head
    updates: dict[str, Any] = field(default_factory=dict)  # `upper` kinds: linear module path -> tensors
    prefix: torch.Tensor | None = None  # `prefix` kinds: [positions, hidden]
    start: int | None = None  # `upper` kinds: the first layer the module adapts (below the split: a deep module)


def _layer_of(path: str) -> int:
    """The transformer layer a module path is in (`...layer.N...`), -1 outside the layers."""
    parts = path.split(".")
    return next((int(after) for part, after in zip(parts, parts[1:]) if part == "layer" and after.isdigit()), -1)


def _to(device: torch.device, value: Any, dtype: torch.dtype | None = None) -> Any:
    """A kind's update tensors on `device`, floating ones in the base's `dtype` (a base stored in fp16 or
    bf16 loads in that dtype, and its activations meet the module's fp32 tensors); nested tuples and
    non-tensor fields such as flags pass through."""
    if isinstance(value, tuple):
        return tuple(_to(device, v, dtype) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device, dtype=dtype if dtype is not None and value.is_floating_point() else value.dtype)


class RoutedModel:
    """The bank's frozen base plus loaded modules; computes features for routed rows."""

    def __init__(self, base_model: torch.nn.Module, upper_layers: int, cache_size: int = DEFAULT_CACHE_SIZE,
                 router_map=None):
        self.model = base_model
        self.split = SplitEncoder(base_model, upper_layers, router_map)
        self.device = next(base_model.parameters()).device
        self.dtype = next(base_model.parameters()).dtype
        self.cache_size = cache_size
        self.loaded: OrderedDict[str, LoadedModule] = OrderedDict()
        self._plan: list[tuple[LoadedModule, torch.Tensor, torch.Tensor | None]] | None = None
        for path, module in base_model.named_modules():  # every layer: a task's module may reach below the split
            if isinstance(module, torch.nn.Linear) and _layer_of(path) >= 0:
                module.register_forward_hook(self._update_hook(path))

    def _update_hook(self, path: str):
        def hook(linear, inputs, output):
            if not self._plan:
                return output
            x, base = inputs[0], output
            for module, rows, weights in self._plan:
                tensors = module.updates.get(path)
                if tensors is None:
                    continue
                delta = module.kind.row_update(tensors, linear, x[rows], base, rows)
                if weights is not None:
                    delta = delta * weights.view(-1, *([1] * (delta.dim() - 1)))
                # in place: the linear's output is fresh and the plan is only set under no_grad (upper_features);
                # out of place, each of a batch's modules copied the whole [rows, tokens, width] output again
                output.index_add_(0, rows, delta.to(output.dtype))
            return output
        return hook

    # -- modules --------------------------------------------------------------------------------
    def load(self, name: str, task_dir: Path, kind: str) -> LoadedModule:
        """The named task's module, from the LRU cache or from `task_dir`."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        module = self.load_unnamed(task_dir, kind)
        self.loaded[name] = module
        while len(self.loaded) > self.cache_size:
            self.loaded.popitem(last=False)
        return module

    def load_unnamed(self, task_dir: Path, kind: str) -> LoadedModule:
        """A module read from `task_dir`, not cached (e.g. one still being staged)."""
        task_dir, spec = Path(task_dir), get_kind(kind)
        head = load_head(task_dir).to(self.device)
        if spec.batching == "upper":
            updates = spec.load_updates(task_dir, set(range(num_layers(self.model))))
            start = min((_layer_of(path) for path in updates), default=self.split.split)
            return LoadedModule(spec, head, updates={k: _to(self.device, v, self.dtype) for k, v in updates.items()},
                                start=min(start, self.split.split))
        return LoadedModule(spec, head, prefix=_to(self.device, spec.load_prefix(task_dir), self.dtype))

    # -- passes ---------------------------------------------------------------------------------
    def first_layer(self, depths: list[int | None]) -> int | None:
        """The lowest layer that tasks of these depths adapt, when below the split (None: nothing to keep)."""
        deepest = max([d for d in depths if d] or [0])
        start = num_layers(self.model) - deepest
        return start if start < self.split.split else None

    @torch.no_grad()
    def lower(self, input_ids: torch.Tensor, mask: torch.Tensor, keep_from: int | None = None) -> LowerPass:
        """The shared frozen pass; `keep_from`: the first layer a deep module in play starts at."""
        return self.split.lower(input_ids, mask, keep_from)

    @torch.no_grad()
    def upper_features(self, lower: LowerPass, rows: torch.Tensor,
                       plan: list[tuple[LoadedModule, torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """Pooled output (heads.pooled) of the upper layers for `rows` of the lower pass; `plan` says which
        module(s) act on which of those rows (positions within `rows`), with optional per-row weights."""
        # a deep module's rows start below the split; the batch's other rows pass those layers frozen
        start = min([self.split.split] + [module.start for module, _, _ in plan if module.start is not None])
        hidden, mask = lower.entering(start, self.split.split)[rows], lower.mask[rows]
        device = hidden.device  # the hooks' index_add needs its row indices where the activations are (CUDA)
        self._plan = [(module, positions.to(device), None if weights is None else weights.to(device, hidden.dtype))
                      for module, positions, weights in plan]
        try:
            out = self.split.upper(hidden, mask, start)
        finally:
            self._plan = None
        return pooled(out, mask)

    @torch.no_grad()
    def prefix_features(self, modules: list[LoadedModule], input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Full pass with row i's prefix `modules[i].prefix` before its tokens (PEFT's semantics: prefix
        first, attention mask of ones over it); pooled over the real tokens. Different tasks' prefixes
        share one batch."""
        prefixes = torch.stack([m.prefix for m in modules])
        embeddings = self.model.get_input_embeddings()(input_ids)
        batch, virtual = input_ids.shape[0], prefixes.shape[1]
        full_mask = torch.cat([torch.ones(batch, virtual, dtype=mask.dtype, device=mask.device), mask], dim=1)
        inputs = torch.cat([prefixes.to(embeddings.dtype), embeddings], dim=1)
        hidden = self.model(inputs_embeds=inputs, attention_mask=full_mask).last_hidden_state
        return pooled(hidden[:, virtual:], mask)

    def features(self, module: LoadedModule, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every row of a batch through one module."""
        if module.kind.batching == "upper":
            rows = torch.arange(len(input_ids))
            return self.upper_features(self.lower(input_ids, mask, module.start), rows, [(module, rows, None)])
        return self.prefix_features([module] * len(input_ids), input_ids, mask)


def router_prior(index, features: torch.Tensor, method: str, weight: float) -> Callable | None:
    """`run_modules`' label_prior: the router's log-posterior over a task's labels (RouterIndex.label_scores)
    times `weight`, for rows of `features` ([B, D], the batch's router features); None when `weight` is 0.

    A module sees its task's texts through one fine-tuned top layer; the router scores the same classes from
    the frozen lower layers' statistics. They err on different texts: their product labels CLINC150's and
    Banking77's validation texts better than the module alone (benchmarks/label_fusion.py)."""
    if not weight:
        return None

    def prior(task: str, rows: list[int]) -> torch.Tensor | None:
        scores = index.label_scores(features[rows], task, method)
        return None if scores is None else weight * scores

    return prior


def run_modules(model: RoutedModel, records: dict, routes, lower: LowerPass, input_ids, mask, composition: str,
                check: Callable[[str], None] | None = None, label_prior: Callable | None = None) -> list[dict]:
    """For each row, {(label, task): probability} mixed over the row's candidate tasks.

    All (row, task) pairs of the batch go through one upper pass for `upper` kinds (each row through its
    own module) and one full pass for `prefix` kinds; `weights` composition mixes `upper` modules'
    updates inside a single pass (`prefix` modules are mixed by output instead). `label_prior(task, rows)`,
    [len(rows), labels] log-weights or None, is added to the module's log-probabilities (router_prior)."""
    mixtures: list[dict] = [{} for _ in routes]
    upper_pairs, prefix_pairs = [], []  # (row, task, weight)
    for row, route in enumerate(routes):
        total = sum(route.probabilities) or 1.0
        for name, p in zip(route.tasks, route.probabilities):
            info, weight = records[name], p / total
            if info.kind is None:  # one-label task: its label, with the router's confidence
                key = (info.labels[0], name)
                mixtures[row][key] = mixtures[row].get(key, 0.0) + weight
            else:
                (upper_pairs if get_kind(info.kind).batching == "upper" else prefix_pairs).append((row, name, weight))
    modules = {}
    for name in dict.fromkeys(name for _, name, _ in upper_pairs + prefix_pairs):
        if check is not None and name not in model.loaded:
            check(name)
        modules[name] = model.load(name, records[name].path, records[name].kind)
    features: list[tuple[int, str, float, torch.Tensor]] = []
    if upper_pairs and composition == "weights":
        rows = sorted({row for row, _, _ in upper_pairs})
        position = {row: i for i, row in enumerate(rows)}
        plan = []
        for name in dict.fromkeys(name for _, name, _ in upper_pairs):
            mine = [(position[row], w) for row, n, w in upper_pairs if n == name]
            plan.append((modules[name], torch.tensor([p for p, _ in mine]), torch.tensor([w for _, w in mine])))
        mixed = model.upper_features(lower, torch.tensor(rows), plan)
        features += [(row, name, w, mixed[position[row]]) for row, name, w in upper_pairs]
    elif upper_pairs:
        plan = [(modules[name], torch.tensor([i for i, (_, n, _) in enumerate(upper_pairs) if n == name]), None)
                for name in dict.fromkeys(name for _, name, _ in upper_pairs)]
        out = model.upper_features(lower, torch.tensor([row for row, _, _ in upper_pairs]), plan)
        features += [(row, name, w, out[i]) for i, (row, name, w) in enumerate(upper_pairs)]
    if prefix_pairs:
        rows = torch.tensor([row for row, _, _ in prefix_pairs])
        out = model.prefix_features([modules[name] for _, name, _ in prefix_pairs], input_ids[rows], mask[rows])
        features += [(row, name, w, out[i]) for i, (row, name, w) in enumerate(prefix_pairs)]
    by_task: dict[str, list[int]] = {}
    for i, (_, name, _, _) in enumerate(features):
        by_task.setdefault(name, []).append(i)
    for name, items in by_task.items():
        with torch.no_grad():
            logits = modules[name].head.read(torch.stack([features[i][3] for i in items]))
            prior = label_prior(name, [features[i][0] for i in items]) if label_prior is not None else None
            if prior is not None:
                logits = torch.log_softmax(logits, -1) + prior.to(logits)
            probabilities = torch.softmax(logits, -1).cpu()
        labels = records[name].labels
        for i, p in zip(items, probabilities):
            row, _, weight, _ = features[i]
            for label, value in zip(labels, p.tolist()):
                key = (label, name)
                mixtures[row][key] = mixtures[row].get(key, 0.0) + weight * value
    return mixtures


def module_accuracy(model: RoutedModel, tokenizer, task_dir: Path, kind: str, labels: list[str], data,
                    max_length: int) -> float:
    """Accuracy of a just-written module on labelled data, the task given (no routing)."""
    module = model.load_unnamed(task_dir, kind)

    def predict(input_ids, mask):
        return module.head.read(model.features(module, input_ids, mask)).argmax(-1, keepdim=True)

    predicted = map_batches(predict, tokenize(tokenizer, data.texts, max_length), tokenizer, model.device)
    return round(sum(labels[p] == t for p, t in zip(predicted[:, 0].tolist(), data.targets)) / len(data), 6)
