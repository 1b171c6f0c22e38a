"""Text layer: tokenizers, fixed-length token rows, readers of text tables, an embedded corpus.

No JAX here: numpy and the standard library; `tokenizers`, pandas, pyarrow and `datasets` are
imported only by the functions that need them.

Token ids: 0..2 are PAD, BOS, EOS for every tokenizer; a tokenizer's own ids are shifted up by
OFFSET, so a tokenizer file's own special tokens never collide with them.

Readers return a plain table, ``dict[str, list]`` with key "text" (list of str) and, when the
source has them, "label" (column `label` or `y`), "id" (`id`) and "group" (`group` or `user`),
as python values. Sources:

* `.txt`: one document per line (split on "\\n" only; a trailing "\\r" is stripped; the file's
  final newline does not start an extra document). No ids: the caller numbers lines 0..n-1.
* `.jsonl`: one JSON object per line with a string `text` and optional label/id/group fields.
* `.csv` (pandas), `.parquet` (pyarrow) and `save_to_disk` directories (`datasets`), read in
  place: never `datasets.load_dataset`, which copies every row into a cache a forget cannot reach.

Files must be UTF-8 (a leading byte-order mark is dropped).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from sisa.errors import SisaError

PAD, BOS, EOS = 0, 1, 2
OFFSET = 3  # a tokenizer's own ids start here

TEXT_KINDS = ".txt, .jsonl, .csv, .parquet or an HF `datasets` directory (save_to_disk)"
_COLUMNS = {"label": ("label", "y"), "id": ("id",), "group": ("group", "user")}  # key -> source names
_BATCH = 4096  # documents per tokenizer call in encode_rows


# ---------------------------------------------------------------------------------------------
# Tokenizers


class ByteTokenizer:
    """UTF-8 bytes as tokens: nothing learned from the data, so nothing to forget."""

    spec = "bytes"
    vocab_size = 256 + OFFSET

    def encode(self, text: str) -> list[int]:
        return [b + OFFSET for b in text.encode()]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """encode() of each text, as int32 arrays (what encode_rows uses)."""
        return [np.frombuffer(t.encode(), np.uint8).astype(np.int32) + OFFSET for t in texts]

    def decode(self, ids) -> str:
        """Text of `ids`; PAD/BOS/EOS and ids outside the vocabulary are dropped."""
        data = bytes(int(i) - OFFSET for i in ids if OFFSET <= int(i) < self.vocab_size)
        return data.decode(errors="replace")  # a cut in the middle of a character is not an error

    def describe(self) -> dict:
        return {"kind": "bytes"}


class FileTokenizer:
    """A Hugging Face `tokenizers` JSON file (e.g. tokenizer.json), pinned by its sha256."""

    def __init__(self, path: str):
        self.path = str(Path(path).resolve())
        self.spec = self.path
        try:
            data = Path(self.path).read_bytes()
        except OSError as e:
            raise SisaError(
                f"tokenizer {self.path}: cannot read it ({e.strerror or e}); pass \"bytes\" or the path "
                f"of a Hugging Face `tokenizers` JSON file (tokenizer.json)"
            ) from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        import tokenizers

        try:
            # Built from the very bytes that were hashed, so the digest names what was loaded.
            tok = tokenizers.Tokenizer.from_str(data.decode())
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
            raise SisaError(
                f"tokenizer {self.path} is not a valid Hugging Face `tokenizers` JSON file "
                f"({type(e).__name__}: {e}); save one with Tokenizer.save(path), or use \"bytes\""
            ) from None
        # Settings saved in the file would silently cut or pad documents; encode_rows does both.
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        # Ids need not be contiguous in a hand-written vocabulary: cover the largest one.
        top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
        self.vocab_size = max(tok.get_vocab_size(with_added_tokens=True), top + 1) + OFFSET

    def encode(self, text: str) -> list[int]:
        return [i + OFFSET for i in self._tok.encode(text, add_special_tokens=False).ids]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """encode() of each text, as int32 arrays (what encode_rows uses)."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) + OFFSET for e in encs]

    def decode(self, ids) -> str:
        """Text of `ids`; PAD/BOS/EOS and ids outside the vocabulary are dropped."""
        return self._tok.decode([int(i) - OFFSET for i in ids if OFFSET <= int(i) < self.vocab_size])

    def describe(self) -> dict:
        return {"kind": "file", "path": self.path, "sha256": self.sha256}


