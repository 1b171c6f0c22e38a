import pytest

from sisa import config
from sisa.errors import SisaError


def test_toml_round_trip_and_digest(tmp_path):
    cfg = config.Config().replace(partition={"shards": 7}, model={"hidden": (64, 32)}, aggregation="vote")
    path = tmp_path / "c.toml"
    path.write_text(config.dumps(cfg))
    back = config.load(path)
    assert back == cfg and back.digest() == cfg.digest()
    assert cfg.replace(aggregation="softmax").digest() == cfg.digest()  # chosen at predict time
    assert cfg.replace(train={"seed": 1}).digest() != cfg.digest()


def test_budget_schedule_spreads_the_epochs():
    cfg = config.Config().replace(partition={"slices": 4}, train={"epochs": 10})
    assert [cfg.epochs_for_stage(r) for r in range(4)] == [4, 4, 4, 4]  # ceil(2*10/5)
    assert config.Config().replace(train={"schedule": "uniform"}).epochs_for_stage(2) == 10


@pytest.mark.parametrize("text, phrase", [
    ("[partition]\nshards = 0\n", "partition.shards must be an integer from 1 to"),
    ("[model]\nname = 'vit'\n", "unknown model"),
    ("[train]\nepochz = 3\n", "unknown key"),
    ("[bogus]\nx = 1\n", "unknown config section"),
    ("[train\n", "not valid TOML"),
])
def test_bad_configs_are_refused(tmp_path, text, phrase):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SisaError, match=phrase):
        config.load(path)
