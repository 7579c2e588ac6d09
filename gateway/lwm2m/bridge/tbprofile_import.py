"""ThingsBoard LwM2M device profile JSON -> the gateway's profile TOML (``edge-gateway profiles import``).

Accepts what ThingsBoard exports, unchanged: the transport configuration alone (``{"type":"LWM2M",
"observeAttr":{...},...}``) or a whole DeviceProfile (``profileData.transportConfiguration``, whose
``name`` becomes the profile name). Facts (shared/fixtures/thingsboard/README.md, section a):

- ``observeAttr`` is parsed strictly, as ThingsBoard's own mappers do: an unknown key inside it, or
  inside an ``attributeLwm2m`` entry, is refused with the key named. Everything else is lenient
  (unknown keys ignored, missing or null fields take ThingsBoard's defaults).
- Paths keep their object version (``/3_1.2/0/9``): the profile then applies to a path only when the
  device registers that object version, as in ThingsBoard.
- ``observeStrategy`` is a name (``"COMPOSITE_ALL"``, case-sensitive) or its number (0, 1, 2).
- ``clientLwM2mSettings.clientOnlyObserveAfterConnect``: ThingsBoard stores it but no longer uses it;
  it always observes, then reads the other attribute/telemetry paths. So 2 (the seed's "read all")
  becomes ``read_and_observe_all`` and anything else ``read_and_observe_profile`` (what ThingsBoard
  does today); the original value is kept as a comment. ``defaultObjectIDVer`` becomes
  ``default_object_version``. The other settings (OTA strategies, power mode) are kept under
  ``[thingsboard.client_settings]`` for people; the bridge does not use them.
- ``bootstrap`` entries describe ThingsBoard's own servers; the gateway is the site's LwM2M server,
  so they are dropped (a comment says how many).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.lwm2m.bridge.profiles import (
    NOTIFY_ATTRIBUTES,
    AfterRegistration,
    ObserveStrategy,
    PathSpec,
    Profile,
    ProfileError,
    default_key,
    load_profiles,
    parse_profile,
    parse_versioned_path,
)
from gateway.lwm2m.model.registry import ModelRegistry
from gateway.lwm2m.path import LwM2mPath, PathError

__all__ = [
    "ImportedProfile",
    "ProfileImportError",
    "add_cli",
    "import_file",
    "import_thingsboard_profile",
    "profile_to_toml",
]

#: ``observeAttr`` keys (TelemetryMappingConfiguration): nothing else is accepted.
OBSERVE_ATTR_KEYS: Final = (
    "keyName",
    "observe",
    "attribute",
    "telemetry",
    "attributeLwm2m",
    "initAttrTelAsObsStrategy",
    "observeStrategy",
)
#: ``attributeLwm2m`` value keys (ObjectAttributes): nothing else is accepted.
OBJECT_ATTRIBUTE_KEYS: Final = (
    "pmin", "pmax", "gt", "lt", "st", "epmin", "epmax", "dim", "ssid", "uri", "ver", "lwm2m",
)
_STRATEGIES: Final = (ObserveStrategy.SINGLE, ObserveStrategy.COMPOSITE_ALL, ObserveStrategy.COMPOSITE_BY_OBJECT)


class ProfileImportError(ValueError):
    """The JSON is not an importable ThingsBoard LwM2M profile; the message names the key."""


@dataclass(frozen=True, slots=True)
class ImportedProfile:
    """The profile and notes for the people reading the TOML (what was dropped and why)."""

    profile: Profile
    notes: tuple[str, ...] = field(default=())


def import_thingsboard_profile(
    data: Any,
    *,
    name: str | None = None,
    default_name: str = "lwm2m",
    source: str = "<json>",
    models: ModelRegistry | None = None,
) -> ImportedProfile:
    """Convert a ThingsBoard LwM2M profile (parsed JSON) into a :class:`Profile`.

    ``name``: the profile name; default: the DeviceProfile's ``name``, else ``default_name`` (the
    transport configuration alone has no name). Raises :class:`ProfileImportError` naming what is wrong.
    """
    models = models or ModelRegistry()
    if not isinstance(data, Mapping):
        raise ProfileImportError(f"{source}: expected a JSON object (a DeviceProfile or its transportConfiguration)")
    notes: list[str] = []
    transport: Any = data
    profile_name = name
    if "profileData" in data:
        transport_type = data.get("transportType")
        if transport_type is not None and transport_type != "LWM2M":
            raise ProfileImportError(f"{source}: transportType: {transport_type!r} is not an LwM2M device profile")
        profile_data = data["profileData"]
        if not isinstance(profile_data, Mapping):
            raise ProfileImportError(f"{source}: profileData: expected an object")
        transport = profile_data.get("transportConfiguration")
        if not isinstance(transport, Mapping):
            raise ProfileImportError(f"{source}: profileData.transportConfiguration: expected an object")
        if profile_name is None and isinstance(data.get("name"), str) and data["name"].strip():
            profile_name = data["name"].strip()
        where = "profileData.transportConfiguration."
    else:
        where = ""
    kind = transport.get("type")
    if kind is not None and kind != "LWM2M":
        raise ProfileImportError(f"{source}: {where}type: {kind!r} is not an LwM2M transport configuration")
    if kind is None and "observeAttr" not in transport:
        raise ProfileImportError(
            f"{source}: neither a DeviceProfile (profileData) nor an LwM2M transport configuration "
            '(type "LWM2M", observeAttr)'
        )
    profile_name = profile_name or default_name

    observe_attr = transport.get("observeAttr")
    if observe_attr is None:
        observe_attr = {}
    if not isinstance(observe_attr, Mapping):
        raise ProfileImportError(f"{source}: {where}observeAttr: expected an object")
    for key in observe_attr:
        if key not in OBSERVE_ATTR_KEYS:
            raise ProfileImportError(
                f"{source}: {where}observeAttr.{key}: unknown key {key!r} (ThingsBoard refuses it too; "
                f"known: {', '.join(OBSERVE_ATTR_KEYS)})"
            )
    oa = f"{where}observeAttr."
    observe = _path_list(observe_attr, "observe", oa, source)
    attribute = _path_list(observe_attr, "attribute", oa, source)
    telemetry = _path_list(observe_attr, "telemetry", oa, source)
    key_names = _key_names(observe_attr.get("keyName"), oa, source)
    notify = _attribute_lwm2m(observe_attr.get("attributeLwm2m"), oa, source, notes)
    strategy = _strategy(observe_attr.get("observeStrategy"), oa, source)
    initial = observe_attr.get("initAttrTelAsObsStrategy")
    if initial is None:
        initial = False
    if not isinstance(initial, bool):
        raise ProfileImportError(f"{source}: {oa}initAttrTelAsObsStrategy: expected true or false, got {initial!r}")

    settings = transport.get("clientLwM2mSettings") or {}
    if not isinstance(settings, Mapping):
        raise ProfileImportError(f"{source}: {where}clientLwM2mSettings: expected an object")
    default_version = settings.get("defaultObjectIDVer") or "1.0"
    if not isinstance(default_version, str) or default_version not in ("1.0", "1.1", "1.2"):
        raise ProfileImportError(
            f'{source}: {where}clientLwM2mSettings.defaultObjectIDVer: expected "1.0", "1.1" or "1.2", '
            f"got {default_version!r}"
        )
    after = AfterRegistration.READ_AND_OBSERVE_PROFILE
    legacy = settings.get("clientOnlyObserveAfterConnect")
    if legacy == 2:
        after = AfterRegistration.READ_AND_OBSERVE_ALL
    if legacy is not None:
        notes.append(
            f"clientOnlyObserveAfterConnect = {legacy!r}: ThingsBoard no longer uses it (it observes, then reads "
            f"the other attribute/telemetry paths); imported as after_registration = \"{after.value}\""
        )
    kept = {k: v for k, v in settings.items() if k not in ("defaultObjectIDVer",) and _toml_scalar(v)}

    bootstrap = transport.get("bootstrap")
    if isinstance(bootstrap, list) and bootstrap:
        notes.append(
            f"{len(bootstrap)} bootstrap/server entr{'y' if len(bootstrap) == 1 else 'ies'} of ThingsBoard's own "
            "servers dropped: the gateway is the site's LwM2M server"
        )

    # one PathSpec per distinct (path, version): the arrays, keyName and attributeLwm2m name the same paths
    texts: dict[tuple[LwM2mPath, str | None], str] = {}
    parsed: dict[str, tuple[LwM2mPath, str | None]] = {}

    def ident(text: str, what: str) -> tuple[LwM2mPath, str | None]:
        if text not in parsed:
            try:
                parsed[text] = parse_versioned_path(text)
            except PathError as exc:
                raise ProfileImportError(f"{source}: {oa}{what}: {exc}") from None
            texts.setdefault(parsed[text], text)
        return parsed[text]

    flags: dict[tuple[LwM2mPath, str | None], dict[str, Any]] = {}
    for what, items in (("observe", observe), ("attribute", attribute), ("telemetry", telemetry)):
        for text in items:
            flags.setdefault(ident(text, what), {})[what] = True
    for text, key in key_names.items():
        flags.setdefault(ident(text, f'keyName."{text}"'), {})["key"] = key
    for text, attrs in notify.items():
        flags.setdefault(ident(text, f'attributeLwm2m."{text}"'), {})["notify"] = attrs

    specs: list[PathSpec] = []
    for (path, version), f in sorted(flags.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        text = texts[(path, version)]
        key = f.get("key")
        tele, attr = bool(f.get("telemetry")), bool(f.get("attribute"))
        if path.ids[0] == 0:
            raise ProfileImportError(f"{source}: {oa}: {text}: the Security object (0) is never exposed to a server")
        if path.depth < 3 and (key is not None or tele or attr):
            raise ProfileImportError(
                f"{source}: {oa}: {text}: telemetry, attribute and keyName belong to resources, not to {path}"
            )
        if key is None and (tele or attr):
            key = default_key(path, version or default_version, models)
            if key is None:
                raise ProfileImportError(
                    f'{source}: {oa}keyName: no key name for {text} and the resource is not in the object models'
                )
            notes.append(f"{text}: no keyName, using the default key {key!r}")
        if f.get("observe") and not (tele or attr) and path.depth >= 3:
            notes.append(f"{text} is observed but neither attribute nor telemetry: its values are not sent upstream")
        specs.append(
            PathSpec(text, path, version, key, tele, attr, bool(f.get("observe")), dict(f.get("notify", {})))
        )

    profile = Profile(
        name=profile_name,
        paths=tuple(specs),
        observe_strategy=strategy,
        after_registration=after,
        initial_read_as_strategy=initial,
        default_object_version=default_version,
        object_version_must_match=True,
        source=source,
        thingsboard={"client_settings": kept} if kept else {},
    )
    return ImportedProfile(profile, tuple(notes))


def _path_list(observe_attr: Mapping[str, Any], key: str, where: str, source: str) -> list[str]:
    value = observe_attr.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileImportError(f"{source}: {where}{key}: expected an array of path strings, got {value!r}")
    return list(dict.fromkeys(value))  # a Java Set: duplicates collapse


def _key_names(value: Any, where: str, source: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ProfileImportError(f"{source}: {where}keyName: expected an object of path -> key name")
    for path, key in value.items():
        if not isinstance(key, str) or not key.strip():
            raise ProfileImportError(f'{source}: {where}keyName."{path}": expected a key name, got {key!r}')
    return dict(value)


def _attribute_lwm2m(
    value: Any, where: str, source: str, notes: list[str]
) -> dict[str, dict[str, int | float]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ProfileImportError(f"{source}: {where}attributeLwm2m: expected an object of path -> attributes")
    result: dict[str, dict[str, int | float]] = {}
    for path, attrs in value.items():
        here = f'{where}attributeLwm2m."{path}"'
        if attrs is None:
            continue
        if not isinstance(attrs, Mapping):
            raise ProfileImportError(f"{source}: {here}: expected an object (pmin, pmax, gt, lt, st)")
        chosen: dict[str, int | float] = {}
        for name, number in attrs.items():
            if name not in OBJECT_ATTRIBUTE_KEYS:
                raise ProfileImportError(
                    f"{source}: {here}.{name}: unknown key {name!r} (ThingsBoard refuses it too; "
                    f"known: {', '.join(OBJECT_ATTRIBUTE_KEYS)})"
                )
            if number is None:
                continue
            if name not in NOTIFY_ATTRIBUTES:
                notes.append(f"{path}: attribute {name} = {number!r} dropped (not a notification attribute)")
                continue
            if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                raise ProfileImportError(f"{source}: {here}.{name}: expected a number, got {number!r}")
            if name in ("pmin", "pmax", "epmin", "epmax"):
                if (isinstance(number, float) and not number.is_integer()) or number < 0:
                    raise ProfileImportError(f"{source}: {here}.{name}: expected whole seconds >= 0, got {number!r}")
                number = int(number)
            chosen[name] = number
        if chosen:
            result[path] = chosen
    return result


def _strategy(value: Any, where: str, source: str) -> ObserveStrategy:
    if value is None:
        return ObserveStrategy.SINGLE
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(_STRATEGIES):
            return _STRATEGIES[value]
    elif isinstance(value, str):
        for strategy in _STRATEGIES:
            if strategy.value == value:
                return strategy
    raise ProfileImportError(
        f"{source}: {where}observeStrategy: expected SINGLE, COMPOSITE_ALL, COMPOSITE_BY_OBJECT or 0, 1, 2 "
        f"(names are case-sensitive), got {value!r}"
    )


def _toml_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)


# -- TOML -------------------------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def profile_to_toml(profile: Profile, notes: Sequence[str] = (), *, origin: str | None = None) -> str:
    """The profile as a TOML file that :func:`~gateway.lwm2m.bridge.profiles.load_profile_file` reads back."""
    out: list[str] = [f"# LwM2M device profile {profile.name!r} (the ThingsBoard device type of its endpoints)."]
    if origin:
        out.append(f"# Imported from {origin}.")
    for note in notes:
        out.append(f"# Note: {note}")
    out += [
        "",
        f"name = {_toml(profile.name)}",
        f"observe_strategy = {_toml(profile.observe_strategy.value)}",
        "# observe_only | read_and_observe_all | read_and_observe_profile",
        f"after_registration = {_toml(profile.after_registration.value)}",
        f"initial_read_as_strategy = {_toml(profile.initial_read_as_strategy)}",
        f"default_object_version = {_toml(profile.default_object_version)}",
        f"object_version_must_match = {_toml(profile.object_version_must_match)}",
        "# off | telemetry (key \"transportLog\") | log",
        f"transport_log = {_toml(profile.transport_log)}",
        "",
        "[match]",
        "# Which endpoints use this profile: name patterns (\"temp-*\"), required object ids, or the default.",
        f"endpoints = {_toml(list(profile.match_endpoints))}",
        f"objects = {_toml(list(profile.match_objects))}",
        f"priority = {profile.priority}",
        f"default = {_toml(profile.default)}",
    ]
    for spec in profile.paths:
        out += ["", f"[paths.{_toml(spec.text)}]"]
        if spec.key is not None:
            out.append(f"key = {_toml(spec.key)}")
        if spec.telemetry:
            out.append("telemetry = true")
        if spec.attribute:
            out.append("attribute = true")
        if spec.observe:
            out.append("observe = true")
        for name in NOTIFY_ATTRIBUTES:
            if name in spec.notify:
                out.append(f"{name} = {_toml(spec.notify[name])}")
    client = profile.thingsboard.get("client_settings")
    if isinstance(client, Mapping) and client:
        out += ["", "# ThingsBoard's clientLwM2mSettings, kept for reference (not used by the gateway).",
                "[thingsboard.client_settings]"]
        out += [f"{_bare(k)} = {_toml(v)}" for k, v in client.items()]
    return "\n".join(out) + "\n"


def _bare(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return key
    return json.dumps(key)


def import_file(
    path: Path, *, name: str | None = None, models: ModelRegistry | None = None
) -> tuple[Profile, str]:
    """Read a ThingsBoard profile JSON file; the profile and its TOML text (checked by loading it back)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileImportError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileImportError(f"{path}: not JSON: {exc}") from None
    imported = import_thingsboard_profile(data, name=name, default_name=path.stem, source=str(path), models=models)
    toml_text = profile_to_toml(imported.profile, imported.notes, origin=path.name)
    # the TOML must say exactly what was imported
    again = parse_profile(tomllib.loads(toml_text), source=str(path), default_name=imported.profile.name, models=models)
    assert again == imported.profile, "profile TOML does not read back to the imported profile"
    return imported.profile, toml_text


