"""The compiled-program cache (sisa.training.aot) never runs code it did not store itself.

Planted files are pickles whose unpickling touches a marker file: a test fails if the marker
appears, or if training differs by one bit from training with the cache off.
"""

import hashlib
import json
import os
import pathlib
import pickle
import shutil
import warnings

import pytest

import sisa
from sisa.training import aot, ensemble
from sisa.verification import final_digests
from sisa.workdir import Workdir


class _Plant:
    """Unpickling it creates `marker`."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _train(path, cfg, ds, cache) -> dict:
    """Train with SISA_CACHE_DIR=`cache` through new Programs (none held from earlier calls)."""
    ensemble.ensemble_for.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SISA_CACHE_DIR", str(cache))
        sisa.train(path, cfg, dataset=ds, progress=False)
    return final_digests(Workdir.open(path))


def _index(cache) -> dict:
    return json.loads((pathlib.Path(cache) / "index.json").read_text())["programs"]


def _sha(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tiny_ds, tiny_cfg, tmp_path_factory):
    """Two configs that differ in learning rate only: cache-off results and genuine caches."""
    root = tmp_path_factory.mktemp("program-cache")
    cfgs = {"a": tiny_cfg.replace(model={"hidden": (27,)}),
            "b": tiny_cfg.replace(model={"hidden": (27,)}, train={"learning_rate": 3e-2})}
    out = {}
    for k, cfg in cfgs.items():
        reference = _train(root / f"off-{k}", cfg, tiny_ds, "off")
        genuine = _train(root / f"on-{k}", cfg, tiny_ds, root / f"cache-{k}")
        assert genuine == reference
        names = {name.split("-")[0]: name for name in _index(root / f"cache-{k}")}
        assert sorted(names) == ["epoch", "init"]
        out[k] = {"cfg": cfg, "reference": reference, "cache": root / f"cache-{k}", "names": names}
    assert out["a"]["reference"] != out["b"]["reference"]  # the learning rate matters
    return out


def _record(cache, name, key):
    """An index entry for `name` as sisa writes one: its bytes' digest, under `key`."""
    path = pathlib.Path(cache) / "index.json"
    programs = json.loads(path.read_text())["programs"] if path.exists() else {}
    programs[name] = {"sha256": _sha(pathlib.Path(cache) / name), "key": key}
    path.write_text(json.dumps({"programs": programs}))


def _plant(cache, run, marker, index=None):
    """A planted pickle under each of `run`'s program names. index: None (no entry), "wrong"
    (the right key, a wrong digest) or "right" (key and digest right: what only someone who
    can write the index could record)."""
    cache.mkdir(mode=0o700, exist_ok=True)
    for name in run["names"].values():
        (cache / name).write_bytes(pickle.dumps(_Plant(marker)))
        if index:
            _record(cache, name, _index(run["cache"])[name]["key"])
    if index == "wrong":
        programs = _index(cache)
        for entry in programs.values():
            entry["sha256"] = "0" * 64
        (cache / "index.json").write_text(json.dumps({"programs": programs}))


def _cache_warnings(caught) -> int:
    return sum(issubclass(w.category, aot.ProgramCacheWarning) for w in caught)


