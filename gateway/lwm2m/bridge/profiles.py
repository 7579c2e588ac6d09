"""LwM2M device profiles: what the bridge does with an endpoint, in the words of ThingsBoard's LwM2M profile.

A profile says which resources are observed, which become telemetry and which client attributes (and
under which key names), which notification attributes (pmin, pmax, gt, lt, st...) are written after
registration, the observe strategy, and what happens after registration. Its name is the ThingsBoard
device type (``v1/gateway/connect`` ``type``) of every endpoint that uses it.

One profile per TOML file in the profiles directory (``edge-gateway profiles import`` writes one from a
ThingsBoard profile JSON)::

    name = "temperature-sensor"              # the ThingsBoard device type; default: the file name
    observe_strategy = "SINGLE"              # SINGLE | COMPOSITE_ALL | COMPOSITE_BY_OBJECT
    after_registration = "read_and_observe_profile"
    #   "observe_only"              only Observe the observed paths
    #   "read_and_observe_all"      Observe, and Read every object the device registered
    #   "read_and_observe_profile"  Observe, and Read the attribute/telemetry paths not observed
    initial_read_as_strategy = false         # ThingsBoard's initAttrTelAsObsStrategy
    default_object_version = "1.0"           # an object registered without ver= has this version
    object_version_must_match = true         # /3_1.2/0/9 applies only to a device registering </3>;ver=1.2
    transport_log = "off"                    # off | telemetry (key "transportLog") | log (the service's log)

    [match]                                  # which endpoints use this profile
    endpoints = ["temp-*", "lab-??"]         # shell-style patterns on the endpoint name
    objects = [3303]                         # every one of these objects is registered
    priority = 0                             # higher is tried first
    default = false                          # the profile for endpoints nothing else matches

    [upstream]                               # how its endpoints reach ThingsBoard
    mode = "gateway"                         # "gateway": child devices over the gateway's connection
                                             # "device": each endpoint its own device-API session,
                                             # provisioned on first sight with the key/secret below
    provision_key = "..."                    # "device" only: the ThingsBoard device profile's
    provision_secret = "..."                 #   provisioning key and secret (never logged)
    credentials_type = ""                    # "" (server-generated token), ACCESS_TOKEN, MQTT_BASIC,
                                             #   X509_CERTIFICATE

    [paths."/3303_1.1/0/5700"]               # versioned (ThingsBoard) or plain (/3303/0/5700) path
    key = "temperature"                      # default: camelCase of the resource name ("sensorValue")
    telemetry = true
    attribute = false
    observe = true
    pmin = 10                                # notification attributes, written after registration
    pmax = 300
    st = 0.5

    [paths."/3_1.2/0"]                       # attributes may also sit on an object or instance
    pmax = 600

Choosing a profile for an endpoint (:meth:`ProfileSet.choose`): profiles with a ``[match]`` rule are
tried by priority (higher first), endpoint-name rules before object-only rules, then by name; the first
whose rule holds wins (a rule with both ``endpoints`` and ``objects`` needs both). Nothing matching: the
profile with ``default = true``, else the built-in empty profile called ``default`` (ThingsBoard's default
device profile name).

Every problem is reported with the file and key, all of a file at once, like the main configuration.
"""

from __future__ import annotations

import difflib
import enum
import fnmatch
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from gateway.lwm2m.model.registry import ModelRegistry
from gateway.lwm2m.path import LwM2mPath, PathError

__all__ = [
    "DEFAULT_PROFILE_NAME",
    "NOTIFY_ATTRIBUTES",
    "AfterRegistration",
    "ObserveStrategy",
    "PathSpec",
    "Profile",
    "ProfileError",
    "ProfileSet",
    "ProfileUpstream",
    "camel_case_key",
    "default_key",
    "load_profile_file",
    "load_profiles",
    "parse_profile",
]

DEFAULT_PROFILE_NAME: Final = "default"