# -- command line -----------------------------------------------------------------------------------------


def cmd_profiles_import(args: argparse.Namespace) -> int:
    """``edge-gateway profiles import FILE [--name N] [-o OUT | --into DIR] [--force]``."""
    try:
        profile, text = import_file(Path(args.file), name=args.name)
    except ProfileImportError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return 1
    target: Path | None = None
    if args.output:
        target = Path(args.output)
    elif args.into:
        target = Path(args.into) / f"{_file_stem(profile.name)}.toml"
    if target is None:
        sys.stdout.write(text)
        return 0
    if target.exists() and not args.force:
        print(f"edge-gateway: {target} exists (use --force to replace it)", file=sys.stderr)
        return 1
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"edge-gateway: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"profile {profile.name!r} written to {target} ({len(profile.paths)} paths)", file=sys.stderr)
    return 0


def cmd_profiles_check(args: argparse.Namespace) -> int:
    """``edge-gateway profiles check DIR``: load every profile, print them and the choice order."""
    directory = Path(args.directory) if args.directory else _configured_profiles_dir(args)
    if directory is None:
        return 1
    if not directory.is_dir():
        print(f"edge-gateway: {directory}: no such directory (only the built-in default profile applies)",
              file=sys.stderr)
        return 1
    try:
        profiles = load_profiles(directory)
    except ProfileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    for profile in profiles:
        rule = []
        if profile.match_endpoints:
            rule.append("endpoints " + ", ".join(profile.match_endpoints))
        if profile.match_objects:
            rule.append("objects " + ", ".join(map(str, profile.match_objects)))
        if profile.default:
            rule.append("default")
        print(f"{profile.name}: {len(profile.paths)} paths, {profile.observe_strategy.value}, "
              f"{profile.after_registration.value}; {'; '.join(rule) or 'no match rule'} ({profile.source})")
    print(f"default profile: {profiles.default.name}")
    return 0


