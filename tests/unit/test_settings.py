import pytest

from engines.models import EMBEDDED_MODEL_ID
from gateway.settings import ConfigError, load_settings


def test_defaults_serve_the_embedded_model_on_loopback():
    settings = load_settings(environ={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert [m.id for m in settings.models] == [EMBEDDED_MODEL_ID]
    assert settings.models[0].engines[0].kind == "vllm"
    assert settings.models[0].engines[0].model_path is None


def test_file_then_environment_then_overrides(tmp_path):
    config = tmp_path / "sentrail.yaml"
    config.write_text(
        "port: 9000\nmax_body_bytes: 2048\nmodels:\n"
        "  - id: big\n    engines:\n      - kind: remote\n"
        "        url: http://127.0.0.1:9999\n        max_concurrency: 4\n"
    )
    settings = load_settings(
        str(config), environ={"SENTRAIL_PORT": "9100", "SENTRAIL_LOG_FORMAT": "json"}, host="0.0.0.0"
    )
    assert settings.port == 9100 and settings.host == "0.0.0.0" and settings.max_body_bytes == 2048
    assert settings.log_format == "json"
    engine = settings.models[0].engines[0]
    assert (engine.kind, engine.url, engine.max_concurrency) == ("remote", "http://127.0.0.1:9999", 4)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("port: -1\n", "port"),
        ("models:\n  - id: m\n    engines:\n      - kind: gpu-magic\n", "kind"),
        ("unknown_key: 1\n", "unknown_key"),
        ("port: [\n", "parse"),
        ("- just\n- a list\n", "mapping"),
        ("models:\n  - id: m\n    engines:\n      - kind: remote\n", "needs a url"),
        ("models:\n  - id: m\n    engines:\n      - {kind: inprocess, cpus: '0'}\n", "cpus only apply to kind 'vllm'"),
        ("models:\n  - id: m\n    engines:\n      - kind: inprocess\n      - kind: inprocess\n", "at most one"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, text, needle):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(config), environ={})
    assert needle in str(caught.value)
    assert str(config) in str(caught.value)


def test_bad_environment_value_is_refused():
    with pytest.raises(ConfigError, match="port"):
        load_settings(environ={"SENTRAIL_PORT": "eighty"})
