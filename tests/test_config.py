"""Config: defaults, the shipped YAML, and error messages that name file, key, expectation, value."""

from pathlib import Path

import pytest

from node.cli import main
from node.config import Config, load_config, parse_config
from node.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_is_valid_and_equals_the_defaults():
    assert load_config(ROOT / "config" / "calcnode.yaml") == Config()


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_values_are_converted_and_nested():
    config = parse_config({
        "listen": {"ae_title": "CAD1", "port": 104},
        "detection": {"link_distance_mm": 4, "speck_sigma_mm": [0.05, 0.1, 0.2]},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242, "outputs": ["sr"]}},
    })
    assert config.listen.port == 104
    assert config.detection.link_distance_mm == 4.0
    assert isinstance(config.detection.link_distance_mm, float)
    assert config.detection.speck_sigma_mm == (0.05, 0.1, 0.2)
    assert config.destinations["pacs"].outputs == ("sr",)


@pytest.mark.parametrize("data, message", [
    ({"listen": {"port": "abc"}}, "c.yaml: listen.port: expected an integer 1..65535, got 'abc'"),
    ({"listen": {"port": 0}}, "listen.port: expected an integer 1..65535, got 0"),
    ({"listen": {"ae_title": "A" * 17}}, "listen.ae_title: expected a string (1-16 characters"),
    ({"lisen": {}}, "c.yaml: lisen: unknown key"),
    ({"detection": {"seed_cnr": True}}, "detection.seed_cnr: expected a number"),
    ({"detection": {"min_cluster_specks": 2.5}}, "detection.min_cluster_specks: expected an integer"),
    ({"outputs": ["sr", "pdf"]}, "outputs[1]: expected one of sr, sc, gsps, got 'pdf'"),
    ({"destinations": {"pacs": {"ae_title": "PACS", "port": 4242}}}, "destinations.pacs.host: required key is missing"),
    ({"destinations": {"pacs": {"ae_title": "P", "host": "h", "port": 70000}}}, "destinations.pacs.port: expected an integer 1..65535, got 70000"),
    ({"reporting": {"uid_root": "1.2.3"}}, "reporting.uid_root: expected a string (digits and dots ending with '.'"),
    ([1, 2], "(top level): expected a mapping"),
])
def test_errors_name_file_key_expectation_and_value(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data, source="c.yaml")
    assert any(message in p for p in err.value.problems), err.value.problems


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config({"listen": {"port": "x", "ae_title": ""}, "nope": 1})
    assert len(err.value.problems) == 3


def test_check_config_command(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("study: {complete_after_s: 5}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: {complete_after_s: -1}\n")
    assert main(["check-config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["check-config", str(bad)]) == 2
    assert "study.complete_after_s: expected a number 0..86400, got -1" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
