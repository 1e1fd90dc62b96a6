"""The continual-learning protocol: data checks before training, the results, the report, reproducibility."""

import json
from pathlib import Path

import pytest

from adapterbank.evaluation import metrics, protocol as evaluation, report
from adapterbank import AdapterBank
from adapterbank.errors import DataError
from adapterbank.evaluation.scenarios import load_scenario

from conftest import TASK_LABELS, synthetic_rows, write_jsonl
from conftest import DEVICE, invoke

TASKS = ["alpha", "beta", "gamma"]


@pytest.fixture()
def flat_data(tmp_path) -> Path:
    """All three synthetic tasks in one train/test pair, plus a task map in the order alpha, beta, gamma."""
    root = tmp_path / "data"
    root.mkdir()
    write_jsonl(root / "train.jsonl", [r for t in TASKS for r in synthetic_rows(t, per_label=16, seed=0)])
    write_jsonl(root / "test.jsonl", [r for t in TASKS for r in synthetic_rows(t, per_label=6, seed=1)])
    (root / "tasks.json").write_text(json.dumps({t: TASK_LABELS[t] for t in TASKS}))
    return root


def test_flat_data_is_dealt_into_disjoint_seeded_tasks(flat_data):
    tasks = load_scenario(flat_data, n_tasks=2, seed=3)
    labels = [label for task in tasks for label in task.labels]
    assert sorted(labels) == sorted(label for t in TASKS for label in TASK_LABELS[t])
    assert [len(t.labels) for t in tasks] == [3, 3]
    assert all(set(t.test.targets) <= set(t.labels) and set(t.train.targets) == set(t.labels) for t in tasks)
    assert [t.labels for t in load_scenario(flat_data, n_tasks=2, seed=3)] == [t.labels for t in tasks]
    mapped = load_scenario(flat_data, task_map=flat_data / "tasks.json", max_train_per_class=5)
    assert [t.name for t in mapped] == TASKS
    assert all(len(t.train) == 5 * len(t.labels) for t in mapped)


def test_folders_are_tasks_in_the_given_order(tmp_path):
    for name in TASKS:
        write_jsonl((tmp_path / name).mkdir() or tmp_path / name / "train.jsonl", synthetic_rows(name, 4, 0))
        write_jsonl(tmp_path / name / "test.jsonl", synthetic_rows(name, 2, 1))
    assert [t.name for t in load_scenario(tmp_path)] == TASKS
    assert [t.name for t in load_scenario(tmp_path, order=["gamma", "alpha"])] == ["gamma", "alpha"]
    with pytest.raises(DataError, match="shares no label"):
        load_scenario(tmp_path, scenario="domain")


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "test.jsonl").unlink(), "missing test split"),
    (lambda root: write_jsonl(root / "test.jsonl", [{"text": "zzz", "label": "never_trained"}]), "'never_trained' .* never appears"),
    (lambda root: (root / "tasks.json").write_text('{"alpha": [], "beta": ["b_one"]}'), "task 'alpha' is empty"),
    (lambda root: (root / "tasks.json").write_text('{"x": ["a_one"], "y": ["a_one"]}'), "in both task 'x' and task 'y'"),
    (lambda root: (root / "tasks.json").write_text('{"x": ["a_one"]}'), "training labels are in no task"),
    (lambda root: (root / "tasks.json").write_text('{"../up": ["a_one", "a_two", "b_one", "b_two", "b_three", "g_one"]}'),
     "cannot name a bank task"),
])
def test_bad_inputs_fail_before_training(flat_data, damage, message):
    damage(flat_data)
    with pytest.raises(DataError, match=message):
        load_scenario(flat_data, task_map=flat_data / "tasks.json")


def test_more_tasks_than_labels_or_wrong_layout_is_refused(flat_data):
    with pytest.raises(DataError, match="7 tasks asked for but the data has only 6 labels"):
        load_scenario(flat_data, n_tasks=7)
    with pytest.raises(DataError, match="domain scenario needs one sub-folder per domain"):
        load_scenario(flat_data, scenario="domain")


