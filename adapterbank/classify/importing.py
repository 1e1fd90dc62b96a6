"""Importing a classification adapter: its module and head converted to the bank's top-layer layout.

Two layouts fit:
- a module exported by a bank (`export --task T --peft`): `head.safetensors` and `labels.json` beside the
  PEFT files; taken as it is.
- a plain PEFT sequence-classification run (`task_type="SEQ_CLS"` on `BertForSequenceClassification`):
  the classifier (and the pooler, when it was trained too) saved through `modules_to_save`. The module's
  tensors are renamed from the classification model (`bert.encoder...`) to the bank's encoder
  (`encoder...`), and the head becomes a `bert-pooler` head (the base's pooler unless the adapter
  trained its own), so the imported task answers as the PEFT model did. Label names come from
  `labels.json` or `--labels`, in the classifier's output order.

The bank shares one lower pass between all tasks (routing reads it), so a module must live on the bank's
upper layers only: an adapter that changes a lower layer is refused with the `layers_to_transform` that
fits. A prompt-tuning adapter with BERT's head is refused: that head reads a virtual token as [CLS].
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import BankError, BaseMismatchError, DataError
from ..importing import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_examples, check_fits, imported_record
from .heads import HEAD_FILE, LABELS_FILE, BertPoolerHead, load_head

PEFT_PREFIX = "base_model.model."
HEAD_MODULES = ("classifier", "pooler")  # what modules_to_save may bring: the head


def import_classifier(bank, name: str, directory: Path, config: dict, kind, examples, named: str,
                      labels: list[str] | None = None):
    from .. import faults
    from ..data import as_dataset
    from ..kinds import get_kind
    from ..routing.statistics import class_statistics, save_statistics
    from .inference import module_accuracy

    data = as_dataset(examples)
    check_examples(len(data), data.source)
    base = bank.base
    module, head_state = _split(base.model, directory)
    head, labels, max_length = _head(base.model, directory, head_state, labels, kind)
    unknown = sorted(set(data.labels) - set(labels))
    if unknown:
        raise DataError(f"{data.source}: label(s) the adapter's classifier does not have: {', '.join(unknown[:5])} "
                        f"(it has: {', '.join(labels[:10])})")
    missing = [label for label in labels if label not in set(data.labels)]
    if missing:
        raise DataError(f"{data.source}: no examples of label(s) {', '.join(missing[:5])}; the router needs examples of "
                        "every label the classifier answers")
    peft_config = {**config, "base_model_name_or_path": bank.base_id, "task_type": None, "modules_to_save": None}
    upper = set(bank._model().split.upper_indices)
    with tempfile.TemporaryDirectory(prefix="adapterbank-import-") as converted:
        converted = Path(converted)
        _write_module(converted, module, peft_config)
        check_fits(base.model, converted, peft_config)
        spec = get_kind(kind.name)
        if spec.batching == "upper":
            try:
                spec.load_updates(converted, upper)
            except BankError as exc:
                raise BaseMismatchError(f"{directory / ADAPTER_WEIGHTS}: {str(exc).split(': ', 1)[-1]}; a classification "
                                        f"bank's modules live on its upper layers only: train with "
                                        f"layers_to_transform={sorted(upper)}") from None
        from ..core.encoding import map_batches, tokenize

        features = map_batches(lambda ids, mask: bank._model().lower(ids, mask).router_features,
                               tokenize(base.tokenizer, data.texts, max_length), base.tokenizer, bank.device)
        index = {label: i for i, label in enumerate(labels)}
        stats = class_statistics(features, [index[t] for t in data.targets], len(labels))
        record = imported_record(bank, kind, config, directory, named, len(data), data.source, labels=labels)
        record["hyperparameters"].update(max_length=max_length, head=head.name)
        with bank.registry.stage_task(name, record) as staging:
            for file in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
                (staging / file).write_bytes((converted / file).read_bytes())
            faults.point("saved-module")
            head.save(staging)
            save_statistics(staging, stats)
            # measured through the inference path, on the files just written: a wrong label order shows here
            record["metrics"]["examples_accuracy"] = module_accuracy(bank._model(), base.tokenizer, staging, kind.name,
                                                                     labels, data, max_length)
    bank._save_index()
    return bank.task(name)


def _split(model, directory: Path) -> tuple[dict, dict]:
    """(module tensors named for the bank's encoder, head tensors named within the head) of the adapter."""
    from safetensors.torch import load_file

    inner = PEFT_PREFIX + getattr(model, "base_model_prefix", "") + "."
    module, head = {}, {}
    for key, tensor in load_file(str(directory / ADAPTER_WEIGHTS)).items():
        short = key.removeprefix(inner) if key.startswith(inner) else key.removeprefix(PEFT_PREFIX)
        if short.startswith(HEAD_MODULES):
            head[short] = tensor
        elif key.startswith(inner):
            module[PEFT_PREFIX + short] = tensor
        else:
            module[key] = tensor
    return module, head


def _head(model, directory: Path, state: dict, labels: list[str] | None, kind):
    """(head, labels, max_length): the bank layout's head as it is, or BERT's classifier (+ pooler) converted."""
    from ..core import DEFAULT_MAX_LENGTH

    meta = {}
    if (directory / LABELS_FILE).is_file():
        try:
            meta = json.loads((directory / LABELS_FILE).read_text(encoding="utf-8"))
            names = meta["labels"] if isinstance(meta, dict) else meta
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{directory / LABELS_FILE}: expected {{\"labels\": [...]}} ({exc})") from None
        if labels is not None and list(labels) != list(names):
            raise DataError(f"--labels differs from {directory / LABELS_FILE}; give one of them")
        labels = names
    max_length = int(meta.get("max_length", DEFAULT_MAX_LENGTH)) if isinstance(meta, dict) else DEFAULT_MAX_LENGTH
    if (directory / HEAD_FILE).is_file():
        if state:
            raise BaseMismatchError(f"{directory}: both {HEAD_FILE} and a saved classifier ({sorted(state)[0]}); keep one")
        head = load_head(directory)
    elif "classifier.weight" in state:
        head = _bert_head(model, directory, state, kind)
    else:
        raise BaseMismatchError(f"{directory}: no classifier head: train with task_type='SEQ_CLS' (PEFT saves the "
                                f"classifier through modules_to_save), or export the task from a bank with --peft")
    classes = head.state_dict()["classifier.weight" if "classifier.weight" in head.state_dict() else "weight"].shape[0]
    if labels is None:
        raise DataError(f"{directory}: no {LABELS_FILE}: pass --labels with the {classes} label names in the order of "
                        "the classifier's outputs (the id2label of the model it was trained with)")
    labels = [str(label) for label in labels]
    if len(labels) != classes or len(set(labels)) != len(labels):
        raise DataError(f"--labels: {len(labels)} name(s){' with repeats' if len(set(labels)) != len(labels) else ''}; "
                        f"the classifier has {classes} outputs")
    return head, labels, max_length


def _bert_head(model, directory: Path, state: dict, kind) -> BertPoolerHead:
    if kind.batching != "upper":
        raise BaseMismatchError(f"{directory}: a {kind.name} adapter with BERT's classifier reads a virtual token as its "
                                "[CLS]; the bank cannot reproduce that: import LoRA or IA3 adapters")
    unknown = sorted(k for k in state if k not in ("classifier.weight", "classifier.bias", "pooler.dense.weight", "pooler.dense.bias"))
    if unknown:
        raise BaseMismatchError(f"{directory / ADAPTER_WEIGHTS}: tensor {unknown[0]}: not BERT's classifier or pooler, "
                                "which is the head layout this bank imports")
    hidden = model.config.hidden_size
    weight = state["classifier.weight"]
    if weight.dim() != 2 or weight.shape[1] != hidden or "classifier.bias" not in state:
        raise BaseMismatchError(f"{directory / ADAPTER_WEIGHTS}: classifier.weight is {list(weight.shape)}, the base needs "
                                f"[classes, {hidden}] with a bias")
    pooler = getattr(model, "pooler", None)
    if "pooler.dense.weight" in state:
        if tuple(state["pooler.dense.weight"].shape) != (hidden, hidden) or "pooler.dense.bias" not in state:
            raise BaseMismatchError(f"{directory / ADAPTER_WEIGHTS}: pooler.dense.weight is "
                                    f"{list(state['pooler.dense.weight'].shape)}, the base needs [{hidden}, {hidden}] with a bias")
        dense = {"dense.weight": state["pooler.dense.weight"], "dense.bias": state["pooler.dense.bias"]}
    elif pooler is not None:
        dense = {"dense.weight": pooler.dense.weight.detach().cpu(), "dense.bias": pooler.dense.bias.detach().cpu()}
    else:
        raise BaseMismatchError(f"{directory}: BERT's classifier reads the pooler, which this bank's base lacks and the "
                                "adapter did not save (add 'pooler' to modules_to_save)")
    return BertPoolerHead.from_state({**dense, "classifier.weight": weight, "classifier.bias": state["classifier.bias"]})


def _write_module(directory: Path, tensors: dict, config: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / ADAPTER_WEIGHTS))
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
