"""Where the server's settings come from: flags, SESSIOND_* variables, a TOML file, defaults.

One precedence, documented and tested: **flags > environment > file > defaults**.
Every ``ServerConfig`` field is a setting (and every ``Limits`` field, under
``[limits]`` in the file), with one name in each layer, derived from the field
name so they cannot drift apart:

========================  ==================================  ==========================
file key                  environment variable                flag
========================  ==================================  ==========================
``readers``               ``SESSIOND_READERS``                ``--readers``
``[limits] max_watchers`` ``SESSIOND_MAX_WATCHERS``           ``--max-watchers``
========================  ==================================  ==========================

The help text of each setting is the comment above its field in
``config.py``, so the code and ``--help`` say the same thing. Unknown file
keys and bad values from any layer stop the start with one message naming
each of them; an unknown ``SESSIOND_*`` variable is named in a warning (the
prefix is shared with the client and with scripts). The result is the
frozen ``ServerConfig`` the server runs with; ``describe`` prints it with
secrets masked (``sessiond config``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import tokenize
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import config as config_module
from .config import Limits, ServerConfig
from .store.postgres_url import redacted

ENV_PREFIX = "SESSIOND_"
CONFIG_ENV = "SESSIOND_CONFIG"
# SESSIOND_* variables that are not server settings: the command-line client's.
CLIENT_ENVIRONMENT = frozenset({CONFIG_ENV, "SESSIOND_TOKEN", "SESSIOND_TIMEOUT"})
# Fields that are not settings: injected by tests and embedders only.
NOT_SETTINGS = frozenset({"clock", "limits"})
CHOICES: dict[str, tuple[str, ...]] = {
    "durability": ("full", "normal"),
    "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error"),
    "event_loop": ("asyncio", "uvloop"),
}
# Numbers that must be above zero; every other number may be zero (which
# means "off" or "no bound" where the field's comment says so) but not negative.
POSITIVE = frozenset({
    "abandoned_after_seconds", "max_batch_writes", "compaction_interval_seconds",
    "retention_interval_seconds", "readers", "max_connections", "handshake_timeout_seconds",
    "health_check_interval_seconds", "health_check_failures", "watch_response_bytes",
    "watch_read_ahead_bytes",
})
SECRET_WORDS = ("key", "token", "secret", "password")
DEST_PREFIX = "setting__"
# Help for fields that have no comment of their own in config.py.
HELP = {
    "address": "host:port the gRPC server listens on (port 0 picks a free one).",
    "max_message_bytes": "Most bytes of content, reasoning and blocks in one message.",
    "max_messages_per_append": "Most messages in one AppendMessages call.",
    "max_labels": "Most labels on a session (and metadata entries on a message).",
    "max_label_key_bytes": "Longest label key, in bytes.",
    "max_label_value_bytes": "Longest label value, in bytes.",
    "max_id_bytes": "Longest client-chosen id (session, message, request), in bytes.",
    "max_text_field_bytes": "Longest free-text session field (goal, names), in bytes.",
    "max_page_size": "Largest page_size of session lists and searches.",
    "default_page_size": "Sessions per page when page_size is 0.",
    "max_message_page_size": "Largest page_size of ListMessages (and last_n, last_turns).",
    "default_message_page_size": "Messages per page when page_size is 0.",
    "max_filter_values": "Most values in one repeated filter field.",
    "max_query_bytes": "Longest search query, in bytes.",
    "max_request_bytes": "Largest request the server accepts, in bytes.",
    "max_watchers": "Most open WatchSessions streams on this server.",
    "max_watchers_per_caller": "Most open WatchSessions streams per caller.",
}
ALIASES = {"abandoned_after_seconds": ("--abandoned-after",),
           "api_keys_file": ("--api-keys",), "tls_cert_file": ("--tls-cert",),
           "tls_key_file": ("--tls-key",), "tls_client_ca_file": ("--tls-client-ca",)}


class SettingsError(Exception):
    """Settings that cannot be used; ``problems`` names each one."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: a ServerConfig (or Limits) field and its names in each layer."""

    field: str
    kind: type
    optional: bool
    default: Any
    help: str
    in_limits: bool = False
    # A path that may also be a URL (``database``: a SQLite file or PostgreSQL).
    url_ok: bool = False

    @property
    def key(self) -> str:
        """The name in the TOML file (``limits.`` fields live in the ``[limits]`` table)."""
        return f"limits.{self.field}" if self.in_limits else self.field

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def dest(self) -> str:
        return DEST_PREFIX + self.field

    @property
    def secret(self) -> bool:
        return self.kind in (str, bytes) and any(w in self.field for w in SECRET_WORDS)

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        if value is None:
            return None if self.optional else "must be set"
        choices = CHOICES.get(self.field)
        if choices and value not in choices:
            return f"must be one of {', '.join(choices)}, not {value!r}"
        if self.kind in (int, float):
            positive = self.field in POSITIVE or (
                self.in_limits and not self.field.startswith("rate_limit"))
            if positive and value <= 0:
                return f"must be above 0, not {value}"
            if value < 0:
                return f"must not be negative, not {value}"
        if self.field == "metrics_address" and value:
            from .observability import parse_metrics_address

            try:
                parse_metrics_address(value)
            except ValueError as exc:
                return str(exc)
        if self.field == "address" and ":" not in value:
            return f"{value!r} is not host:port"
        return None


