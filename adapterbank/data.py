"""Reading labelled text datasets (JSON Lines or CSV) with errors that point at the offending line."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import DataError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv")
# Bounds that keep a hostile or mistaken file from exhausting memory. A file is read whole (memory is
# proportional to its size, about 8x for short texts), so its size is capped before reading; one example
# is capped because texts are truncated to the model's max length anyway; a task's labels are capped
# because each label costs a head row and router statistics.
MAX_FILE_BYTES = 1 << 30
MAX_LINE_BYTES = 1 << 20
MAX_LABELS_PER_TASK = 10_000


@dataclass(frozen=True)
class Dataset:
    """Texts with string labels, in file order. `labels` lists the distinct labels in first-seen order."""

    texts: list[str]
    targets: list[str]
    source: str = "<memory>"

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(self.targets))

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """sha256 over the (text, label) pairs: identifies the data a module was trained on without storing it."""
        return fingerprint_records(zip(self.texts, self.targets))


def fingerprint_records(records) -> str:
    """`sha256:<hex>` over JSON-encoded records, one per line: what task.json's data fingerprints hold."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record if isinstance(record, str) else list(record), ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def as_dataset(data: "str | os.PathLike | Dataset | Sequence") -> Dataset:
    """Labelled data in the shapes users have: a file path, a Dataset, a list of `{"text", "label"}`
    dicts, a list of (text, label) pairs, or a (texts, labels) pair of lists. In-memory rows are
    validated like a file's lines, and errors name the row (`<memory>:3`)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(data)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(part, (list, tuple)) for part in data) \
            and not (data[0] and isinstance(data[0][0], (list, tuple, dict))):
        return dataset_from_pairs(list(data[0]), list(data[1]))
    if isinstance(data, (list, tuple)):
        texts, labels = [], []
        for number, row in enumerate(data, start=1):
            if isinstance(row, dict):
                for key in ("text", "label"):
                    if key not in row:
                        raise DataError(f"<memory>:{number}: missing field '{key}'")
                row = (row["text"], row["label"])
            if not isinstance(row, (list, tuple)) or len(row) != 2:
                raise DataError(f"<memory>:{number}: expected a {{'text', 'label'}} dict or a (text, label) pair, "
                                f"got {_json_type(row)}")
            texts.append(row[0])
            labels.append(row[1])
        return dataset_from_pairs(texts, labels)
    raise DataError(f"expected a dataset path, a Dataset, a list of {{'text', 'label'}} dicts or (text, label) pairs, "
                    f"or (texts, labels); got {type(data).__name__}")


def as_corpus(data: "str | os.PathLike | Sequence[str]") -> tuple[list[str], str]:
    """(texts, source) of unlabelled text given as a file (.jsonl/.csv with `text`, or .txt) or a list of strings."""
    if isinstance(data, (list, tuple)):
        texts = list(data)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text #{i + 1}: expected a non-empty string")
        if not texts:
            raise DataError("<memory>: empty corpus (no texts)")
        return texts, "<memory>"
    if isinstance(data, (str, os.PathLike)):
        texts, _ = load_texts(data)
        return texts, str(data)
    raise DataError(f"expected a corpus path or a list of texts, got {type(data).__name__}")


def load_dataset(path: str | Path) -> Dataset:
    """Read a `.jsonl` (one `{"text", "label"}` object per line) or `.csv` (header with `text`, `label`) file."""
    rows = _read_rows(Path(path), require_label=True)
    texts, targets = zip(*rows)
    return Dataset(list(texts), list(targets), source=str(path))


def load_texts(path: str | Path, blank_lines: bool = True) -> tuple[list[str], list[str] | None]:
    """Texts to predict, from .jsonl/.csv (`text` required, `label` optional) or .txt (one text per line).

    Returns the texts and, when every row has a label, the labels (so callers can score predictions).
    `blank_lines=False` (predict, generate: one output line per input line) refuses a blank line between
    texts instead of skipping it, so outputs never drift from the lines they answer.
    """
    path = Path(path)
    if path.suffix.lower() == ".txt":
        lines = _lines(_decode(path))
        while lines and not lines[-1].strip():
            lines.pop()
        if not blank_lines:
            _refuse_blank(path, lines)
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise DataError(f"{path}: no texts (the file is empty)")
        return texts, None
    if not blank_lines and path.suffix.lower() == ".jsonl":
        lines = _lines(_decode(path))
        while lines and not lines[-1].strip():
            lines.pop()
        _refuse_blank(path, lines)
    rows = _read_rows(path, require_label=False)
    labels = [label for _, label in rows]
    return [text for text, _ in rows], (labels if all(label is not None for label in labels) else None)


def _read_rows(path: Path, require_label: bool) -> list[tuple[str, str | None]]:
    content = _decode(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl or .csv")
    rows = _read_csv(path, content, require_label) if suffix == ".csv" else _read_jsonl(path, content, require_label)
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


def _decode(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size:,} bytes; data files may be at most {MAX_FILE_BYTES:,} bytes (split the file)")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from None


def dataset_from_pairs(texts: list[str], labels: list[str], source: str = "<memory>") -> Dataset:
    """Validate in-memory data the same way files are validated."""
    if len(texts) != len(labels):
        raise DataError(f"{source}: {len(texts)} texts but {len(labels)} labels")
    rows = [_validate(source, i + 1, t, lab) for i, (t, lab) in enumerate(zip(texts, labels))]
    if not rows:
        raise DataError(f"{source}: no examples")
    return Dataset([r[0] for r in rows], [r[1] for r in rows], source=source)


def read_json(path: str | Path) -> object:
    """A whole .json file, size-capped and decoded with errors naming the file and line."""
    path = Path(path)
    try:
        return json.loads(_decode(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def read_objects(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file whose lines must be JSON objects;
    the reader of formats whose fields vary by line (instruction data: prompt/response or messages)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: unsupported file type {path.suffix.lower() or '(none)'!r}; use .jsonl")
    rows = []
    for number, line in enumerate(_lines(_decode(path)), start=1):
        _check_line_size(path, number, line)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {_json_type(record)}")
        rows.append((number, record))
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


def _read_jsonl(path: Path, content: str, require_label: bool) -> list[tuple[str, str | None]]:
    rows = []
    for number, line in enumerate(_lines(content), start=1):
        _check_line_size(path, number, line)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object with 'text' and 'label'")
        for key in ("text", "label") if require_label else ("text",):
            if key not in record:
                raise DataError(f"{path}:{number}: missing field '{key}'")
        rows.append(_validate(str(path), number, record["text"], record.get("label"), require_label))
    return rows


def _refuse_blank(path: Path, lines: list[str]) -> None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"{path}:{number}: blank line (each line gets one answer line: remove blank lines "
                            "so answers stay aligned with their inputs)")


def _lines(content: str) -> list[str]:
    """Lines split at `\n` only (with a `\r` before it dropped): JSON Lines and text files end lines there,
    while U+2028, U+0085 or a form feed may sit inside a text (`str.splitlines` would cut at them)."""
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _json_type(value: object) -> str:
    """How a JSON user names a value's type (null, not NoneType)."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "an array",
             tuple: "an array", dict: "an object", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _read_csv(path: Path, content: str, require_label: bool) -> list[tuple[str, str | None]]:
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)  # strict: an unclosed quote is an error, not one huge field
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise DataError(f"{path}:1: malformed CSV ({exc})") from None
    columns = [name.strip() for name in header]
    for key in ("text", "label") if require_label else ("text",):
        if key not in columns:
            raise DataError(f"{path}:1: CSV header has no '{key}' column (found: {', '.join(columns) or 'nothing'})")
    text_at = columns.index("text")
    label_at = columns.index("label") if "label" in columns else None
    rows = []
    number = reader.line_num + 1  # the line the record being read starts on (a quoted field may span lines)
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                number = reader.line_num + 1
                continue
            _check_line_size(path, number, max(row, key=len))
            if len(row) != len(columns):
                raise DataError(f"{path}:{number}: expected {len(columns)} fields, found {len(row)}")
            rows.append(_validate(str(path), number, row[text_at], None if label_at is None else row[label_at], require_label))
            number = reader.line_num + 1
    except csv.Error as exc:
        reason = "a quoted field is never closed" if "unexpected end of data" in str(exc) else str(exc)
        raise DataError(f"{path}:{number}: malformed CSV ({reason})") from None
    return rows


