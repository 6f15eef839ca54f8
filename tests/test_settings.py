"""Settings precedence: environment > TOML file > defaults; overrides on top."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkv.errors import InvalidRequest
from ragkv.settings import Settings


def write_config(path: Path) -> Path:
    path.write_text(
        '[server]\nport = 9001\nhost = "0.0.0.0"\n\n[model]\nnum_threads = 3\n'
        '[auth.api_keys]\n"sk-file" = "file-tenant"\n'
    )
    return path


def test_defaults() -> None:
    settings = Settings.load()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.data_dir == (Path.cwd() / ".ragkv")
    assert not settings.auth.enabled


def test_file_beats_defaults(tmp_path: Path) -> None:
    settings = Settings.load(write_config(tmp_path / "ragkv.toml"))
    assert settings.server.port == 9001
    assert settings.server.host == "0.0.0.0"
    assert settings.model.num_threads == 3
    assert settings.auth.api_keys == {"sk-file": "file-tenant"}
    assert settings.auth.enabled


def test_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGKV_SERVER__PORT", "9002")
    monkeypatch.setenv("RAGKV_DATA_DIR", str(tmp_path / "d"))
    settings = Settings.load(write_config(tmp_path / "ragkv.toml"))
    assert settings.server.port == 9002
    assert settings.server.host == "0.0.0.0"  # untouched by env: still from the file
    assert settings.data_dir == tmp_path / "d"


def test_config_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGKV_CONFIG", str(write_config(tmp_path / "ragkv.toml")))
    assert Settings.load().server.port == 9001


def test_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGKV_SERVER__PORT", "9002")
    assert Settings.load(server={"port": 9003}).server.port == 9003


def test_api_keys_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGKV_AUTH__API_KEYS", '{"sk-1": "t1"}')
    monkeypatch.setenv("RAGKV_AUTH__ADMIN_KEY", "sk-admin")
    settings = Settings.load()
    assert settings.auth.api_keys == {"sk-1": "t1"}
    assert settings.auth.admin_key is not None
    assert settings.auth.admin_key.get_secret_value() == "sk-admin"


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        Settings.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport=")
    with pytest.raises(InvalidRequest, match="not valid TOML"):
        Settings.load(bad)


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[server]\nprot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        Settings.load(path)


def test_override_paths_are_made_absolute() -> None:
    settings = Settings.load(data_dir="relative/dir")
    assert settings.data_dir == Path.cwd() / "relative" / "dir"