def _without_times(results: dict) -> dict:
    stripped = {k: v for k, v in results.items() if k not in ("wall_s", "stages", "peak_rss_mb")}
    stripped["baselines"] = {k: {kk: vv for kk, vv in v.items() if kk != "wall_s"} for k, v in results["baselines"].items()}
    return stripped


@pytest.fixture(scope="module")
def class_run(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("eval")
    (root / "data").mkdir()
    write_jsonl(root / "data" / "train.jsonl", [r for t in TASKS for r in synthetic_rows(t, per_label=16, seed=0)])
    write_jsonl(root / "data" / "test.jsonl", [r for t in TASKS for r in synthetic_rows(t, per_label=6, seed=1)])
    (root / "data" / "tasks.json").write_text(json.dumps({t: TASK_LABELS[t] for t in TASKS}))
    tasks = load_scenario(root / "data", task_map=root / "data" / "tasks.json")
    results = evaluation.run(tasks, root / "out", base=tiny_base, device=DEVICE, progress=False)
    return root, tasks, results


def test_class_incremental_results_follow_the_protocol(class_run):
    root, tasks, results = class_run
    matrix = results["accuracy_matrix"]
    assert results["scenario"] == "class" and results["tasks"] == [TASK_LABELS[t] for t in TASKS]
    # measured: every seen task at every stage, plus the next task (forward transfer); nothing further
    assert [[v is not None for v in row] for row in matrix] == [[True, True, False], [True, True, True], [True, True, True]]
    assert matrix[0][1] == 0.0 and matrix[1][2] == 0.0  # class-incremental: unseen labels cannot be predicted
    assert results["average_accuracy"] == pytest.approx(metrics.average_accuracy(matrix))
    assert results["bwt"] == pytest.approx(metrics.backward_transfer(matrix))
    assert results["fwt"] == pytest.approx(metrics.forward_transfer(matrix, results["zero_training_accuracy"]))
    assert results["average_accuracy"] > 0.8 and results["routing_accuracy"] > 0.8  # separable synthetic tasks
    assert results["oracle_accuracy"] >= results["average_accuracy"] - 1e-9  # the task id can only help here
    baselines = results["baselines"]
    assert set(baselines) == {"joint", "seqlora", "replay", "ewc", "ncm"}
    assert baselines["joint"]["per_task_accuracy"] == [1.0, 1.0, 1.0]  # separable tasks learnt all at once
    # one module through the tasks: the last, one-label task (gamma) overwrites everything learnt before
    assert baselines["seqlora"]["accuracy_matrix"][-1] == [0.0, 0.0, 1.0] and baselines["seqlora"]["forgetting"] == 1.0
    assert baselines["ncm"]["accuracy_matrix"][-1] == [1.0, 1.0, 1.0] and baselines["ncm"]["bwt"] == 0.0
    # the same module with earlier tasks' examples replayed (the buffer holds them all here) forgets far less
    assert baselines["replay"]["forgetting"] < 0.5 and baselines["replay"]["average_accuracy"] > 0.6
    assert results["peak_rss_mb"] > 0 and results["wall_s"]["total_s"] > 0
    assert (root / "out" / "bank" / "bank.json").exists()


def test_report_files(class_run, tmp_path):
    _, _, results = class_run
    paths = report.write(results, tmp_path)
    assert json.loads(paths["results"].read_text())["average_accuracy"] == results["average_accuracy"]
    text = paths["report"].read_text()
    assert "| adapterbank |" in text and "| seqlora |" in text and "| after \\ on | alpha | beta | gamma |" in text
    # each task's module depth as add-task settled it (too few texts to search here: the bank's top layer)
    assert [stage["depth"] for stage in results["stages"]] == [1, 1, 1]
    timing = text.split("## Time and memory")[1].splitlines()
    assert "| stage | add-task s | module depth | eval s | peak RSS MB |" in timing
    assert [line.split(" | ")[2] for line in timing if line.startswith(("| alpha |", "| beta |", "| gamma |"))] == ["1"] * 3
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".tmp-*"))


