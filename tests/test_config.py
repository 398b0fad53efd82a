from dataclasses import dataclass, field

import pytest

from unirl.config import RunConfig, apply_overrides, load_config
from unirl.errors import UnirlError


@dataclass
class Optim:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ExampleConfig(RunConfig):
    group_size: int = 4
    optim: Optim = field(default_factory=Optim)
    judge: str = "self_vqa"


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_typed_load_and_overrides(tmp_path):
    path = write(tmp_path, "recipe: unirl\nmodel: janus-tiny\ngroup_size: 8\noptim:\n  lr: 0.001\n")
    cfg = load_config(path, ExampleConfig, ["optim.lr=2e-4", "seed=3", "optim.betas=[0.5, 0.9]"])
    assert cfg.group_size == 8 and cfg.seed == 3 and cfg.model == "janus-tiny"
    assert cfg.optim.lr == pytest.approx(2e-4) and cfg.optim.betas == [0.5, 0.9]
    assert isinstance(load_config(write(tmp_path, "optim: {lr: 1}\n"), ExampleConfig).optim.lr, float)


@pytest.mark.parametrize("text,overrides,message", [
    ("group_sise: 3\n", [], r"c.yaml: unknown key 'group_sise'"),
    ("optim:\n  lrr: 1\n", [], r"unknown key 'optim.lrr'"),
    ("group_size: three\n", [], r"'group_size' expected int"),
    ("group_size: 2.5\n", [], r"'group_size' expected int"),
    ("optim: 3\n", [], r"'optim' expected a mapping"),
    ("seed: true\n", [], r"'seed' expected int"),
    ("", ["nokey=1"], r"unknown key 'nokey'"),
    ("", ["seed"], r"override 'seed' expected the form key=value"),
    ("a: [1,\n", [], r"c.yaml:\d+: not valid YAML"),
    ("- 1\n- 2\n", [], r"expected a mapping of config keys"),
])
def test_bad_config_names_key_and_file(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(UnirlError, match=message) as e:
        load_config(path, ExampleConfig, overrides)
    assert "\n" not in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UnirlError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", ExampleConfig)


def test_overrides_do_not_mutate_input():
    data = {"optim": {"lr": 1}}
    out = apply_overrides(data, ["optim.lr=2"])
    assert data["optim"]["lr"] == 1 and out["optim"]["lr"] == 2
