"""`load_config`: YAML + `--set` overrides, validated; every bad config is a PesoError naming the field."""

from pathlib import Path

import pytest
import yaml

from peso.config import RunConfig, load_config
from peso.errors import PesoError

VALID = """\
data:
  path: {data}
  history: 10
  min_items: 4
  blocks: [0, 1, 2]
model:
  name: tiny
  tiny: {{hidden: 16, layers: 1, heads: 2, intermediate: 32}}
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
train:
  lr: 1.0e-3
  epochs: 2
  batch_size: 8
decode: {{beam: 20, top_k: 10}}
methods: [{{name: peso, lam: 2.0}}, single]
seeds: [0, 1]
"""


def names(cfg: RunConfig) -> list[str]:
    return [m.key for m in cfg.methods]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def minimal(tmp_path: Path, data_dir: Path, extra: str = "") -> Path:
    return write(tmp_path / "cfg.yaml", f"data: {{path: {data_dir}}}\n{extra}")


def error_of(path, overrides=None) -> str:
    with pytest.raises(PesoError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_valid_yaml_is_read(tmp_path, data_dir):
    cfg = load_config(write(tmp_path / "cfg.yaml", VALID.format(data=data_dir)))
    assert isinstance(cfg, RunConfig)
    assert cfg.data.path == str(data_dir)
    assert (cfg.data.history, cfg.data.min_items, cfg.data.blocks) == (10, 4, [0, 1, 2])
    assert (cfg.model.tiny.hidden, cfg.model.tiny.heads) == (16, 2)
    assert cfg.model.lora.r == 4
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.epochs == 2
    assert cfg.decode.beam == 20
    assert [m.name for m in cfg.methods] == ["peso", "single"] and cfg.methods[0].lam == 2.0
    assert cfg.seeds == [0, 1]
    # unset fields take their defaults
    assert cfg.train.temperature == 0.8
    assert cfg.model.tiny.max_positions == 512


def test_dump_round_trips(tmp_path, data_dir):
    cfg = load_config(write(tmp_path / "cfg.yaml", VALID.format(data=data_dir)))
    again = load_config(write(tmp_path / "again.yaml", yaml.safe_dump(cfg.dump())))
    assert again == cfg
    assert again.dump() == cfg.dump()


def test_defaults_from_a_minimal_config(tmp_path, data_dir):
    cfg = load_config(minimal(tmp_path, data_dir))
    assert names(cfg) == ["peso", "single", "frozen", "popular"]
    assert cfg.threads == "auto"
    assert cfg.data.history == 20
    assert cfg.data.min_items == 3
    assert cfg.decode.top_k == 10


def test_overrides_are_parsed_as_yaml(tmp_path, data_dir):
    cfg = load_config(
        minimal(tmp_path, data_dir),
        [
            "train.lr=1e-3",
            "methods=[peso,single]",
            "train.epochs=3",
            "data.max_users=null",
            "model.tiny.hidden=64",
            "seeds=[3, 4]",
            "train.grad_clip=null",
        ],
    )
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert names(cfg) == ["peso", "single"]
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.data.max_users is None
    assert cfg.model.tiny.hidden == 64
    assert cfg.seeds == [3, 4]
    assert cfg.train.grad_clip is None


def test_override_replaces_the_yaml_value(tmp_path, data_dir):
    path = write(tmp_path / "cfg.yaml", VALID.format(data=data_dir))
    cfg = load_config(path, ["train.epochs=7", "model.tiny.heads=4", "methods=[{name: peso, lam: 0.5}]"])
    assert cfg.train.epochs == 7
    assert cfg.model.tiny.heads == 4
    assert cfg.model.tiny.hidden == 16  # sibling keys are kept
    assert cfg.methods[0].lam == 0.5
    assert cfg.train.lr == pytest.approx(1e-3)


def test_override_value_may_contain_equals(tmp_path, data_dir):
    cfg = load_config(minimal(tmp_path, data_dir), ["model.name=a=b"])
    assert cfg.model.name == "a=b"


def test_unknown_key(tmp_path, data_dir):
    msg = error_of(minimal(tmp_path, data_dir), ["train.lrr=1e-3"])
    assert "train.lrr" in msg
    assert "unknown setting" in msg


def test_unknown_key_in_yaml(tmp_path, data_dir):
    msg = error_of(minimal(tmp_path, data_dir, "decode: {beams: 5}\n"))
    assert "decode.beams" in msg
    assert str(tmp_path / "cfg.yaml") in msg


def test_unknown_section(tmp_path, data_dir):
    assert "trian" in error_of(minimal(tmp_path, data_dir), ["trian.lr=1"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lr=-1", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("train.epochs=0", "train.epochs"),
        ("data.history=0", "data.history"),
        ("data.min_items=2", "data.min_items"),
        ("model.lora.dropout=1", "model.lora.dropout"),
        ("train.lr=fast", "train.lr"),
        ("model.dtype=float16", "model.dtype"),
        ("model.item_softmax=items", "model.item_softmax"),
        ("train.continual_item_softmax=items", "train.continual_item_softmax"),
        ("methods=[{name: peso, continual_item_softmax: items}]", "methods[0] (peso)"),
        ("threads=0", "threads"),
        ("decode.top_k=5", "decode.top_k"),
    ],
)
def test_out_of_range_values(tmp_path, data_dir, override, field):
    assert f"{field}:" in error_of(minimal(tmp_path, data_dir), [override])


def test_beam_smaller_than_top_k(tmp_path, data_dir):
    msg = error_of(minimal(tmp_path, data_dir), ["decode.beam=5", "decode.top_k=10"])
    assert "decode" in msg
    assert "beam (5)" in msg and "top_k (10)" in msg


def test_hidden_not_divisible_by_heads(tmp_path, data_dir):
    msg = error_of(minimal(tmp_path, data_dir, "model: {tiny: {hidden: 30, heads: 4}}\n"))
    assert "model.tiny" in msg
    assert "hidden (30)" in msg and "heads (4)" in msg


def test_duplicate_methods(tmp_path, data_dir):
    msg = error_of(minimal(tmp_path, data_dir), ["methods=[peso,single,peso]"])
    assert "methods" in msg
    assert "twice" in msg


def test_duplicate_seeds(tmp_path, data_dir):
    assert "seeds" in error_of(minimal(tmp_path, data_dir), ["seeds=[1,1]"])


def test_empty_methods(tmp_path, data_dir):
    assert "methods" in error_of(minimal(tmp_path, data_dir), ["methods=[]"])


def test_missing_data_section(tmp_path):
    msg = error_of(write(tmp_path / "cfg.yaml", "train: {lr: 1.0e-3}\n"))
    assert "data" in msg


def test_malformed_yaml_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "data:\n  path: [unclosed\ntrain: {lr: 1}\n")
    msg = error_of(path)
    assert str(path) in msg
    assert "YAML" in msg


