"""Configuration: every error with its key path, drop-ins, environment overrides, the shipped file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_configuration_is_valid_and_documents_every_key() -> None:
    cfg = config.load(REPO / "config" / "gateway.toml", env={})
    assert cfg.thingsboard.credentials == "provision"
    text = (REPO / "config" / "gateway.toml").read_text()
    for line in config.explain():
        key = line.split(" = ")[0].split(".")[-1]
        assert f"\n{key} = " in text, f"config/gateway.toml does not document {line.split(' = ')[0]}"
    # every key in the file is preceded by a comment
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#") or " = " in lines[i - 1], f"uncommented key: {line}"


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    f = write(tmp_path / "g.toml", """
[thingsboard]
port = 70000
credentials = "magic"
keepalive_s = "long"
[outbox]
max_bytes = "lots"
max_byts = 5
[gateway]
log_level = "chatty"
[nonsense]
""")
    with pytest.raises(config.ConfigError) as exc:
        config.load(f, env={})
    problems = exc.value.problems
    joined = "\n".join(problems)
    assert len(problems) == 7, joined
    assert "thingsboard.port: expected an integer from 1 to 65535, got 70000" in joined
    assert 'thingsboard.credentials: expected one of "access_token", "mqtt_basic", "x509", "provision"' in joined
    assert "thingsboard.keepalive_s: expected an integer" in joined
    assert 'outbox.max_bytes: expected a size such as "256MiB"' in joined
    assert 'outbox.max_byts: unknown key (did you mean "max_bytes"?)' in joined
    assert "gateway.log_level" in joined
    assert "nonsense: unknown key" in joined
    assert all(p.startswith(str(f)) for p in problems)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(write(tmp_path / "bad.toml", "[thingsboard\nport = 1"), env={})
    with pytest.raises(config.ConfigError, match="file not found"):
        config.load(tmp_path / "missing.toml", env={})


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    f = write(tmp_path / "g.toml", '[thingsboard]\ntoken = 12345\npassword = ["hunter2"]\n')
    with pytest.raises(config.ConfigError) as exc:
        config.load(f, env={})
    assert "12345" not in str(exc.value) and "hunter2" not in str(exc.value)
    assert "<secret>" in str(exc.value)


def test_dropins_override_in_name_order_and_env_wins(tmp_path: Path) -> None:
    main = write(tmp_path / "gateway.toml", '[thingsboard]\nhost = "a"\nport = 1\n[outbox]\nmax_bytes = "2MiB"\n')
    (tmp_path / "gateway.d").mkdir()
    write(tmp_path / "gateway.d" / "10-site.toml", '[thingsboard]\nhost = "b"\nport = 2\n')
    write(tmp_path / "gateway.d" / "20-more.toml", "[thingsboard]\nport = 3\n")
    env = {"EDGE_GATEWAY__THINGSBOARD__PORT": "4", "EDGE_GATEWAY__THINGSBOARD__TOKEN": "s3cret",
           "EDGE_GATEWAY__THINGSBOARD__CREDENTIALS": "access_token", "UNRELATED": "x"}
    cfg = config.load(main, env=env)
    assert (cfg.thingsboard.host, cfg.thingsboard.port, cfg.thingsboard.token) == ("b", 4, "s3cret")
    assert cfg.outbox.max_bytes == 2 * 1024 * 1024
    assert cfg.sources[-1] == "environment" and len(cfg.sources) == 4
    assert config.redacted(cfg)["thingsboard"]["token"] == "<secret>"


def test_consistency_rules(tmp_path: Path) -> None:
    f = write(tmp_path / "g.toml", '[thingsboard]\ncredentials = "access_token"\n')
    with pytest.raises(config.ConfigError, match=r"thingsboard\.token: required"):
        config.load(f, env={})


@pytest.mark.parametrize(("text", "size"), [("512KiB", 512 * 1024), ("1.5GB", 1_500_000_000), ("42", 42)])
def test_sizes(text: str, size: int) -> None:
    assert config.parse_size(text) == size


def test_check_config_cli(tmp_path: Path) -> None:
    bad = write(tmp_path / "g.toml", "[thingsboard]\nport = 0\n[outbox]\nmax_byts = 1\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "thingsboard.port" in r.stderr and "outbox.max_byts" in r.stderr and "2 problem(s)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(REPO / "config" / "gateway.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and ": ok" in r.stdout