def _check_line_size(path: Path, number: int, text: str) -> None:
    if len(text) > MAX_LINE_BYTES // 4 and len(text.encode("utf-8")) > MAX_LINE_BYTES:
        raise DataError(f"{path}:{number}: {len(text.encode('utf-8')):,} bytes in one example; the limit is "
                        f"{MAX_LINE_BYTES:,} (texts are truncated to the model's max length anyway)")


def check_label_count(data: "Dataset") -> None:
    """A task may hold at most MAX_LABELS_PER_TASK labels (checked before any training)."""
    count = len(set(data.targets))
    if count > MAX_LABELS_PER_TASK:
        raise DataError(f"{data.source}: {count:,} distinct labels; a task holds at most {MAX_LABELS_PER_TASK:,} "
                        "(split the labels into several tasks)")


def _validate(source: str, number: int, text: object, label: object, require_label: bool = True) -> tuple[str, str | None]:
    if not isinstance(text, str):
        raise DataError(f"{source}:{number}: field 'text' must be a string, got {_json_type(text)}")
    if not text.strip():
        raise DataError(f"{source}:{number}: field 'text' is empty")
    if not require_label and (label is None or (isinstance(label, str) and not label.strip())):
        return text, None
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(f"{source}:{number}: field 'label' must be a string, got {_json_type(label)}")
    label = str(label).strip()
    if not label:
        raise DataError(f"{source}:{number}: field 'label' is empty")
    return text, label
