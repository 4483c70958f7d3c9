import dataclasses
from pathlib import Path

import pytest
import yaml

from audiotag.config import Config, config_from_dict, load_config, parse_override, read_yaml
from audiotag.errors import ConfigError

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "src" / "audiotag" / "configs" / "default.yaml"


def test_commented_default_file_matches_the_code_defaults():
    assert load_config(DEFAULT_YAML) == Config()
    listed = read_yaml(DEFAULT_YAML)
    missing = [f"{section}.{key}" for section, values in Config().to_dict().items() if isinstance(values, dict)
               for key in values if key not in listed.get(section, {})]
    assert not missing, f"default.yaml does not document {missing}"


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(Config().to_yaml())
    assert load_config(path) == Config()


def test_file_then_overrides_in_order(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("features:\n  n_mels: 128\n  deltas: true\n")
    cfg = load_config(path, ["features.n_mels=96", "seed=3"])
    assert (cfg.features.n_mels, cfg.features.deltas, cfg.seed) == (96, True, 3)
    assert cfg.audio == Config().audio  # untouched sections keep their defaults


def test_override_values_are_parsed_as_yaml():
    assert parse_override("features.fmax=null") == {"features": {"fmax": None}}
    assert load_config(None, ["features.amin=1e-5"]).features.amin == 1e-5  # YAML 1.1 reads 1e-5 as text
    assert parse_override("x=hello") == {"x": "hello"}


@pytest.mark.parametrize("override, message", [
    ("features.n_mel=3", "did you mean 'features.n_mels'"),
    ("featurs.n_mels=3", "did you mean 'features'"),
    ("features.n_mels=3.5", "must be an integer"),
    ("features.n_mels=0", "out of range"),
    ("features.deltas=maybe", "must be true or false"),
    ("features.db_reference=maxx", "did you mean 'max'"),
    ("features.fmax=9000", "Nyquist"),
    ("features.n_mels=600", "exceeds the 513 frequency bins"),
    ("features.delta_width=4", "must be odd"),
    ("audio.sample_rate=abc", "must be an integer"),
    ("noequals", "key=value"),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_config_files_are_data_not_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_non_mapping_and_missing_files(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_every_field_has_a_default_and_section_types_are_checked():
    cfg = config_from_dict({"audio": {"sample_rate": 22050}})
    assert cfg.audio.sample_rate == 22050
    for section in dataclasses.fields(Config):
        assert section.default is not dataclasses.MISSING or section.default_factory is not dataclasses.MISSING
    with pytest.raises(ConfigError, match="mapping of settings"):
        config_from_dict({"audio": 5})
    assert yaml.safe_load(Config().to_yaml())["features"]["n_mels"] == 64