def tokenizer(spec: str) -> ByteTokenizer | FileTokenizer:
    """"bytes" -> ByteTokenizer, anything else is the path of a tokenizers JSON file."""
    return ByteTokenizer() if spec == "bytes" else FileTokenizer(spec)


def check_tokenizer(recorded: dict, tok) -> None:
    """Refuse `tok` unless it is the tokenizer described by `recorded` (a describe() from training).

    A tokenizer file is the same one when its bytes are (same sha256): a moved or copied file
    gives the same token ids, so only its content is compared.
    """
    now = tok.describe()
    if now == recorded:
        return
    if now.get("kind") == recorded.get("kind") == "file":
        if now.get("sha256") == recorded.get("sha256"):
            return
        same = now.get("path") == recorded.get("path")
        where = f"tokenizer file {now['path']}" + ("" if same else f" (trained with {recorded.get('path')})")
        raise SisaError(
            f"{where} differs from the one this run was trained with: sha256 "
            f"{str(recorded.get('sha256'))[:12]}... recorded, {str(now.get('sha256'))[:12]}... now; the run must be "
            f"used with the tokenizer it was trained with: restore that file"
        )
    raise SisaError(
        f"this run was trained with tokenizer {_show(recorded)}, not {_show(now)}; the run must be used "
        f"with the tokenizer it was trained with"
    )


def _show(desc: dict) -> str:
    if desc.get("kind") == "file":
        return f"file {desc.get('path')} (sha256 {str(desc.get('sha256'))[:12]}...)"
    return str(desc.get("kind", desc))


# ---------------------------------------------------------------------------------------------
# Token rows


def encode_rows(texts: list[str], tok, length: int, *, bos: bool = True,
                eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """int32 rows [N, length]: [BOS] + tokens + [EOS], cut at the end to `length`, PAD after.

    EOS is written only when it fits. Returns (rows, truncated): truncated[i] is True exactly
    when row i's tokens plus its BOS/EOS exceed `length` (it lost tokens or its EOS).
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise SisaError(f"token rows need a length of at least 1, got {length!r}")
    n, b, e = len(texts), int(bos), int(eos)
    rows = np.full((n, length), PAD, np.int32)
    truncated = np.zeros(n, bool)
    if bos:
        rows[:, 0] = BOS
    batch = getattr(tok, "encode_batch", None)
    for start in range(0, n, _BATCH):
        chunk = texts[start:start + _BATCH]
        encoded = batch(chunk) if batch else [tok.encode(t) for t in chunk]
        for i, ids in enumerate(encoded, start):
            k = min(len(ids), length - b)
            rows[i, b:b + k] = ids[:k]
            if b + len(ids) + e > length:
                truncated[i] = True
            elif eos:
                rows[i, b + k] = EOS
    return rows, truncated


# ---------------------------------------------------------------------------------------------
# Readers


def is_text_source(path: str) -> bool:
    """True for .txt/.jsonl, and for .csv/.parquet/`datasets` directories with a `text` column.

    Reads only a header or schema; a source that cannot be read is not a text source here
    (its own loader then says why).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.is_dir() and suffix in (".txt", ".jsonl"):
        return True
    try:
        return "text" in _columns(p)
    except Exception:  # noqa: BLE001 - any unreadable source is simply not a text source
        return False


def _columns(p: Path) -> list[str]:
    """Column names of a .csv, .parquet or `datasets` directory, without reading its rows."""
    if p.is_dir():
        obj = _load_from_disk(str(p))
        if isinstance(obj, dict):  # a DatasetDict: read_table uses its train split
            obj = obj["train"]
        return list(obj.column_names)
    if p.suffix.lower() == ".csv":
        import pandas as pd

        return [str(c) for c in pd.read_csv(p, nrows=0).columns]
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(p).names)
    return []


