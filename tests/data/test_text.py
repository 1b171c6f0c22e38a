"""Text layer: tokenizers, token rows, readers, the embedded corpus."""

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sisa.data import text as T
from sisa.errors import SisaError

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_byte_round_trip(s):
    tok = T.ByteTokenizer()
    ids = tok.encode(s)
    assert all(T.OFFSET <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s
    assert tok.decode([T.BOS, *ids, T.EOS, T.PAD]) == s  # specials are dropped
    (arr,) = tok.encode_batch([s])
    assert arr.dtype == np.int32 and arr.tolist() == ids


def test_byte_tokenizer_basics():
    tok = T.tokenizer("bytes")
    assert isinstance(tok, T.ByteTokenizer) and tok.vocab_size == 259 and tok.describe() == {"kind": "bytes"}
    assert tok.encode("A") == [ord("A") + T.OFFSET]
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # a cut character decodes, it does not raise
    T.check_tokenizer({"kind": "bytes"}, tok)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=8), st.integers(1, 10), st.booleans(), st.booleans())
def test_encode_rows_properties(texts, length, bos, eos):
    tok = T.ByteTokenizer()
    rows, truncated = T.encode_rows(texts, tok, length, bos=bos, eos=eos)
    assert rows.shape == (len(texts), length) and rows.dtype == np.int32
    assert truncated.shape == (len(texts),) and truncated.dtype == bool
    for row, cut, s in zip(rows, truncated, texts):
        ids = tok.encode(s)
        full = [T.BOS] * bos + ids + [T.EOS] * eos
        assert cut == (len(full) > length)
        if not cut:
            expected = full + [T.PAD] * (length - len(full))
        else:  # the end is cut; EOS never fits then
            expected = ([T.BOS] * bos + ids)[:length]
        assert row.tolist() == expected
        if bos:
            assert row[0] == T.BOS
        used = len(full) if not cut else length
        assert (row[used:] == T.PAD).all()


def test_encode_rows_examples_and_length_check():
    rows, cut = T.encode_rows(["ab", "abcdef", ""], T.ByteTokenizer(), 5)
    a, b = ord("a") + T.OFFSET, ord("b") + T.OFFSET
    assert rows[0].tolist() == [T.BOS, a, b, T.EOS, T.PAD]
    assert rows[1].tolist() == [T.BOS, a, b, b + 1, b + 2] and cut.tolist() == [False, True, False]
    assert rows[2].tolist() == [T.BOS, T.EOS, 0, 0, 0]
    rows, cut = T.encode_rows(["abc"], T.ByteTokenizer(), 4)  # BOS + 3 tokens fill it: EOS lost
    assert rows[0].tolist() == [T.BOS, a, b, b + 1] and cut.tolist() == [True]
    with pytest.raises(SisaError, match="length"):
        T.encode_rows(["a"], T.ByteTokenizer(), 0)