def _train_counting_warnings(path, cfg, ds, cache) -> tuple[dict, int]:
    """`_train`'s digests, and how many ProgramCacheWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _train(path, cfg, ds, cache)
    return got, _cache_warnings(caught)


@pytest.mark.parametrize("how", ["no index entry", "wrong digest", "other owner", "symlink"])
def test_planted_program_is_never_unpickled(runs, tiny_ds, tmp_path, how):
    a = runs["a"]
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    _plant(cache, a, marker, index={"no index entry": None, "wrong digest": "wrong"}.get(how, "right"))
    if how == "other owner":  # digest and key recorded right: the owner alone refuses it
        if os.getuid() != 0:
            pytest.skip("chown needs root")
        for name in a["names"].values():
            os.chown(cache / name, 12345, 12345)
    if how == "symlink":  # the link's target is recorded right
        for name in a["names"].values():
            (tmp_path / name).write_bytes((cache / name).read_bytes())
            (cache / name).unlink()
            (cache / name).symlink_to(tmp_path / name)
    got, warned = _train_counting_warnings(tmp_path / "wd", a["cfg"], tiny_ds, cache)
    assert not marker.exists()
    assert got == a["reference"]
    assert warned == 1
    for name in a["names"].values():  # replaced by a genuine program, recorded in the index
        assert not (cache / name).is_symlink() and (cache / name).stat().st_uid == os.getuid()
        assert _index(cache)[name] == {"sha256": _sha(cache / name), "key": _index(a["cache"])[name]["key"]}


@pytest.mark.parametrize("how", ["group/other writable", "other owner", "symlink"])
def test_untrusted_directory_is_neither_read_nor_written(runs, tiny_ds, tmp_path, how):
    a = runs["a"]
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    _plant(cache, a, marker, index="right")  # loadable, were the directory trusted
    where = cache
    if how == "group/other writable":
        cache.chmod(0o777)
    elif how == "other owner":
        if os.getuid() != 0:
            pytest.skip("chown needs root")
        os.chown(cache, 12345, 12345)
    else:
        where = tmp_path / "link"
        where.symlink_to(cache)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    got, warned = _train_counting_warnings(tmp_path / "wd", a["cfg"], tiny_ds, where)
    assert not marker.exists()
    assert got == a["reference"]
    assert warned == 1
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # nothing written either


def test_program_of_another_learning_rate_is_refused(runs, tiny_ds, tmp_path):
    """A genuine program of config b, renamed to config a's program with b's index entry."""
    a, b = runs["a"], runs["b"]
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    programs = {}
    for fn, name in a["names"].items():
        shutil.copyfile(b["cache"] / b["names"][fn], cache / name)
        programs[name] = _index(b["cache"])[b["names"][fn]]
    (cache / "index.json").write_text(json.dumps({"programs": programs}))
    got, warned = _train_counting_warnings(tmp_path / "wd", a["cfg"], tiny_ds, cache)
    assert got == a["reference"]
    assert warned == 1


def test_stored_programs_are_loaded(runs, tiny_ds, tmp_path):
    a = runs["a"]
    cache = tmp_path / "a" / "b" / "programs"  # sisa creates it, and its parents, private
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = dict(aot.counts)
        first = _train(tmp_path / "wd1", a["cfg"], tiny_ds, cache)
        middle = dict(aot.counts)
        second = _train(tmp_path / "wd2", a["cfg"], tiny_ds, cache)
    assert middle["compiled"] - before["compiled"] == 2 and middle["loaded"] == before["loaded"]
    assert aot.counts["loaded"] - middle["loaded"] == 2 and aot.counts["compiled"] == middle["compiled"]
    assert first == second == a["reference"]
    assert _cache_warnings(caught) == 0
    for p in (tmp_path / "a", tmp_path / "a" / "b", cache):
        assert p.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in cache.iterdir())


def test_fresh_programs_reads_nothing_from_the_cache(runs, tiny_ds, tmp_path):
    """Even a cache whose index was forged (by its owner) cannot vouch for itself."""
    a = runs["a"]
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    _plant(cache, a, marker, index="right")
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    with aot.fresh_programs():
        got = _train(tmp_path / "wd", a["cfg"], tiny_ds, cache)
    assert not marker.exists()
    assert got == a["reference"]
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    _train(tmp_path / "wd-trusting", a["cfg"], tiny_ds, cache)
    assert marker.exists()  # what the test guards against: outside fresh_programs the owner's index is trusted


def _forged(cache, a, b):
    """A cache holding config b's programs under config a's names, recorded in the index as
    only the cache's owner could (a forgery the trust checks cannot see)."""
    cache.mkdir(mode=0o700)
    for fn, name in a["names"].items():
        shutil.copyfile(b["cache"] / b["names"][fn], cache / name)
        _record(cache, name, _index(a["cache"])[name]["key"])
    return cache


def test_fresh_programs_passes_over_programs_loaded_earlier(runs, tiny_ds, tmp_path):
    """Config b's program forged in as config a's is loaded (and trains the wrong model) by a
    trusting call; the same Programs under fresh_programs() compile and train the right one."""
    a, b = runs["a"], runs["b"]
    cache = _forged(tmp_path / "cache", a, b)
    trusting = _train(tmp_path / "wd1", a["cfg"], tiny_ds, cache)
    assert trusting != a["reference"]  # the forgery works when the cache is trusted
    compiled = aot.counts["compiled"]
    with pytest.MonkeyPatch.context() as mp, aot.fresh_programs():
        mp.setenv("SISA_CACHE_DIR", str(cache))
        sisa.train(tmp_path / "wd2", a["cfg"], dataset=tiny_ds, progress=False)  # same Ensemble, same Programs
    assert final_digests(Workdir.open(tmp_path / "wd2")) == a["reference"]
    assert aot.counts["compiled"] - compiled == 2


def test_verify_does_not_certify_a_model_trained_by_a_forged_program(runs, tiny_ds, tmp_path):
    """The forgery above trains the wrong model; `sisa verify`, compiling afresh, says so."""
    a, b = runs["a"], runs["b"]
    cache = _forged(tmp_path / "cache", a, b)
    assert _train(tmp_path / "wd", a["cfg"], tiny_ds, cache) != a["reference"]
    ensemble.ensemble_for.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SISA_CACHE_DIR", str(cache))
        cert = sisa.verify(tmp_path / "wd", progress=False)
    assert cert["verdict"] == "FAILED"
    assert not any(r["identical"] for r in cert["shards"].values())