def read_table(path: str) -> tuple[dict, dict | None]:
    """(train table, test table or None) of a text source; see the module docstring."""
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise SisaError(f"text data {where!r}: no such file or directory; pass {TEXT_KINDS}")
    suffix = p.suffix.lower()
    with _reading(where):
        if p.is_dir():
            return _read_hf(where)
        if suffix == ".txt":
            return {"text": read_lines(p)}, None
        if suffix == ".jsonl":
            return _read_jsonl(p), None
        if suffix == ".csv":
            return _read_csv(p), None
        if suffix == ".parquet":
            return _read_parquet(p), None
    raise SisaError(f"text data {where!r}: unsupported file kind {p.suffix!r}; expected {TEXT_KINDS}")


def check_documents(texts, ids_or_lines, where: str, *, what: str = "id") -> None:
    """Refuse empty documents (""), naming up to 5 of them by `what` (id or line) and the count."""
    labels = list(ids_or_lines)
    bad = [labels[i] for i, t in enumerate(texts) if t == ""]
    if bad:
        shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise SisaError(
            f"{where}: {len(bad)} empty document(s) ({what} {shown}); empty documents cannot be trained on: "
            f"remove them"
        )


@contextlib.contextmanager
def _reading(where: str):
    """Turn any failure while reading `where` into a SisaError."""
    try:
        yield
    except SisaError:
        raise
    except UnicodeDecodeError as e:
        raise SisaError(f"text data {where!r} is not UTF-8 (byte {e.start}: {e.reason}); re-encode the file "
                        f"as UTF-8") from e
    except Exception as e:
        raise SisaError(f"cannot read text data {where!r}: {type(e).__name__}: {e}") from e


