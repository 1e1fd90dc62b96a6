"""Which continual-learning protocol a scenario runs: a registry the CLI's `eval` reads its choices from.

Classification scenarios (`class`, `task`, `domain`: labelled data, an encoder bank) run protocol.py;
`instruction` (sft task folders, a causal bank, generated answers scored) runs instruction_protocol.py.
Each protocol declares its default base and its baselines. Importing this module loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import DataError
from .baselines import BASELINES
from .instruction_protocol import DEFAULT_BASE as CAUSAL_BASE
from .instruction_protocol import INSTRUCTION_BASELINES
from .scenarios import SCENARIOS


@dataclass(frozen=True)
class Protocol:
    default_base: str
    baselines: dict  # name -> Baseline (name, summary, run)
    run: Callable[..., dict]  # (data_dir, out, scenario, base, kind, seed, baselines, device, progress, options) -> results


def _classification(data_dir: Path, out: Path, scenario: str, base: str, kind: str | None, seed: int,
                    baselines: Sequence[str], device: str, progress: bool, options: dict[str, Any]) -> dict:
    from ..kinds import DEFAULT_KIND
    from . import protocol
    from .scenarios import load_scenario

    tasks = load_scenario(data_dir, scenario, n_tasks=options.get("n_tasks"), task_map=options.get("task_map"),
                          order=options.get("order"), seed=seed, max_train_per_class=options.get("max_train_per_class"))
    return protocol.run(tasks, out, scenario=scenario, base=base, kind=kind or DEFAULT_KIND, seed=seed, baselines=baselines,
                        device=device, progress=progress)


def _instruction(data_dir: Path, out: Path, scenario: str, base: str, kind: str | None, seed: int,
                 baselines: Sequence[str], device: str, progress: bool, options: dict[str, Any]) -> dict:
    from . import instruction_protocol
    from .instruction_tasks import load_instruction_tasks

    for key, flag in (("n_tasks", "--tasks"), ("task_map", "--task-map"), ("max_train_per_class", "--max-train-per-class")):
        if options.get(key) is not None:
            raise DataError(f"{flag} applies to labelled data; instruction tasks are the data directory's sub-folders")
    tasks = load_instruction_tasks(data_dir, options.get("order"))
    return instruction_protocol.run(tasks, out, base=base, kind=kind, seed=seed, baselines=baselines, device=device,
                                    progress=progress)


CLASSIFICATION = Protocol("minilm", BASELINES, _classification)
PROTOCOLS: dict[str, Protocol] = {**{s: CLASSIFICATION for s in SCENARIOS},
                                  "instruction": Protocol(CAUSAL_BASE, INSTRUCTION_BASELINES, _instruction)}