def _field_comments(source_module: Any) -> dict[str, str]:
    """The comment block above each dataclass field of ``source_module``, by field name.

    Fields that follow another field directly share the comment above the
    first when it names them (a word of the field name occurs in it).
    """
    try:
        source = inspect.getsource(source_module)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    block: list[str] = []
    current = ""  # the last comment block, while the fields under it go on
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.start[1] == 4:
            block.append(token.string.lstrip("# ").strip())
        elif token.type == tokenize.NAME and token.start[1] == 4 and token.line[4:5].isalpha():
            name = token.line.strip().split(":", 1)[0]
            if not name.isidentifier():
                continue
            if block:
                current = " ".join(block)
                block = []
                comments[name] = current
            elif current and any(len(word) >= 3 and word in current.lower()
                                 for word in name.split("_")):
                comments[name] = current
        elif token.type == tokenize.NL and not token.line.strip():
            block, current = [], ""
    return comments


def _kind(annotation: Any) -> tuple[type, bool, bool] | None:
    """(base type, optional, url_ok) for the annotation types settings understand."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = typing.get_args(annotation)
        optional = type(None) in args
        rest = {a for a in args if a is not type(None)}
        if rest == {Path, str}:
            return Path, optional, True
        if len(rest) != 1:
            return None
        annotation = rest.pop()
    if annotation in (str, int, float, bool, bytes, Path):
        return annotation, optional, False
    return None


def _defaults(cls: type) -> dict[str, Any]:
    instance = cls()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}


def all_settings() -> list[Setting]:
    """Every setting, ServerConfig fields first, then Limits, in declaration order."""
    comments = _field_comments(config_module)
    found: list[Setting] = []
    for cls, in_limits in ((ServerConfig, False), (Limits, True)):
        hints = typing.get_type_hints(cls)
        defaults = _defaults(cls)
        for f in dataclasses.fields(cls):
            if not in_limits and f.name in NOT_SETTINGS:
                continue
            kind = _kind(hints[f.name])
            if kind is None:
                raise TypeError(f"ServerConfig field {f.name} has a type settings.py cannot "
                                f"read from text: {hints[f.name]}")
            text = comments.get(f.name) or HELP.get(f.name, "")
            found.append(Setting(f.name, kind[0], kind[1], defaults[f.name], text, in_limits,
                                 kind[2]))
    return found


# Parsing values


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _from_text(setting: Setting, text: str, base: Path | None = None) -> Any:
    kind = setting.kind
    if setting.optional and text == "":
        return None
    if kind is bool:
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"{text!r} is not a boolean (true/false)")
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if kind is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if kind is Path:
        if setting.url_ok and (":/" in text or text.startswith("sqlite:")):
            return text  # a URL (postgresql://..., sqlite:///...), kept as written
        path = Path(text).expanduser()
        return base / path if base is not None and not path.is_absolute() else path
    if kind is bytes:
        return text.encode()
    return text


def _from_toml(setting: Setting, value: Any, base: Path) -> Any:
    kind = setting.kind
    if isinstance(value, str) and kind in (str, Path, bytes):
        return _from_text(setting, value, base)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    wanted = {str: "a string", Path: "a path string", bytes: "a string", bool: "true or false",
              int: "an integer", float: "a number"}[kind]
    raise ValueError(f"{value!r} is not {wanted}")


# Layers


def _file_layer(path: Path, by_key: Mapping[str, Setting],
                problems: list[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        problems.append(f"config file {path}: cannot read: {exc.strerror}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file {path}: not TOML: {exc}")
        return {}
    base = path.parent
    values: dict[str, Any] = {}
    flat: list[tuple[str, Any]] = []
    for key, value in data.items():
        if key == "limits" and isinstance(value, dict):
            flat.extend((f"limits.{k}", v) for k, v in value.items())
        else:
            flat.append((key, value))
    for key, value in flat:
        setting = by_key.get(key)
        if setting is None:
            problems.append(f"config file {path}: unknown key {key!r}")
            continue
        try:
            values[setting.field] = _from_toml(setting, value, base)
        except ValueError as exc:
            problems.append(f"config file {path}: {key}: {exc}")
    return values


def _env_layer(environ: Mapping[str, str], by_env: Mapping[str, Setting],
               problems: list[str], warnings: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in CLIENT_ENVIRONMENT:
            continue
        setting = by_env.get(name)
        if setting is None:
            # A warning, not an error: the SESSIOND_ prefix is shared with the
            # client, scripts and test tooling, so a stray one is not proof of a typo.
            warnings.append(f"environment: {name} is not a setting; ignored")
            continue
        try:
            values[setting.field] = _from_text(setting, text)
        except ValueError as exc:
            problems.append(f"environment: {name}: {exc}")
    return values


def _flag_layer(args: argparse.Namespace, settings: Sequence[Setting],
                problems: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in settings:
        if not hasattr(args, setting.dest):
            continue
        raw = getattr(args, setting.dest)
        try:
            values[setting.field] = raw if isinstance(raw, bool) else _from_text(setting, raw)
        except ValueError as exc:
            problems.append(f"{setting.flag}: {exc}")
    return values


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per setting to ``parser`` (``sessiond serve``, ``config``).

    Flags left out keep no value (argparse.SUPPRESS), so only those given
    take precedence over the environment and the file. Settings that share
    one paragraph of help (a comment over several fields in config.py) are
    shown as one group with that paragraph, instead of the paragraph under
    each flag.
    """
    parser.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        dest=DEST_PREFIX + "config_file",
                        help=f"TOML configuration file (env {CONFIG_ENV})")
    server = parser.add_argument_group("server settings (flags > SESSIOND_* env > file)")
    limits = parser.add_argument_group("limits (the [limits] table in the file)")
    settings = all_settings()
    shared = {text for text in (s.help for s in settings)
              if text and sum(s.help == text for s in settings) > 1}
    paragraphs: dict[str, Any] = {}
    for setting in settings:
        group = limits if setting.in_limits else server
        where = f"env {setting.env}; default {_shown_default(setting)}"
        if setting.help in shared:
            if setting.help in paragraphs:
                group = paragraphs[setting.help]
            else:
                title, description = _paragraph_title(
                    setting.help, [s.field for s in settings if s.help == setting.help])
                if setting.in_limits:
                    title += " (in the [limits] table)"
                group = paragraphs[setting.help] = parser.add_argument_group(
                    title, description.replace("%", "%%"))
            text = where
        else:
            text = f"{setting.help or setting.field} ({where})"
        text = text.replace("%", "%%")
        names = (setting.flag, *ALIASES.get(setting.field, ()))
        if setting.kind is bool:
            group.add_argument(*names, dest=setting.dest, default=argparse.SUPPRESS,
                               action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(*names, dest=setting.dest, default=argparse.SUPPRESS,
                               metavar=_metavar(setting), help=text)


def _shown_default(setting: Setting) -> str:
    """A default as a person writes it: a path, a word, a number; never a Python repr."""
    value = setting.default
    if setting.secret:
        return "set" if value else "empty"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    text = str(value)
    return text if text else "empty"


def _paragraph_title(text: str, fields: Sequence[str]) -> tuple[str, str]:
    """A group's title and description: ("Retention", "Remove sessions ...") from
    "Retention: remove sessions ..."; without such a heading, the words the fields'
    names begin with ("rate limit" for rate_limit_per_second, rate_limit_burst)."""
    head, separator, rest = text.partition(": ")
    if separator and len(head) <= 32 and rest:
        return head, rest[0].upper() + rest[1:]
    common: list[str] = []
    for words in zip(*(field.split("_") for field in fields), strict=False):
        if len(set(words)) != 1:
            break
        common.append(words[0])
    return " ".join(common).capitalize() or "Settings", text


# Metavars that say what a value is; numbers by their unit, the rest by field.
METAVARS = {
    "database": "PATH|URL",
    "address": "HOST:PORT",
    "metrics_address": "HOST:PORT",
    "page_token_key": "KEY",
}


def _metavar(setting: Setting) -> str:
    if setting.field in METAVARS:
        return METAVARS[setting.field]
    choices = CHOICES.get(setting.field)
    if choices:
        return "|".join(choices)
    if setting.kind in (int, float):
        for unit in ("seconds", "bytes"):
            if setting.field.endswith(f"_{unit}"):
                return unit.upper()
        return "N" if setting.kind is int else "NUMBER"
    return "PATH" if setting.kind is Path else "TEXT"


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The effective configuration and where each value came from."""

    config: ServerConfig
    sources: dict[str, str]
    config_file: Path | None
    warnings: list[str] = dataclasses.field(default_factory=list)


def resolve(args: argparse.Namespace | None, environ: Mapping[str, str]) -> Resolved:
    """Apply defaults, then the file, then the environment, then flags; validate."""
    settings = all_settings()
    by_key = {s.key: s for s in settings}
    by_env = {s.env: s for s in settings}
    problems: list[str] = []
    warnings: list[str] = []
    args = args if args is not None else argparse.Namespace()
    config_file: Path | None = getattr(args, DEST_PREFIX + "config_file", None)
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV]).expanduser()
    layers = [
        (f"file {config_file}", _file_layer(config_file, by_key, problems)
         if config_file is not None else {}),
        ("environment", _env_layer(environ, by_env, problems, warnings)),
        ("flag", _flag_layer(args, settings, problems)),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {s.field: "default" for s in settings}
    for source, layer in layers:
        for field, value in layer.items():
            values[field] = value
            sources[field] = source
    for setting in settings:
        if setting.field in values:
            reason = setting.check(values[setting.field])
            if reason is not None:
                name = {"environment": setting.env, "flag": setting.flag}.get(
                    sources[setting.field], setting.key)
                problems.append(f"{name}: {reason}")
    if problems:
        raise SettingsError(problems)
    limit_fields = {s.field for s in settings if s.in_limits}
    limits = Limits(**{k: v for k, v in values.items() if k in limit_fields})
    server = ServerConfig(limits=limits,
                          **{k: v for k, v in values.items() if k not in limit_fields})
    return Resolved(server, sources, config_file, warnings)


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerConfig:
    """The ServerConfig that ``sessiond serve`` runs with; raises SettingsError."""
    return resolve(args, environ).config


# Showing it


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return json.dumps(str(value), ensure_ascii=False)


def describe(resolved: Resolved) -> str:
    """The effective configuration as TOML, each value's source beside it, secrets masked."""
    lines = ["# sessiond effective configuration (flags > SESSIOND_* env > file > defaults)"]
    if resolved.config_file is not None:
        lines.append(f"# config file: {resolved.config_file}")
    in_limits = False
    for setting in all_settings():
        if setting.in_limits and not in_limits:
            lines += ["", "[limits]"]
            in_limits = True
        holder: Any = resolved.config.limits if setting.in_limits else resolved.config
        value = getattr(holder, setting.field)
        source = resolved.sources[setting.field]
        if value is None:
            lines.append(f"# {setting.field} = (unset)  # {source}")
            continue
        if setting.url_ok:
            value = redacted(value)  # a URL's password never shows
        shown = '"***"' if setting.secret and value else _toml_value(value)
        lines.append(f"{setting.field} = {shown}  # {source}")
    return "\n".join(lines) + "\n"