def _decode(p: Path) -> str:
    """The file as strict UTF-8; a bad byte is named by line (1-based) and byte offset."""
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SisaError(
            f"text data {str(p)!r} is not UTF-8: line {line}, byte offset {e.start} (0x{data[e.start]:02x}, "
            f"{e.reason}); re-encode the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write is not text


def read_lines(p: Path) -> list[str]:
    """Lines split on "\\n" alone (str.splitlines would also split on \\x0b, \\u2028, ...)."""
    text = _decode(p)
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":  # the file's final newline ends the last line, it starts no new one
        lines.pop()
    return [s.removesuffix("\r") for s in lines]


def read_jsonl(p: Path) -> list[dict]:
    """The objects of a .jsonl file, each checked to have a string "text" (any other fields kept);
    a bad line is named by its number."""
    where = str(p)
    rows = []
    for n, line in enumerate(read_lines(p), 1):
        if not line.strip():
            raise SisaError(f"text data {where!r}: line {n} is blank; every line of a .jsonl file must be one "
                            f"JSON object: remove blank lines")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SisaError(f"text data {where!r}: line {n} is not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise SisaError(f"text data {where!r}: line {n} holds a {type(obj).__name__}, not a JSON object "
                            f"with a \"text\" field")
        if not isinstance(obj.get("text"), str):
            got = "no \"text\" field" if "text" not in obj else f"\"text\" is {type(obj['text']).__name__}"
            raise SisaError(f"text data {where!r}: line {n} has {got}; each line needs a string \"text\" field")
        rows.append(obj)
    return rows


def _read_jsonl(p: Path) -> dict:
    where, rows = str(p), read_jsonl(p)
    table = {"text": [r["text"] for r in rows]}
    keys = set().union(*rows) if rows else set()
    for key, names in _COLUMNS.items():
        name = next((c for c in names if c in keys), None)
        if name is None:
            continue
        missing = next((n for n, r in enumerate(rows, 1) if name not in r), None)
        if missing is not None:
            raise SisaError(f"text data {where!r}: line {missing} lacks the {name!r} field other lines have; "
                            f"give it on every line or on none")
        table[key] = [r[name] for r in rows]
    return table


def _read_csv(p: Path) -> dict:
    import pandas as pd

    cols = _need_text(str(p), [str(c) for c in pd.read_csv(p, nrows=0).columns])
    try:  # what pandas treats as missing by default
        from pandas._libs.parsers import STR_NA_VALUES as na
    except ImportError:  # pragma: no cover - private name moved
        na = {"", "NA", "N/A", "NaN", "nan", "NULL", "null", "None", "<NA>", "#N/A"}
    # Missing values only outside the text column: there "" is the empty document and "NA" a word.
    df = pd.read_csv(p, keep_default_na=False, dtype={"text": str},
                     na_values={c: sorted(na) for c in cols if c != "text"})
    return _pick(str(p), cols, lambda c: df[c].tolist())


def _read_parquet(p: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _need_text(str(p), list(pq.read_schema(p).names))
    keep = ["text"] + [c for names in _COLUMNS.values() for c in names if c in cols]
    table = pq.read_table(p, columns=list(dict.fromkeys(keep)))
    kind = table.schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise SisaError(f"text data {str(p)!r}: column 'text' holds {kind}, not strings")
    return _pick(str(p), table.column_names, lambda c: table.column(c).to_pylist())


def _load_from_disk(path: str):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets as hf

    hf.disable_progress_bars()  # a local directory: bars would only clutter stderr
    return hf.load_from_disk(path)  # memory-maps the directory's own files: no copy


def _read_hf(path: str) -> tuple[dict, dict | None]:
    import datasets as hf

    obj = _load_from_disk(path)
    if isinstance(obj, hf.DatasetDict):
        if "train" not in obj:
            raise SisaError(f"text data {path!r} has no 'train' split; splits are {list(obj)}")
        test = _hf_split(f"{path} (test split)", obj["test"]) if "test" in obj else None
        return _hf_split(path, obj["train"]), test
    return _hf_split(path, obj), None


def _hf_split(where: str, ds) -> dict:
    cols = _need_text(where, list(ds.column_names))
    keep = [c for c in cols if c == "text" or any(c in names for names in _COLUMNS.values())]
    data = ds.select_columns(keep).with_format(None).to_dict()
    return _pick(where, cols, data.__getitem__)


def _need_text(where: str, cols: list[str]) -> list[str]:
    if "text" not in cols:
        raise SisaError(f"text data {where!r} has no 'text' column; columns are {cols}")
    return cols


def _pick(where: str, cols, get) -> dict:
    """The table by the column conventions, from `get(column) -> list`; text must be strings."""
    texts = get("text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise SisaError(f"text data {where!r}: column 'text' must hold strings; row {bad[0]} holds "
                        f"{texts[bad[0]]!r} ({len(bad)} such row(s))")
    table = {"text": texts}
    for key, names in _COLUMNS.items():
        name = next((c for c in names if c in cols), None)
        if name is not None:
            table[key] = get(name)
    return table


# ---------------------------------------------------------------------------------------------
# Embedded corpus


_MIN_PARAGRAPH = 20  # characters; shorter paragraphs are headings and stray lines


def pydoc_corpus() -> tuple[list[int], list[str]]:
    """(ids, texts): the paragraphs of the Python documentation's topics, shipped with CPython.

    Source: `pydoc_data.topics.topics` (topic -> text, the language reference sections that
    `help()` shows): real English technical prose inside every CPython, so no download and
    public text. Construction: topics in sorted key order; each topic's text split into
    paragraphs on blank lines, each stripped, those under 20 characters dropped; paragraphs kept
    in order. Ids are positions in that order (0..n-1): deterministic, and they change only if
    the Python version's pydoc_data does (corpus_version() names the one a run used).
    """
    texts = _pydoc_paragraphs()
    return list(range(len(texts))), list(texts)


def corpus_version() -> str:
    """The embedded corpus's version: Python "major.minor" plus a sha256 prefix of its text."""
    digest = hashlib.sha256("\0".join(_pydoc_paragraphs()).encode()).hexdigest()[:12]
    return f"python{sys.version_info[0]}.{sys.version_info[1]}-{digest}"


@functools.lru_cache(maxsize=1)
def _pydoc_paragraphs() -> tuple[str, ...]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise SisaError(
            "this Python has no pydoc_data (the embedded text corpus); some distributions split it off. "
            "Install the full standard library, or pass a text file (.txt, .jsonl) as the data set"
        ) from None
    out = []
    for key in sorted(topics):
        for para in re.split(r"\n[ \t\r\f\v]*\n", topics[key]):
            para = para.strip()
            if len(para) >= _MIN_PARAGRAPH:
                out.append(para)
    return tuple(out)
