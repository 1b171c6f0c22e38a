import os

# Several host devices, set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("SISA_DEVICES", "1")  # mesh tests choose their own
os.environ.setdefault("SISA_PRECOMPILE", "off")  # no compiling ahead in every train; tests/test_no_compiles.py turns it on

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sisa.config import Config  # noqa: E402
from sisa.data.datasets import Dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _compile_cache(tmp_path_factory):
    os.environ["SISA_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla-cache"))


def blobs(n_train=300, n_test=90, features=8, classes=3, seed=0) -> Dataset:
    """Well-separated gaussian blobs: tiny, learnable, deterministic."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, features))
    y = rng.integers(0, classes, n_train + n_test)
    x = (centers[y] + rng.normal(0, 1, (len(y), features))).astype(np.float32)
    return Dataset("blobs", x[:n_train], y[:n_train].astype(np.int32), np.arange(n_train) * 3 + 5,
                   x[n_train:], y[n_train:].astype(np.int32), classes)


def npz_dataset(directory) -> Dataset:
    """`blobs()` written as an .npz file and loaded by path, so `audit` can reread the source."""
    from sisa.data import datasets

    ds = blobs()
    path = directory / "blobs.npz"
    np.savez(path, x=ds.x, y=ds.y, id=ds.ids, x_test=ds.x_test, y_test=ds.y_test)
    return datasets.load(str(path))


def trained_and_forgotten(root, cfg, forgotten_id: int) -> dict:
    """A run trained on `npz_dataset(root)` (`trained`), a copy of it that forgot `forgotten_id`
    (`forgotten`), and the data file (`data`)."""
    import shutil

    import sisa

    trained, forgotten = root / "trained", root / "forgotten"
    sisa.api.train(str(trained), cfg, dataset=npz_dataset(root), progress=False)
    shutil.copytree(trained, forgotten)
    sisa.api.forget(str(forgotten), [forgotten_id], progress=False)
    return {"trained": trained, "forgotten": forgotten, "data": root / "blobs.npz"}


@pytest.fixture(scope="session")
def tiny_ds() -> Dataset:
    return blobs()


@pytest.fixture(scope="session")
def tiny_cfg() -> Config:
    return Config().replace(
        data={"dataset": "blobs"},
        partition={"shards": 3, "slices": 3},
        model={"hidden": (16,)},
        train={"epochs": 3, "batch_size": 16, "learning_rate": 1e-2},
    )


def tree_equal(a, b) -> bool:
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def file_digests(root) -> dict:
    """path -> sha256 of every file under root (the lock file excluded)."""
    import hashlib
    from pathlib import Path

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and p.name != ".lock"}


def assert_served_clean(root, served: dict, ids) -> None:
    """No stage serving a shard (`served`: shard -> {"stage", ...}, as predict and evaluate give it)
    saw any of `ids`."""
    from sisa.workdir import Workdir

    wd = Workdir.open(root)
    for shard, info in served.items():
        seen = set(wd.checkpoints[int(shard)].lineage(info["stage"])["ids"])
        assert not seen.intersection(ids), (shard, info["stage"])


def store_bytes(root) -> bytes:
    """Every byte of a run's data store (its index and features files), file after file."""
    from pathlib import Path

    data = Path(root) / "data"
    return b"".join(p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and p.name != "test.npz")


def restore_store(backup, root) -> None:
    """Put a backup's data store (index and features files) back into the run at `root`."""
    import shutil
    from pathlib import Path

    shutil.rmtree(Path(root) / "data")
    shutil.copytree(Path(backup) / "data", Path(root) / "data")