def test_same_seed_same_numbers(class_run, tiny_base, tmp_path):
    root, tasks, results = class_run
    again = evaluation.run(tasks, tmp_path / "again", base=tiny_base, device=DEVICE, progress=False)
    assert _without_times(again) == _without_times(results)


def test_task_incremental_gives_the_task_id(flat_data, tiny_base, tmp_path):
    tasks = load_scenario(flat_data, scenario="task", task_map=flat_data / "tasks.json")
    results = evaluation.run(tasks, tmp_path / "out", scenario="task", base=tiny_base, device=DEVICE,
                             baselines=["ncm"], progress=False)
    assert results["routing_accuracy"] is None
    assert results["average_accuracy"] == pytest.approx(results["oracle_accuracy"])


def test_cli_eval_rejects_bad_input_before_anything_is_written(flat_data, tmp_path):
    (flat_data / "test.jsonl").unlink()
    code, out = invoke("eval", flat_data, "--out", tmp_path / "out", "--tasks", "2")
    assert code == 1 and "missing test split" in invoke.stderr
    assert not (tmp_path / "out").exists()
    code, out = invoke("eval", flat_data, "--out", tmp_path / "out", "--baselines", "joint,oracle")
    assert code == 1 and "unknown baseline 'oracle'" in invoke.stderr


def test_domain_incremental_same_labels_new_domains(tmp_path, tiny_base):
    relabel = {"b_one": "a_one", "b_two": "a_two"}
    for domain, task in (("d1-letters", "alpha"), ("d2-other", "beta")):
        folder = tmp_path / "data" / domain
        folder.mkdir(parents=True)
        for split, per_label, seed in (("train", 16, 0), ("test", 6, 1)):
            rows = [{"text": r["text"], "label": relabel.get(r["label"], r["label"])}
                    for r in synthetic_rows(task, per_label, seed) if r["label"] != "b_three"]
            write_jsonl(folder / f"{split}.jsonl", rows)
    tasks = load_scenario(tmp_path / "data", scenario="domain")
    assert [sorted(t.labels) for t in tasks] == [["a_one", "a_two"]] * 2
    results = evaluation.run(tasks, tmp_path / "out", scenario="domain", base=tiny_base, device=DEVICE,
                             baselines=["ncm", "seqlora"], progress=False)
    matrix = results["accuracy_matrix"]
    assert matrix[0][1] is not None  # the next domain's texts have known labels: forward transfer is measurable
    assert results["fwt"] == pytest.approx(matrix[0][1] - results["zero_training_accuracy"][1])
    assert results["routing_accuracy"] >= 0.9  # each domain's texts go to its own domain's module
    assert results["average_accuracy"] > 0.8


def test_trained_baselines_follow_the_runs_kind(flat_data, tiny_base, tmp_path, monkeypatch):
    from adapterbank.evaluation import baseline_models

    kinds = []
    real = baseline_models.train_classifier

    def spy(*args, **kwargs):
        kinds.append(args[5].kind)  # the config
        return real(*args, **kwargs)

    monkeypatch.setattr(baseline_models, "train_classifier", spy)
    tasks = load_scenario(flat_data, task_map=flat_data / "tasks.json")[:2]
    results = evaluation.run(tasks, tmp_path / "out", base=tiny_base, kind="prompt", device=DEVICE,
                             baselines=["joint", "seqlora"], progress=False)
    assert kinds == ["prompt"] * 3  # joint once, seqlora once per task
    assert results["config"]["kind"] == "prompt" and {t.kind for t in AdapterBank.open(tmp_path / "out" / "bank", lazy=True).tasks()} == {"prompt"}
    assert results["baselines"]["joint"]["average_accuracy"] > 0.5