def test_top_level_not_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    assert str(path) in error_of(path)


def test_empty_file_reports_missing_data(tmp_path):
    path = write(tmp_path / "empty.yaml", "")
    msg = error_of(path)
    assert str(path) in msg
    assert "data" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = error_of(path)
    assert str(path) in msg
    assert "not found" in msg


def test_override_without_equals(tmp_path, data_dir):
    msg = error_of(minimal(tmp_path, data_dir), ["train.lr"])
    assert "--set" in msg
    assert "train.lr" in msg


def test_override_below_a_leaf(tmp_path, data_dir):
    path = write(tmp_path / "cfg.yaml", VALID.format(data=data_dir))
    msg = error_of(path, ["train.lr.x=1"])
    assert "--set" in msg
    assert "lr" in msg


def test_relative_data_path_resolved_against_config_folder(tmp_path, monkeypatch):
    (tmp_path / "datasets" / "toy").mkdir(parents=True)
    cfg_path = write(tmp_path / "configs" / "run.yaml", "data: {path: ../datasets/toy}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(cfg_path)
    assert Path(cfg.data.path).resolve() == (tmp_path / "datasets" / "toy").resolve()
    assert Path(cfg.data.path).is_dir()


def test_relative_data_path_given_by_override_is_relative_to_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "configs" / "toy").mkdir(parents=True)  # a folder of that name beside the config too
    (tmp_path / "toy").mkdir()
    cfg_path = write(tmp_path / "configs" / "run.yaml", "data: {path: nowhere}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_path, ["data.path=toy"])
    assert cfg.data.path == str(tmp_path / "toy")  # absolute: the saved config works from anywhere


def test_relative_data_path_in_the_file_is_relative_to_the_file_even_if_missing(tmp_path, monkeypatch):
    cfg_path = write(tmp_path / "configs" / "run.yaml", "data: {path: ../missing/folder}\n")
    (tmp_path / "work" / "missing" / "folder").mkdir(parents=True)  # the working folder has one: not used
    monkeypatch.chdir(tmp_path / "work")
    assert load_config(cfg_path).data.path == str(tmp_path / "missing" / "folder")


def test_model_folder_is_resolved_but_a_hub_id_is_kept(tmp_path, monkeypatch, data_dir):
    (tmp_path / "configs" / "ckpt").mkdir(parents=True)
    cfg_path = write(
        tmp_path / "configs" / "run.yaml", f"data: {{path: {data_dir}}}\nmodel: {{name: ckpt}}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert load_config(cfg_path).model.name == str(tmp_path / "configs" / "ckpt")
    assert load_config(cfg_path, ["model.name=org/some-model"]).model.name == "org/some-model"


def test_absolute_data_path_kept(tmp_path, data_dir):
    assert load_config(minimal(tmp_path, data_dir)).data.path == str(data_dir)


def test_config_path_is_a_directory(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    assert str(folder) in error_of(folder)


def test_config_not_text(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"data: {path: \xff\xfe}\n")
    assert str(path) in error_of(path)


def test_duplicate_blocks(tmp_path, data_dir):
    assert "data.blocks" in error_of(minimal(tmp_path, data_dir), ["data.blocks=[0,1,1]"])
