"""Settings: one model from the environment; bad values fail at start-up, naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.core.errors import ConfigError, MappingFileError, SettingsError
from bridge.core.settings import ENV, Settings
from bridge.web.app import create_app


def test_defaults() -> None:
    """With nothing set, the documented defaults apply."""
    settings = Settings.from_env({})
    assert settings.dub_api_url == "https://api.dub.co"
    assert settings.deadline_seconds == 4.0 and settings.rate_limit_per_minute == 1200
    assert settings.api_key is None and settings.ledger == "on"


def test_every_variable_is_read() -> None:
    """Each documented variable reaches its field."""
    env = {
        "DUB_API_KEY": "k",
        "DUB_API_URL": "http://127.0.0.1:9/",
        "BRIDGE_CONCURRENCY": "3",
        "BRIDGE_LEDGER": "off",
        "WEB_CONCURRENCY": "4",
        "BRIDGE_LOG_LEVEL": "debug",
    }
    settings = Settings.from_env(env)
    assert settings.api_key == "k" and settings.dub_api_url == "http://127.0.0.1:9"
    assert (settings.concurrency, settings.workers, settings.ledger) == (3, 4, "off")
    assert settings.log_level == "DEBUG"
    assert set(ENV.values()) >= {"DUB_API_KEY", "SEGMENT_SHARED_SECRET", "BRIDGE_DB"}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BRIDGE_CONCURRENCY", "lots", "BRIDGE_CONCURRENCY: expected a valid integer"),
        ("BRIDGE_DEADLINE_SECONDS", "0", "BRIDGE_DEADLINE_SECONDS: expected greater than 0"),
        ("DUB_API_URL", "api.dub.co", "DUB_API_URL: expected an http:// or https:// URL"),
        ("BRIDGE_LOG_LEVEL", "loud", "BRIDGE_LOG_LEVEL: expected one of DEBUG"),
        ("BRIDGE_LEDGER", "maybe", "BRIDGE_LEDGER: expected 'on', 'off' or 'memory'"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, expected: str) -> None:
    """A bad value names the variable, what was expected and what was found."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert expected in str(info.value) and repr(value) in str(info.value)


def test_secrets_are_never_echoed() -> None:
    """A bad secret's value is hidden in the error."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {"DUB_API_KEY": "k", "BRIDGE_CONCURRENCY": "x"}, segment_shared_secret=123
        )
    assert "SEGMENT_SHARED_SECRET" in str(info.value) and "123" not in str(info.value)


def test_app_refuses_to_start_without_key(tmp_path: Path) -> None:
    """create_app without DUB_API_KEY raises a clear configuration error."""
    with pytest.raises(ConfigError, match="DUB_API_KEY is not set"):
        create_app(Settings.from_env({}, db_path=tmp_path / "l.db"))


def test_app_refuses_to_start_on_bad_mappings(tmp_path: Path) -> None:
    """create_app with a broken mapping directory raises every mapping error."""
    (tmp_path / "m.yaml").write_text("mappings: [{name: x}]\n")
    with pytest.raises(MappingFileError, match="x.trigger: Field required"):
        create_app(
            Settings.from_env({}, dub_api_key="k", mappings_dir=tmp_path, db_path=tmp_path / "l.db")
        )


def test_lease_must_outlive_a_call() -> None:
    """A lease shorter than the longest call could let two workers send one conversion."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"BRIDGE_LEASE_SECONDS": "5"})
    assert "BRIDGE_LEASE_SECONDS: expected more than BRIDGE_DEADLINE_SECONDS" in str(info.value)
    assert "found '5'" in str(info.value)


def _documented_variables() -> set[str]:
    """The variables named in the first column of the README's Configuration table."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        cells = line.split("|")
        if len(cells) > 2 and "`" in cells[1]:
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1]))
    return names


# Read by the platform or the Procfile's shell, not by the settings model.
PLATFORM_VARIABLES = {"PORT"}


def test_the_configuration_table_and_the_settings_agree() -> None:
    """Every variable the settings read is in the README's table, and every row is read."""
    documented = _documented_variables()
    read = set(ENV.values())
    assert read - documented == set(), "read but not documented"
    assert documented - read - PLATFORM_VARIABLES == set(), "documented but never read"


def test_every_field_has_its_variable() -> None:
    """Each settings field is read from exactly one variable, and each variable names a field."""
    assert set(ENV) == set(Settings.model_fields)
    assert len(set(ENV.values())) == len(ENV)


def test_allow_unsigned_is_a_boolean_named_in_errors() -> None:
    """BRIDGE_ALLOW_UNSIGNED takes a yes/no word; anything else names the variable."""
    assert Settings.from_env({"BRIDGE_ALLOW_UNSIGNED": "1"}).allow_unsigned is True
    assert Settings.from_env({}).allow_unsigned is False
    with pytest.raises(SettingsError, match="BRIDGE_ALLOW_UNSIGNED: expected a valid boolean"):
        Settings.from_env({"BRIDGE_ALLOW_UNSIGNED": "perhaps"})


def test_a_ledger_is_chosen_only_when_said() -> None:
    """The SQLite default is not a choice; DATABASE_URL, BRIDGE_DB or BRIDGE_LEDGER are."""
    assert not Settings.from_env({}).ledger_chosen
    assert Settings.from_env({"BRIDGE_DB": "bridge-ledger.sqlite3"}).ledger_chosen
    assert Settings.from_env({"DATABASE_URL": "postgresql://u@h/db"}).ledger_chosen
    assert Settings.from_env({"BRIDGE_LEDGER": "memory"}).ledger_chosen
