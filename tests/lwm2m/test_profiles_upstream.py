"""The profile's ``[upstream]`` table: gateway API (default) or per-device mode, validated with key names."""

from __future__ import annotations

import tomllib

import pytest

from gateway.lwm2m.bridge.profiles import ProfileError, ProfileUpstream, parse_profile


def parse(text: str) -> ProfileUpstream:
    return parse_profile(tomllib.loads(text), source="p.toml", default_name="p").upstream


def problems(text: str) -> list[str]:
    with pytest.raises(ProfileError) as info:
        parse(text)
    return info.value.problems


def test_default_is_the_gateway_api() -> None:
    assert parse("") == ProfileUpstream() and not parse("").per_device


def test_device_mode_with_its_provisioning_settings() -> None:
    text = '[upstream]\nmode = "device"\nprovision_key = "k"\nprovision_secret = "s3cr3t"\n'
    up = parse(text + 'credentials_type = "MQTT_BASIC"')
    assert up.per_device
    assert (up.provision_key, up.provision_secret, up.credentials_type) == ("k", "s3cr3t", "MQTT_BASIC")
    profile = parse_profile(tomllib.loads(text), source="p.toml", default_name="p")
    assert "s3cr3t" not in repr(up) and "s3cr3t" not in repr(profile)


def test_problems_name_the_key_and_never_the_secret() -> None:
    assert problems('[upstream]\nmode = "device"') == [
        'p.toml: upstream.provision_key: required with mode = "device" (the ThingsBoard device profile\'s '
        "provisioning settings)",
        'p.toml: upstream.provision_secret: required with mode = "device" (the ThingsBoard device profile\'s '
        "provisioning settings)",
    ]
    assert problems('[upstream]\nmode = "devices"') == [
        'p.toml: upstream.mode: expected "gateway" or "device", got \'devices\'']
    found = problems('[upstream]\nmode = "device"\nprovision_key = "k"\nprovision_secret = 12345678')
    assert found == ["p.toml: upstream.provision_secret: expected a string, got a secret",
                     'p.toml: upstream.provision_secret: required with mode = "device" (the ThingsBoard device '
                     "profile's provisioning settings)"]
    assert "12345678" not in "".join(found)
    assert problems('[upstream]\nprovision_secret = "s3cr3t"') == [
        'p.toml: upstream: provision_key/provision_secret are only used with mode = "device"']
    unknown = problems('[upstream]\nmod = "device"')[0]
    assert unknown.startswith('p.toml: upstream.mod: unknown key (did you mean "mode"?)')
    assert "credentials_type" in problems(
        '[upstream]\nmode = "device"\nprovision_key = "k"\nprovision_secret = "s"\ncredentials_type = "X509"')[0]
