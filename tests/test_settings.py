"""Settings: flags > SESSIOND_* env > TOML file > defaults, and errors that name the culprit.

These call the same ``add_serve_arguments``/``resolve`` that ``sessiond serve`` and
``sessiond config`` use, with an explicit environment, so the machine's own variables never
leak in.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sessiond_server.config import Limits, ServerConfig
from sessiond_server.settings import (
    SettingsError,
    add_serve_arguments,
    all_settings,
    config_from_args,
    describe,
    resolve,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_no_flags_no_env_no_file_gives_the_dataclass_defaults() -> None:
    config = config_from_args(parse(), {})
    default = ServerConfig()
    for field in dataclasses.fields(ServerConfig):
        if field.name != "clock":
            assert getattr(config, field.name) == getattr(default, field.name), field.name


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path) -> None:
    config_file = write(tmp_path / "sessiond.toml", """
readers = 2
durability = "normal"
abandoned_after_seconds = 60
log_format = "json"

[limits]
max_watchers = 7
max_page_size = 300
""")
    environ = {"SESSIOND_READERS": "3", "SESSIOND_DURABILITY": "full",
               "SESSIOND_MAX_WATCHERS": "8"}
    resolved = resolve(parse("--config", str(config_file), "--readers", "5"), environ)
    config = resolved.config
    assert config.readers == 5  # flag over env over file
    assert config.durability == "full"  # env over file
    assert config.limits.max_watchers == 8  # env over file, in [limits]
    assert config.abandoned_after_seconds == 60.0  # file over default
    assert config.limits.max_page_size == 300
    assert config.log_format == "json"
    assert config.shutdown_grace_seconds == ServerConfig().shutdown_grace_seconds
    assert resolved.sources["readers"] == "flag"
    assert resolved.sources["durability"] == "environment"
    assert resolved.sources["abandoned_after_seconds"] == f"file {config_file}"
    assert resolved.sources["retention_ttl_seconds"] == "default"


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    config_file = write(tmp_path / "s.toml", 'metrics_address = ":9464"\n')
    config = config_from_args(parse(), {"SESSIOND_CONFIG": str(config_file)})
    assert config.metrics_address == ":9464"


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path: Path) -> None:
    config_file = write(tmp_path / "etc" / "s.toml" if (tmp_path / "etc").mkdir() is None
                        else tmp_path, 'database = "data/sessiond.db"\n')
    config = config_from_args(parse("--config", str(config_file)), {})
    assert config.database == tmp_path / "etc" / "data" / "sessiond.db"


def test_booleans_and_the_short_flag_spellings() -> None:
    config = config_from_args(parse("--no-reflection", "--abandoned-after", "90",
                                    "--tls-cert", "c.pem", "--api-keys", "keys.toml"),
                              {"SESSIOND_INSECURE": "yes"})
    assert config.reflection is False
    assert config.abandoned_after_seconds == 90.0
    assert config.insecure is True
    assert (config.tls_cert_file, config.api_keys_file) == (Path("c.pem"), Path("keys.toml"))


@pytest.mark.parametrize(
    ("toml", "environ", "argv", "named"),
    [
        ("readerz = 3\n", {}, [], "unknown key 'readerz'"),
        ("[limits]\nmax_watcherz = 3\n", {}, [], "unknown key 'limits.max_watcherz'"),
        ('readers = "many"\n', {}, [], "readers: 'many' is not an integer"),
        ("", {"SESSIOND_READERS": "lots"}, [], "SESSIOND_READERS: 'lots' is not an integer"),
        ("", {}, ["--readers", "0"], "--readers: must be above 0"),
        ("", {"SESSIOND_DURABILITY": "sometimes"}, [], "SESSIOND_DURABILITY: must be one of"),
        ('log_format = "xml"\n', {}, [], "log_format: must be one of text, json"),
        ("", {}, ["--retention-ttl-seconds", "-1"], "--retention-ttl-seconds: must not be"),
        ("", {}, ["--metrics-address", "nowhere:port"], "--metrics-address: metrics address"),
        ("", {"SESSIOND_REFLECTION": "perhaps"}, [], "'perhaps' is not a boolean"),
        ("readers = [\n", {}, [], "not TOML"),
    ],
)
def test_bad_settings_stop_the_start_naming_each_one(
    tmp_path: Path, toml: str, environ: dict[str, str], argv: list[str], named: str
) -> None:
    config_file = write(tmp_path / "s.toml", toml)
    with pytest.raises(SettingsError) as caught:
        resolve(parse("--config", str(config_file), *argv), environ)
    assert named in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config_file = write(tmp_path / "s.toml", "nope = 1\nreaders = -2\n")
    with pytest.raises(SettingsError) as caught:
        resolve(parse("--config", str(config_file)), {"SESSIOND_DURABILITY": "x"})
    assert len(caught.value.problems) == 3


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        resolve(parse("--config", str(tmp_path / "absent.toml")), {})


def test_unknown_sessiond_variables_are_warned_about_not_fatal() -> None:
    resolved = resolve(parse(), {"SESSIOND_READRES": "3", "SESSIOND_TOKEN": "client's"})
    assert resolved.warnings == ["environment: SESSIOND_READRES is not a setting; ignored"]


def test_postgres_urls_are_kept_as_written_and_shown_without_password() -> None:
    resolved = resolve(parse("--database", "postgresql://app:hunter2@db:5432/sessiond"), {})
    assert resolved.config.database == "postgresql://app:hunter2@db:5432/sessiond"
    shown = describe(resolved)
    assert "hunter2" not in shown
    assert "postgresql://app:***@db:5432/sessiond" in shown


def test_describe_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    resolved = resolve(parse("--readers", "6"), {"SESSIOND_PAGE_TOKEN_KEY": "s3cret-key"})
    shown = describe(resolved)
    assert resolved.config.page_token_key == b"s3cret-key"
    assert "s3cret" not in shown
    assert 'page_token_key = "***"  # environment' in shown
    assert "readers = 6  # flag" in shown
    assert "[limits]" in shown
    # What `sessiond config` prints is itself a valid file (secrets aside) for the same result.
    reread = write(tmp_path / "again.toml", shown.replace('"***"', '"s3cret-key"'))
    again = config_from_args(parse("--config", str(reread)), {})
    assert again.readers == 6
    assert again.limits == resolved.config.limits


def test_every_config_field_is_a_setting_with_unique_names() -> None:
    settings = all_settings()
    fields = {f.name for f in dataclasses.fields(ServerConfig)} - {"clock", "limits"}
    fields |= {f.name for f in dataclasses.fields(Limits)}
    assert {s.field for s in settings} == fields
    for attribute in ("env", "flag", "key"):
        names: list[Any] = [getattr(s, attribute) for s in settings]
        assert len(names) == len(set(names)), attribute
    assert all(s.help for s in settings), [s.field for s in settings if not s.help]
