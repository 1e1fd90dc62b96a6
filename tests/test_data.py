import pytest

from adapterbank.data import dataset_from_pairs, load_dataset, load_texts
from adapterbank.errors import DataError


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_jsonl_reads_texts_labels_in_order_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "hi", "label": "b"}\n\n{"text": "yo", "label": "a", "extra": 1}\n')
    data = load_dataset(path)
    assert data.texts == ["hi", "yo"]
    assert data.targets == ["b", "a"]
    assert data.labels == ["b", "a"]


def test_csv_with_bom_quotes_and_extra_columns(tmp_path):
    path = write(tmp_path, "d.csv", '\ufeffid,text,label\n1,"hello, world",greet\n2,"say ""hi""",greet\n')
    data = load_dataset(path)
    assert data.texts == ["hello, world", 'say "hi"']
    assert data.labels == ["greet"]


def test_integer_labels_become_strings(tmp_path):
    data = load_dataset(write(tmp_path, "d.jsonl", '{"text": "x", "label": 3}\n'))
    assert data.targets == ["3"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "d.jsonl:2: malformed JSON"),
        ('{"text": "a", "label": "x"}\n{"label": "x"}\n', "d.jsonl:2: missing field 'text'"),
        ('{"text": "a"}\n', "d.jsonl:1: missing field 'label'"),
        ('{"text": "", "label": "x"}\n', "d.jsonl:1: field 'text' is empty"),
        ('{"text": "a", "label": "  "}\n', "d.jsonl:1: field 'label' is empty"),
        ('{"text": "a", "label": null}\n', "d.jsonl:1: field 'label' must be a string"),
        ('{"text": "a", "label": true}\n', "d.jsonl:1: field 'label' must be a string"),
        ('{"text": 5, "label": "x"}\n', "d.jsonl:1: field 'text' must be a string"),
        ('["a", "x"]\n', "d.jsonl:1: expected a JSON object"),
        ("", "d.jsonl: no examples"),
        ("\n\n", "d.jsonl: no examples"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path, "d.jsonl", content)
    with pytest.raises(DataError) as caught:
        load_dataset(path)
    assert str(caught.value).startswith(str(tmp_path / message.split(":")[0]))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,lab\na,b\n", "d.csv:1: CSV header has no 'label' column"),
        ("text,label\na,b\nc\n", "d.csv:3: expected 2 fields, found 1"),
        ("text,label\na,\n", "d.csv:2: field 'label' is empty"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path, content, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_dataset(write(tmp_path, "d.csv", content))


def test_non_utf8_reports_line(tmp_path):
    path = write(tmp_path, "d.jsonl", b'{"text": "a", "label": "x"}\n{"text": "\xff", "label": "x"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid UTF-8"):
        load_dataset(path)


def test_missing_file_directory_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not a file"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="unsupported file type '.parquet'"):
        load_dataset(write(tmp_path, "d.parquet", "x"))


def test_load_texts_label_optional_and_txt(tmp_path):
    texts, labels = load_texts(write(tmp_path, "p.jsonl", '{"text": "a"}\n{"text": "b", "label": "x"}\n'))
    assert texts == ["a", "b"] and labels is None
    texts, labels = load_texts(write(tmp_path, "q.jsonl", '{"text": "a", "label": "y"}\n'))
    assert labels == ["y"]
    texts, labels = load_texts(write(tmp_path, "p.txt", "first text\n\nsecond, text\n"))
    assert texts == ["first text", "second, text"] and labels is None
    with pytest.raises(DataError, match="no texts"):
        load_texts(write(tmp_path, "e.txt", "\n"))


def test_fingerprint_tracks_content():
    one = dataset_from_pairs(["a", "b"], ["x", "y"])
    assert one.fingerprint() == dataset_from_pairs(["a", "b"], ["x", "y"]).fingerprint()
    assert one.fingerprint() != dataset_from_pairs(["a", "b"], ["x", "z"]).fingerprint()
    with pytest.raises(DataError, match="2 texts but 1 labels"):
        dataset_from_pairs(["a", "b"], ["x"])