def _configured_profiles_dir(args: argparse.Namespace) -> Path | None:
    """``[lwm2m] profiles_dir`` of the configuration file (``-c``, $EDGE_GATEWAY_CONFIG or the default)."""
    from gateway import config

    env = os.environ.get("EDGE_GATEWAY_CONFIG")
    path = Path(args.config) if args.config else Path(env) if env else config.DEFAULT_PATH
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        print(f"edge-gateway: invalid configuration: {exc.one_line()}", file=sys.stderr)
        return None
    return cfg.config_path(cfg.lwm2m.profiles_dir)


def _file_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-")
    return stem or "profile"


def add_cli(subparsers: Any) -> None:
    """Add ``profiles import`` and ``profiles check`` to the ``edge-gateway`` argument parser."""
    profiles = subparsers.add_parser("profiles", help="LwM2M device profiles: import from ThingsBoard, check")
    sub = profiles.add_subparsers(dest="profiles_command", required=True)
    sp = sub.add_parser("import", help="convert a ThingsBoard LwM2M device profile JSON into a profile TOML")
    sp.add_argument("file", help="the JSON exported from ThingsBoard (DeviceProfile or transportConfiguration)")
    sp.add_argument("--name", help="profile name (default: the DeviceProfile's name)")
    where = sp.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", help="write the TOML to this file (default: standard output)")
    where.add_argument("--into", help="write <name>.toml into this profiles directory")
    sp.add_argument("--force", action="store_true", help="replace an existing file")
    sp.set_defaults(fn=cmd_profiles_import)
    sp = sub.add_parser("check", help="validate a profiles directory and show the profiles")
    sp.add_argument("directory", nargs="?", help="default: [lwm2m] profiles_dir of the configuration")
    sp.add_argument("-c", "--config", help="configuration file (default /etc/edge-gateway/gateway.toml, "
                    "or $EDGE_GATEWAY_CONFIG)")
    sp.set_defaults(fn=cmd_profiles_check)