#: Notification attributes a profile may write (ThingsBoard's UI writes pmin, pmax, gt, lt, st).
NOTIFY_ATTRIBUTES: Final = ("pmin", "pmax", "gt", "lt", "st", "epmin", "epmax")
_INTEGER_ATTRIBUTES: Final = frozenset({"pmin", "pmax", "epmin", "epmax"})

TransportLog = Literal["off", "telemetry", "log"]


class ProfileError(Exception):
    """One or more problems in profile files; ``problems`` lists them, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ObserveStrategy(enum.Enum):
    """How the observed paths are observed (ThingsBoard's ``TelemetryObserveStrategy``)."""

    SINGLE = "SINGLE"  # one Observe per path
    COMPOSITE_ALL = "COMPOSITE_ALL"  # one Observe-Composite with every path
    COMPOSITE_BY_OBJECT = "COMPOSITE_BY_OBJECT"  # one Observe-Composite per object id


class AfterRegistration(enum.Enum):
    """The three after-registration choices of ThingsBoard's LwM2M profile (the seed's "config 1..3")."""

    OBSERVE_ONLY = "observe_only"
    READ_AND_OBSERVE_ALL = "read_and_observe_all"
    READ_AND_OBSERVE_PROFILE = "read_and_observe_profile"


@dataclass(frozen=True, slots=True)
class PathSpec:
    """What a profile says about one path.

    ``text`` is the path as written (``/3_1.2/0/9``), ``path`` the path without the version and
    ``version`` the object version it requires (None: any). ``key`` is set for resource and resource
    instance paths (given, or the default from the model); ``notify`` holds the notification attributes
    to write (pmin...)."""

    text: str
    path: LwM2mPath
    version: str | None = None
    key: str | None = None
    telemetry: bool = False
    attribute: bool = False
    observe: bool = False
    notify: Mapping[str, int | float] = field(default_factory=dict)

    @property
    def object_id(self) -> int:
        return self.path.ids[0]


UPSTREAM_MODES: Final = ("gateway", "device")
PROVISION_CREDENTIALS_TYPES: Final = ("", "ACCESS_TOKEN", "MQTT_BASIC", "X509_CERTIFICATE")


@dataclass(frozen=True, slots=True)
class ProfileUpstream:
    """The profile's ``[upstream]`` table: gateway API (default) or one device-API session per endpoint."""

    mode: Literal["gateway", "device"] = "gateway"
    provision_key: str = field(default="", repr=False)
    provision_secret: str = field(default="", repr=False)
    credentials_type: str = ""

    @property
    def per_device(self) -> bool:
        return self.mode == "device"


@dataclass(frozen=True, slots=True)
class Profile:
    """One LwM2M device profile (see the module docstring for the meaning of each field)."""

    name: str
    paths: tuple[PathSpec, ...] = ()
    observe_strategy: ObserveStrategy = ObserveStrategy.SINGLE
    after_registration: AfterRegistration = AfterRegistration.READ_AND_OBSERVE_PROFILE
    initial_read_as_strategy: bool = False
    default_object_version: str = "1.0"
    object_version_must_match: bool = True
    transport_log: TransportLog = "off"
    match_endpoints: tuple[str, ...] = ()
    match_objects: tuple[int, ...] = ()
    priority: int = 0
    default: bool = False
    source: str = "built-in"
    upstream: ProfileUpstream = ProfileUpstream()
    #: ThingsBoard settings the bridge does not use (OTA strategies, power mode...), kept for people.
    thingsboard: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_rule(self) -> bool:
        return bool(self.match_endpoints or self.match_objects)

    def object_ids(self) -> tuple[int, ...]:
        """The object ids the profile's paths name, ascending."""
        return tuple(sorted({spec.object_id for spec in self.paths}))

    def matches(self, endpoint: str, objects: Iterable[int]) -> bool:
        """Whether this profile's ``[match]`` rule holds for ``endpoint`` registering ``objects``."""
        if not self.has_rule:
            return False
        if self.match_endpoints and not any(_pattern(p).fullmatch(endpoint) for p in self.match_endpoints):
            return False
        if self.match_objects:
            registered = objects if isinstance(objects, Mapping | set | frozenset) else set(objects)
            return all(oid in registered for oid in self.match_objects)
        return True


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(glob: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(glob)
    if compiled is None:
        compiled = _PATTERNS[glob] = re.compile(fnmatch.translate(glob))
    return compiled


class ProfileSet:
    """The profiles in force and the endpoint -> profile choice."""

    def __init__(self, profiles: Iterable[Profile] = ()) -> None:
        self.profiles: dict[str, Profile] = {}
        problems: list[str] = []
        for profile in profiles:
            other = self.profiles.get(profile.name)
            if other is not None:
                problems.append(f"{profile.source}: name: profile {profile.name!r} is also defined in {other.source}")
                continue
            self.profiles[profile.name] = profile
        defaults = [p for p in self.profiles.values() if p.default]
        if len(defaults) > 1:
            names = ", ".join(f"{p.name!r} ({p.source})" for p in defaults)
            problems.append(f"match.default: more than one default profile: {names}")
        if problems:
            raise ProfileError(problems)
        builtin = self.profiles.get(DEFAULT_PROFILE_NAME, Profile(DEFAULT_PROFILE_NAME))
        self.default = defaults[0] if defaults else builtin
        ruled = [p for p in self.profiles.values() if p.has_rule]
        # priority first, then endpoint-name rules before object-only rules, then the name
        self._ordered = sorted(ruled, key=lambda p: (-p.priority, not p.match_endpoints, p.name))

    def choose(self, endpoint: str, objects: Iterable[int]) -> Profile:
        """The profile for ``endpoint`` that registered ``objects`` (see the module docstring)."""
        registered = objects if isinstance(objects, Mapping | set | frozenset) else frozenset(objects)
        for profile in self._ordered:
            if profile.matches(endpoint, registered):
                return profile
        return self.default

    def __len__(self) -> int:
        return len(self.profiles)

    def __iter__(self) -> Any:
        return iter(self.profiles.values())

    def get(self, name: str) -> Profile | None:
        return self.profiles.get(name)


# -- key names -----------------------------------------------------------------------------------------

_WORD_SPLIT: Final = re.compile(r"[^A-Za-z0-9]+")


def camel_case_key(name: str) -> str:
    """ThingsBoard's default key for a resource name: ``"Battery Level"`` -> ``"batteryLevel"``,
    ``"PkgName"`` -> ``"pkgname"`` (first word lower case, the others capitalised)."""
    words = [w for w in _WORD_SPLIT.split(name) if w]
    if not words:
        return ""
    return words[0].lower() + "".join(w[:1].upper() + w[1:].lower() for w in words[1:])


def default_key(path: LwM2mPath, version: str | None, models: ModelRegistry) -> str | None:
    """The default key of a resource (instance) path, from the resource's name in the model
    (a resource instance gets its instance id appended); None if the resource is unknown."""
    if path.depth < 3:
        return None
    model = models.get(path.ids[0], version)
    resource = None if model is None else model.resources.get(path.ids[2])
    if resource is None:
        return None
    key = camel_case_key(resource.name)
    if not key:
        return None
    return key if path.depth == 3 else f"{key}{path.ids[3]}"


# -- loading -------------------------------------------------------------------------------------------

_TOP_KEYS: Final = (
    "name",
    "observe_strategy",
    "after_registration",
    "initial_read_as_strategy",
    "default_object_version",
    "object_version_must_match",
    "transport_log",
    "match",
    "paths",
    "thingsboard",
    "upstream",
)
_MATCH_KEYS: Final = ("endpoints", "objects", "priority", "default")
_UPSTREAM_KEYS: Final = ("mode", "provision_key", "provision_secret", "credentials_type")
_PATH_KEYS: Final = ("key", "telemetry", "attribute", "observe", *NOTIFY_ATTRIBUTES)
_VERSION: Final = re.compile(r"^\d{1,4}\.\d{1,4}$")
_KEY: Final = re.compile(r"^[^\s\x00-\x1f]{1,255}$")


def load_profiles(directory: Path, models: ModelRegistry | None = None) -> ProfileSet:
    """Every ``*.toml`` profile directly in ``directory`` (name order). A missing directory gives
    the built-in default profile only. Raises :class:`ProfileError` listing every problem."""
    models = models or ModelRegistry()
    if not directory.exists():
        return ProfileSet()
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".toml" and p.is_file())
    except OSError as exc:
        raise ProfileError([f"{directory}: cannot list the profiles directory: {exc.strerror or exc}"]) from None
    profiles: list[Profile] = []
    problems: list[str] = []
    for file in files:
        try:
            profiles.append(load_profile_file(file, models))
        except ProfileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ProfileError(problems)
    return ProfileSet(profiles)


def load_profile_file(file: Path, models: ModelRegistry | None = None) -> Profile:
    """One profile file; raises :class:`ProfileError` naming the file and key of every problem."""
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ProfileError([f"{file}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError([f"{file}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ProfileError([f"{file}: cannot read: {exc.strerror or exc}"]) from None
    return parse_profile(data, source=str(file), default_name=file.stem, models=models)


def parse_profile(
    data: Mapping[str, Any], *, source: str, default_name: str, models: ModelRegistry | None = None
) -> Profile:
    """A profile from its TOML tables (already parsed); ``source`` names it in errors."""
    models = models or ModelRegistry()
    problems: list[str] = []
    _unknown(data, _TOP_KEYS, "", source, problems)

    name = _string(data, "name", default_name, source, problems)
    if not name or not name.strip():
        problems.append(f"{source}: name: must not be empty")
    strategy = _enum(data, "observe_strategy", ObserveStrategy, ObserveStrategy.SINGLE, source, problems)
    after = _enum(
        data, "after_registration", AfterRegistration, AfterRegistration.READ_AND_OBSERVE_PROFILE, source, problems
    )
    initial = _bool(data, "initial_read_as_strategy", False, "", source, problems)
    default_version = _string(data, "default_object_version", "1.0", source, problems)
    if not _VERSION.match(default_version):
        problems.append(f'{source}: default_object_version: expected a version such as "1.0", got {default_version!r}')
    must_match = _bool(data, "object_version_must_match", True, "", source, problems)
    log_mode = _string(data, "transport_log", "off", source, problems)
    if log_mode not in ("off", "telemetry", "log"):
        problems.append(f'{source}: transport_log: expected one of "off", "telemetry", "log", got {log_mode!r}')
        log_mode = "off"

    match = data.get("match", {})
    endpoints: tuple[str, ...] = ()
    objects: tuple[int, ...] = ()
    priority = 0
    is_default = False
    if not isinstance(match, Mapping):
        problems.append(f"{source}: match: expected a table")
    else:
        _unknown(match, _MATCH_KEYS, "match.", source, problems)
        endpoints = tuple(_list(match, "endpoints", str, "match.", source, problems, "endpoint name patterns"))
        objects = tuple(_list(match, "objects", int, "match.", source, problems, "object ids"))
        for oid in objects:
            if not 0 <= oid <= 65535:
                problems.append(f"{source}: match.objects: object id {oid} out of range 0..65535")
        priority = _int(match, "priority", 0, "match.", source, problems)
        is_default = _bool(match, "default", False, "match.", source, problems)

    specs: list[PathSpec] = []
    paths = data.get("paths", {})
    if not isinstance(paths, Mapping):
        problems.append(f"{source}: paths: expected a table of paths")
        paths = {}
    seen_paths: dict[tuple[LwM2mPath, str | None], str] = {}
    seen_keys: dict[str, str] = {}
    for text, table in paths.items():
        spec = _path_spec(text, table, source, models, default_version, problems)
        if spec is None:
            continue
        ident = (spec.path, spec.version)
        if ident in seen_paths:
            problems.append(f'{source}: paths."{text}": the same path as paths."{seen_paths[ident]}"')
            continue
        seen_paths[ident] = text
        if spec.key is not None:
            if spec.key in seen_keys:
                problems.append(
                    f'{source}: paths."{text}".key: key {spec.key!r} is also the key of paths."{seen_keys[spec.key]}"'
                )
            seen_keys[spec.key] = text
        specs.append(spec)

    upstream = _upstream(data.get("upstream", {}), source, problems)

    thingsboard = data.get("thingsboard", {})
    if not isinstance(thingsboard, Mapping):
        problems.append(f"{source}: thingsboard: expected a table")
        thingsboard = {}

    if problems:
        raise ProfileError(problems)
    return Profile(
        name=name,
        paths=tuple(specs),
        observe_strategy=strategy,
        after_registration=after,
        initial_read_as_strategy=initial,
        default_object_version=default_version,
        object_version_must_match=must_match,
        transport_log=log_mode,  # type: ignore[arg-type]
        match_endpoints=endpoints,
        match_objects=objects,
        priority=priority,
        default=is_default,
        source=source,
        upstream=upstream,
        thingsboard=dict(thingsboard),
    )


def _upstream(table: object, source: str, problems: list[str]) -> ProfileUpstream:
    """The ``[upstream]`` table; problems name the key (never the secret's value)."""
    if not isinstance(table, Mapping):
        problems.append(f"{source}: upstream: expected a table (mode, provision_key, provision_secret...)")
        return ProfileUpstream()
    _unknown(table, _UPSTREAM_KEYS, "upstream.", source, problems)
    mode = table.get("mode", "gateway")
    if mode not in UPSTREAM_MODES:
        problems.append(f'{source}: upstream.mode: expected "gateway" or "device", got {mode!r}')
        mode = "gateway"
    texts: dict[str, str] = {}
    for key in ("provision_key", "provision_secret", "credentials_type"):
        value = table.get(key, "")
        if not isinstance(value, str):
            shown = "a secret" if key == "provision_secret" else repr(value)
            problems.append(f"{source}: upstream.{key}: expected a string, got {shown}")
            value = ""
        texts[key] = value
    if texts["credentials_type"] not in PROVISION_CREDENTIALS_TYPES:
        problems.append(
            f"{source}: upstream.credentials_type: expected one of ACCESS_TOKEN, MQTT_BASIC, X509_CERTIFICATE "
            f'(or "" for a server-generated token), got {texts["credentials_type"]!r}'
        )
    if mode == "device":
        for key in ("provision_key", "provision_secret"):
            if not texts[key]:
                problems.append(
                    f'{source}: upstream.{key}: required with mode = "device" (the ThingsBoard device '
                    "profile's provisioning settings)"
                )
    elif texts["provision_key"] or texts["provision_secret"]:
        problems.append(f'{source}: upstream: provision_key/provision_secret are only used with mode = "device"')
    return ProfileUpstream(mode, texts["provision_key"], texts["provision_secret"], texts["credentials_type"])


def parse_versioned_path(text: str) -> tuple[LwM2mPath, str | None]:
    """``/3_1.2/0/9`` -> (``/3/0/9``, ``"1.2"``); ``/3/0/9`` -> (``/3/0/9``, None). PathError if invalid."""
    path, version = LwM2mPath.parse_versioned(text)
    if path.is_root:
        raise PathError(f"invalid LwM2M path {text!r}: the root path names no object")
    return path, version


def _path_spec(
    text: object,
    table: object,
    source: str,
    models: ModelRegistry,
    default_version: str,
    problems: list[str],
) -> PathSpec | None:
    where = f'paths."{text}"'
    if not isinstance(text, str):
        problems.append(f"{source}: {where}: a path must be text")
        return None
    try:
        path, version = parse_versioned_path(text)
    except PathError as exc:
        problems.append(f"{source}: {where}: {exc}")
        return None
    if path.ids[0] == 0:
        problems.append(f"{source}: {where}: the Security object (0) is never exposed to a server")
        return None
    if not isinstance(table, Mapping):
        problems.append(f"{source}: {where}: expected a table (key, telemetry, attribute, observe, pmin...)")
        return None
    before = len(problems)
    _unknown(table, _PATH_KEYS, where + ".", source, problems)
    telemetry = _bool(table, "telemetry", False, where + ".", source, problems)
    attribute = _bool(table, "attribute", False, where + ".", source, problems)
    observe = _bool(table, "observe", False, where + ".", source, problems)
    key: str | None = None
    if "key" in table:
        raw = table["key"]
        if not isinstance(raw, str) or not _KEY.match(raw):
            problems.append(f"{source}: {where}.key: expected a key name without spaces, got {raw!r}")
        else:
            key = raw
    notify: dict[str, int | float] = {}
    for attr in NOTIFY_ATTRIBUTES:
        if attr not in table:
            continue
        value = table[attr]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"{source}: {where}.{attr}: expected a number, got {value!r}")
            continue
        if attr in _INTEGER_ATTRIBUTES:
            if (isinstance(value, float) and not value.is_integer()) or value < 0:
                problems.append(f"{source}: {where}.{attr}: expected a whole number of seconds >= 0, got {value!r}")
                continue
            value = int(value)
        notify[attr] = value
    if (telemetry or attribute or key is not None) and path.depth < 3:
        problems.append(
            f"{source}: {where}: telemetry, attribute and key belong to resources (/oid/iid/rid), not {path}"
        )
    if path.depth >= 3 and key is None and (telemetry or attribute):
        key = default_key(path, version or default_version, models)
        if key is None:
            problems.append(
                f"{source}: {where}.key: required: resource {path} is not in the object models, so it has no "
                "default key name"
            )
    if len(problems) > before:
        return None
    return PathSpec(text, path, version, key, telemetry, attribute, observe, notify)


# -- small typed readers (every problem is appended, never raised) ---------------------------------------


def _unknown(data: Mapping[str, Any], known: Sequence[str], prefix: str, source: str, problems: list[str]) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(known)})"
            problems.append(f"{source}: {prefix}{key}: unknown key{hint}")


def _string(data: Mapping[str, Any], key: str, default: str, source: str, problems: list[str]) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        problems.append(f"{source}: {key}: expected a string, got {value!r}")
        return default
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool, prefix: str, source: str, problems: list[str]) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{source}: {prefix}{key}: expected true or false, got {value!r}")
        return default
    return value


def _int(data: Mapping[str, Any], key: str, default: int, prefix: str, source: str, problems: list[str]) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{source}: {prefix}{key}: expected an integer, got {value!r}")
        return default
    return value


def _list(
    data: Mapping[str, Any],
    key: str,
    item_type: type,
    prefix: str,
    source: str,
    problems: list[str],
    what: str,
) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, item_type) and not isinstance(v, bool) for v in value
    ):
        problems.append(f"{source}: {prefix}{key}: expected a list of {what}, got {value!r}")
        return []
    return value


def _enum(
    data: Mapping[str, Any], key: str, kind: type[enum.Enum], default: Any, source: str, problems: list[str]
) -> Any:
    value = data.get(key)
    if value is None:
        return default
    for member in kind:
        if member.value == value:
            return member
    choices = ", ".join(f'"{m.value}"' for m in kind)
    problems.append(f"{source}: {key}: expected one of {choices}, got {value!r}")
    return default