def _word_tokenizer(path, words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_file_tokenizer(tmp_path):
    path = _word_tokenizer(tmp_path / "tok.json")
    tok = T.tokenizer(str(path))
    assert isinstance(tok, T.FileTokenizer)
    assert tok.vocab_size == len(WORDS) + 1 + T.OFFSET
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert tok.describe() == {"kind": "file", "path": str(path.resolve()), "sha256": sha}
    assert T.FileTokenizer(str(path)).describe() == tok.describe()  # stable
    s = "the dog sat on a mat"
    ids = tok.encode(s)
    assert ids == [WORDS.index(w) + 1 + T.OFFSET for w in s.split()]
    assert all(T.OFFSET <= i < tok.vocab_size for i in ids)
    assert tok.decode([T.BOS, *ids, T.EOS]) == s
    rows, cut = T.encode_rows([s, "cat"], tok, 4)
    assert rows.tolist() == [[T.BOS, *ids[:3]], [T.BOS, WORDS.index("cat") + 1 + T.OFFSET, T.EOS, T.PAD]]
    assert cut.tolist() == [True, False]
    T.check_tokenizer(tok.describe(), tok)
    copy = tmp_path / "copy.json"
    copy.write_bytes(path.read_bytes())
    T.check_tokenizer(tok.describe(), T.FileTokenizer(str(copy)))  # same bytes elsewhere: same ids


def test_file_tokenizer_ignores_saved_truncation_and_padding(tmp_path):
    from tokenizers import Tokenizer

    path = _word_tokenizer(tmp_path / "tok.json")
    t = Tokenizer.from_file(str(path))
    t.enable_truncation(2)
    t.enable_padding(length=8, pad_id=0)
    t.save(str(path))
    assert len(T.FileTokenizer(str(path)).encode("the cat sat on")) == 4


def test_check_tokenizer_refuses_changed_file(tmp_path):
    path = _word_tokenizer(tmp_path / "tok.json")
    recorded = T.FileTokenizer(str(path)).describe()
    _word_tokenizer(path, WORDS + ["extra"])
    changed = T.FileTokenizer(str(path))
    with pytest.raises(SisaError, match=r"differs.*" + recorded["sha256"][:12] + r".*" + changed.sha256[:12]
                       + r".*trained with"):
        T.check_tokenizer(recorded, changed)
    with pytest.raises(SisaError, match="trained with tokenizer bytes"):
        T.check_tokenizer({"kind": "bytes"}, changed)


def test_file_tokenizer_errors(tmp_path):
    with pytest.raises(SisaError, match="missing.json"):
        T.tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SisaError, match="bad.json.*not a valid"):
        T.tokenizer(str(bad))
    latin = tmp_path / "latin.json"
    latin.write_bytes(b"\xff\xfe")
    with pytest.raises(SisaError, match="latin.json"):
        T.tokenizer(str(latin))


def test_txt_reader(tmp_path):
    p = tmp_path / "docs.txt"
    p.write_bytes("first line\r\nsecond \u2028 still second\n\nfourth\n".encode())
    train, test = T.read_table(str(p))
    assert test is None and train == {"text": ["first line", "second \u2028 still second", "", "fourth"]}
    p.write_bytes(b"\xef\xbb\xbfone\ntwo")  # BOM dropped, no final newline
    assert T.read_table(str(p))[0]["text"] == ["one", "two"]
    p.write_bytes(b"one\n\n")  # a final newline after an empty line: that line is a document
    assert T.read_table(str(p))[0]["text"] == ["one", ""]
    p.write_bytes(b"")
    assert T.read_table(str(p))[0]["text"] == []
    assert T.is_text_source(str(p))


def test_non_utf8_names_line_and_byte(tmp_path):
    for name in ("latin.txt", "latin.jsonl"):
        p = tmp_path / name
        p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
        with pytest.raises(SisaError, match=r"line 2, byte offset 28.*UTF-8"):
            T.read_table(str(p))


def test_jsonl_reader(tmp_path):
    p = tmp_path / "docs.jsonl"
    rows = [{"text": "a b", "y": 1, "id": 10, "user": "u1"}, {"text": "c", "y": 0, "id": 11, "user": "u2"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\r\n")
    train, test = T.read_table(str(p))
    assert test is None
    assert train == {"text": ["a b", "c"], "label": [1, 0], "id": [10, 11], "group": ["u1", "u2"]}
    p.write_text('{"text": "only text"}\n')
    assert T.read_table(str(p))[0] == {"text": ["only text"]}
    assert T.is_text_source(str(p))


@pytest.mark.parametrize("content, match", [
    ('{"text": "a"}\n\n{"text": "b"}\n', "line 2 is blank"),
    ('{"text": "a"}\n{"text": \n', "line 2 is not valid JSON"),
    ('{"text": "a"}\n["a"]\n', "line 2 holds a list"),
    ('{"text": "a"}\n{"body": "b"}\n', 'line 2 has no "text" field'),
    ('{"text": 5}\n', 'line 1 has "text" is int'),
    ('{"text": "a", "label": 1}\n{"text": "b"}\n', "line 2 lacks the 'label' field"),
])
def test_jsonl_errors(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(SisaError, match=match):
        T.read_table(str(p))


def test_csv_reader(tmp_path):
    import pandas as pd

    p = tmp_path / "docs.csv"
    pd.DataFrame({"text": ["hello", "", "NA", "123"], "label": [0, 1, 0, 1], "group": [5, 5, 6, 6],
                  "other": [1.5, 2, 3, 4]}).to_csv(p, index=False)
    train, test = T.read_table(str(p))
    assert test is None
    assert train == {"text": ["hello", "", "NA", "123"], "label": [0, 1, 0, 1], "group": [5, 5, 6, 6]}
    assert T.is_text_source(str(p))
    q = tmp_path / "numbers.csv"
    pd.DataFrame({"x": [1, 2], "label": [0, 1]}).to_csv(q, index=False)
    assert not T.is_text_source(str(q))
    with pytest.raises(SisaError, match=r"no 'text' column; columns are \['x', 'label'\]"):
        T.read_table(str(q))


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["x", "y z"], "id": [7, 9], "y": [1, 0]}), p)
    train, test = T.read_table(str(p))
    assert test is None and train == {"text": ["x", "y z"], "label": [1, 0], "id": [7, 9]}
    assert T.is_text_source(str(p))
    pq.write_table(pa.table({"text": ["x", None]}), p)
    with pytest.raises(SisaError, match="row 1 holds None"):
        T.read_table(str(p))
    pq.write_table(pa.table({"text": [1, 2]}), p)
    with pytest.raises(SisaError, match="not strings"):
        T.read_table(str(p))
    pq.write_table(pa.table({"body": ["x"]}), p)
    assert not T.is_text_source(str(p))
    with pytest.raises(SisaError, match=r"columns are \['body'\]"):
        T.read_table(str(p))


def test_save_to_disk_reader(tmp_path):
    import datasets as hf

    d = hf.DatasetDict({
        "train": hf.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0], "pixels": [1, 2, 3]}),
        "test": hf.Dataset.from_dict({"text": ["d"], "label": [1], "pixels": [4]}),
    })
    d.save_to_disk(str(tmp_path / "dd"))
    train, test = T.read_table(str(tmp_path / "dd"))
    assert train == {"text": ["a", "b", "c"], "label": [0, 1, 0]} and test == {"text": ["d"], "label": [1]}
    assert T.is_text_source(str(tmp_path / "dd"))
    hf.Dataset.from_dict({"text": ["only"], "id": [3]}).save_to_disk(str(tmp_path / "one"))
    assert T.read_table(str(tmp_path / "one")) == ({"text": ["only"], "id": [3]}, None)
    hf.Dataset.from_dict({"x": [1]}).save_to_disk(str(tmp_path / "nums"))
    assert not T.is_text_source(str(tmp_path / "nums"))
    with pytest.raises(SisaError, match=r"no 'text' column; columns are \['x'\]"):
        T.read_table(str(tmp_path / "nums"))


def test_read_table_kinds(tmp_path):
    with pytest.raises(SisaError, match="no such file"):
        T.read_table(str(tmp_path / "nope.txt"))
    (tmp_path / "a.npz").write_bytes(b"")
    with pytest.raises(SisaError, match="unsupported file kind '.npz'"):
        T.read_table(str(tmp_path / "a.npz"))
    assert not T.is_text_source(str(tmp_path / "a.npz"))
    assert not T.is_text_source(str(tmp_path / "missing.csv"))


def test_check_documents():
    T.check_documents(["a", " "], [0, 1], "docs.txt")
    texts = ["a", "", "b", ""] + [""] * 5
    with pytest.raises(SisaError, match=r"docs.txt: 7 empty document\(s\) \(line 1, 3, 4, 5, 6, \.\.\.\).*remove them"):
        T.check_documents(texts, range(len(texts)), "docs.txt", what="line")


def test_pydoc_corpus():
    ids, texts = T.pydoc_corpus()
    assert (ids, texts) == T.pydoc_corpus()  # deterministic
    assert len(texts) > 1000 and ids == list(range(len(texts)))
    assert all(len(t) >= 20 and t == t.strip() and "\n\n" not in t for t in texts)
    assert T.corpus_version() == T.corpus_version() and T.corpus_version().startswith("python3.")
    texts.append("mutating the returned list does not change the corpus")
    assert len(T.pydoc_corpus()[1]) == len(texts) - 1
