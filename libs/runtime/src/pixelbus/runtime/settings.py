'''Settings declared once, read from the environment once at start::

    @dataclass(frozen=True)
    class ProjectorSettings(Settings):
        batch: int = setting("PIXELBUS_PROJECTOR_BATCH", 512, integer(1, 10_000))
        """events folded per batch at most"""

A field names its variable, default and parser (``(variable, stripped value) -> value``,
raising ``SettingsError`` naming the variable); its docstring is its meaning.
``from_env(environ)`` raises one ``SettingsError`` naming every bad or missing setting
(blank counts as unset); ``redacted()`` is the effective environment, secrets masked;
``settings_table`` writes the README's rows. A class adds derived values and checks across
fields by overriding ``read``.
'''

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

from pixelbus.contracts.subjects import POOLS
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.lifecycle import RetryPolicy

__all__ = [
    "REQUIRED",
    "BusSettings",
    "Networks",
    "Reader",
    "Settings",
    "boolean",
    "http_url",
    "integer",
    "matching",
    "networks",
    "number",
    "one_of",
    "path",
    "section",
    "setting",
    "settings_table",
    "with_secret_files",
    "without_credentials",
    "words",
]

T = TypeVar("T")
Parse = Callable[[str, str], T]
Networks = tuple[IPv4Network | IPv6Network, ...]
#: The default of a setting that must be set.
REQUIRED: Any = MISSING

#: Only our settings are read from files; other ``*_FILE`` variables are left alone.
SECRET_FILE_PREFIXES = ("PIXELBUS_", "R2_", "CLOUDFLARE_", "NATS_", "FACE_SWAP_", "APP_")


def with_secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with every ``NAME_FILE=/path`` of ours read into ``NAME`` (Kubernetes and Docker
    secrets mounted as files), so that a secret need not sit in the environment. ``NAME``
    set directly as well is a conflict, refused like an unreadable file."""
    expanded = dict(environ)
    for variable, path in environ.items():
        if not variable.endswith("_FILE") or not path.strip():
            continue
        if not variable.startswith(SECRET_FILE_PREFIXES):
            continue  # another program's setting (e.g. TF_CLI_CONFIG_FILE), not ours
        name = variable.removesuffix("_FILE")
        if environ.get(name):
            raise SettingsError(f"{name} and {variable} are both set; keep one")
        try:
            with open(path.strip(), encoding="utf-8") as secret:
                expanded[name] = secret.read().strip()
        except OSError as exc:
            raise SettingsError(f"{variable}={path!r} cannot be read: {exc.strerror}") from None
    return expanded


def text(name: str, raw: str) -> str:
    return raw


def _ranged(convert: Callable[[str], T], what: str, lo: Any, hi: Any) -> Parse[T]:
    def parse(name: str, raw: str) -> T:
        try:
            value = convert(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not {what}") from None
        if not lo <= value <= hi:
            raise SettingsError(f"{name}={value} is out of range [{lo}, {hi}]")
        return value

    return parse


def integer(lo: int, hi: int) -> Parse[int]:
    return _ranged(int, "an integer", lo, hi)


def number(lo: float, hi: float) -> Parse[float]:
    return _ranged(float, "a number", lo, hi)


def boolean(name: str, raw: str) -> bool:
    word = raw.lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={word!r} is not a boolean (true/false)")


def one_of(*choices: str, lower: bool = False) -> Parse[str]:
    said = " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)

    def parse(name: str, raw: str) -> str:
        if (raw.lower() if lower else raw) in choices:
            return raw.lower() if lower else raw
        raise SettingsError(f"{name}={raw!r} is not {said}")

    return parse


def words(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list (blank items dropped)."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def networks(strict: bool = True) -> Parse[Networks]:
    """A comma-separated list of CIDR networks (``PIXELBUS_SSRF_ALLOW_NETWORKS``)."""

    def parse(name: str, raw: str) -> Networks:
        found = []
        for item in words(name, raw):
            try:
                found.append(ip_network(item, strict=strict))
            except ValueError:
                raise SettingsError(f"{name}: {item!r} is not a network") from None
        return tuple(found)

    return parse


def path(name: str, raw: str) -> Path:
    return Path(raw)


def http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name}={raw!r} is not an http(s) URL")
    return raw


def matching(pattern: str, what: str) -> Parse[str]:
    """A value the whole of which matches ``pattern``; else "is not ``what``"."""
    compiled = re.compile(pattern)

    def parse(name: str, raw: str) -> str:
        if not compiled.fullmatch(raw):
            raise SettingsError(f"{name}={raw!r} is not {what}")
        return raw

    return parse


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


@dataclass(frozen=True)
class Env:
    """A setting's declaration, in its field's metadata (``default_doc``: the default in words)."""

    name: str
    parse: Callable[[str, str], Any]
    secret: bool = False
    show: Callable[[Any], str] | None = None
    default_doc: str | None = None

    def shown(self, value: Any) -> str:
        """``value`` as the environment would spell it; secrets masked."""
        if value is None or (isinstance(value, str | tuple | frozenset | Mapping) and not value):
            return f"({self.default_doc})" if self.default_doc else ""
        if self.secret:
            return "***"
        return self.show(value) if self.show else _spelt(value)


def _spelt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(_spelt(item) for item in value)
    if isinstance(value, frozenset):
        return ",".join(sorted(_spelt(item) for item in value))
    return str(value)


def setting(
    name: str,
    default: T,
    parse: Parse[T] = text,  # type: ignore[assignment]
    *,
    secret: bool = False,
    show: Callable[[Any], str] | None = None,
    default_doc: str | None = None,
    factory: Callable[[], T] | None = None,
) -> T:
    """A field read from the variable ``name`` (``REQUIRED``: no default; ``factory``: a
    default made per instance); its docstring (the string below it) is its meaning."""
    metadata = {"env": Env(name, parse, secret, show, default_doc)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


def section(cls: type[Settings], *, when: str | None = None, optional: bool = False) -> Any:
    """Settings nested in a class: with ``when``, read only when that variable is set;
    ``optional``, only when the class's ``read`` gives them (``None`` otherwise)."""
    if when is not None or optional:
        return field(default=None, metadata={"section": cls, "when": when, "optional": True})
    return field(default_factory=cls, metadata={"section": cls})


@dataclass(frozen=True)
class Settings:
    """Base of settings classes whose fields are declared with ``setting`` and ``section``."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        reader = Reader(environ)
        settings = cls.read(reader)
        if reader.missing or reader.invalid or settings is None:
            raise cls.refusal(reader)
        return settings

    @classmethod
    def refusal(cls, reader: Reader) -> Exception:
        """The error naming every problem ``reader`` found."""
        return SettingsError(reader.message())

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        """This class (``None`` when a required setting is missing): override to add more."""
        return reader.fields(cls)

    def redacted(self) -> dict[str, str]:
        """The effective settings by variable, secrets masked: for the start log."""
        shown: dict[str, str] = {}
        for each in dataclasses.fields(self):
            value = getattr(self, each.name)
            if "section" in each.metadata:
                shown.update(value.redacted() if value is not None else {})
            elif "env" in each.metadata:
                shown[each.metadata["env"].name] = each.metadata["env"].shown(value)
        return shown


def _required(each: dataclasses.Field[Any]) -> bool:
    return each.default is MISSING and each.default_factory is MISSING


class Reader:
    """Reads declared settings, collecting every problem so that one error names them all."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        #: (variable, how the message names it), (variable, message)
        self.missing: list[tuple[str, str]] = []
        self.invalid: list[tuple[str, str]] = []

    def get(self, name: str) -> str | None:
        """The stripped value, or ``None`` when unset or blank (``R2_BUCKET=`` is unset)."""
        return self.environ.get(name, "").strip() or None

    def fields(self, cls: type[T], **given: Any) -> T | None:
        """``cls`` from its declared fields and ``given``; ``None`` when one is missing."""
        values = dict(given)
        whole = True
        for each in dataclasses.fields(cls):  # type: ignore[arg-type]
            env, part = each.metadata.get("env"), each.metadata.get("section")
            if each.name in values:
                continue
            if env is not None and (raw := self.get(env.name)) is not None:
                try:
                    values[each.name] = env.parse(env.name, raw)
                except (SettingsError, ValueError) as exc:
                    self.refuse(env.name, str(exc))
                    whole = whole and not _required(each)
            elif env is not None and _required(each):
                self.missing.append((env.name, env.name))
                whole = False
            elif part is not None:
                when = each.metadata.get("when")
                if (self.get(when) is not None) if when else not each.metadata.get("optional"):
                    values[each.name] = part.read(self)
                    whole = whole and values[each.name] is not None
        return cls(**values) if whole else None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in (*self.missing, *self.invalid))

    def message(self, who: str = "this service") -> str:
        problems = [message for _, message in self.invalid]
        if self.missing:
            labels = ", ".join(label for _, label in self.missing)
            problems.insert(0, f"{who} needs {labels} (missing)")
        return "; ".join(problems)

    def refuse(self, name: str, message: str) -> None:
        self.invalid.append((name, message))


def _docs(cls: type[Any]) -> dict[str, str]:
    """The docstrings of ``cls``'s fields (the string literal below each), by field name."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {
        node.target.id: " ".join(str(after.value.value).split())
        for node, after in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
    }


def _said(name: str, value: Any) -> str:
    """A default as the docs say it: sizes in KiB or MiB, long durations in days."""
    for unit, size, suffixes in (
        ("MiB", 1 << 20, "BYTES SIZE"),
        ("KiB", 1024, "BYTES"),
        ("days", 86400, "S"),
    ):
        if name.rpartition("_")[2] in suffixes.split() and value >= size and value % size == 0:
            return f"{value // size:g} {unit}".replace("1 days", "1 day")
    return f"`{_spelt(value)}`"


def settings_table(cls: type[Any], skip: tuple[type[Any], ...] = ()) -> list[str]:
    """The Markdown rows of ``cls``'s settings and its sections' (but ``skip``), each once."""
    rows, docs = [], _docs(cls)
    for each in dataclasses.fields(cls):
        part, env = each.metadata.get("section"), each.metadata.get("env")
        if part is not None and part not in skip:
            rows += [row for row in settings_table(part, skip) if row not in rows]
        elif env is not None and not any(f"| `{env.name}` |" in row for row in rows):
            unset = each.default in (MISSING, None, "", ())
            shown = env.default_doc or ("—" if unset else _said(env.name, each.default))
            rows.append(f"| `{env.name}` | {shown} | {docs.get(each.name, '')} |")
    return rows


# -- the bus -------------------------------------------------------------------------------

_DAYS = 24 * 3600


@dataclass(frozen=True)
class BusSettings(Settings):
    """How services reach NATS and how the JetStream assets are sized."""

    nats_url: str = setting("NATS_URL", "nats://127.0.0.1:4222", show=without_credentials)
    """the NATS server"""
    replicas: int = setting("PIXELBUS_STREAM_REPLICAS", 1, integer(1, 5))
    """replicas of the stream and buckets (3 in production)"""
    stream_max_age_s: float = setting("PIXELBUS_STREAM_MAX_AGE_S", 7.0 * _DAYS, number(60, 3.2e7))
    """how long events (and task states) are kept"""
    duplicate_window_s: float = setting("PIXELBUS_DUPLICATE_WINDOW_S", 600.0, number(1, 86400))
    """JetStream de-duplication window of the task stream and the webhook queue; the projector
    plans no webhook for an event stored longer ago than this less 10 s"""
    ack_wait_s: float = setting("PIXELBUS_ACK_WAIT_S", 3.0, number(0.5, 3600))
    """the lease of every in-cluster consumer (workers, uploader, projector, webhook dispatcher)
    without a heartbeat: work under way heartbeats every third of it, so a killed process's
    work comes back within it"""
    pool_ack_wait_s: tuple[tuple[str, float], ...] = setting(
        "PIXELBUS_ACK_WAIT_S_<POOL>",
        (("comfy", 30.0),),
        default_doc="`COMFY`: `30`; others: `PIXELBUS_ACK_WAIT_S`",
        show=lambda waits: ",".join(f"{pool}={wait:g}" for pool, wait in waits),
    )
    """one pool's lease (`_FACESWAP`, `_COMFY`); the comfy pool's is longer because external
    consumers (`/api/comm/task/fetch`) draw from it and heartbeat over HTTP"""
    max_deliver: int = setting("PIXELBUS_MAX_DELIVER", 5, integer(1, 100))
    """attempts before a retryable failure becomes final"""
    retry_delay_s: float = setting("PIXELBUS_RETRY_DELAY_S", 2.0, number(0, 3600))
    """first wait before a failed task is tried again; waits double up to the max, with jitter"""
    retry_max_delay_s: float = setting("PIXELBUS_RETRY_MAX_DELAY_S", 60.0, number(0, 86400))
    """longest wait before a failed task (or upload) is tried again"""
    outputs_ttl_s: float = setting("PIXELBUS_OUTPUTS_TTL_S", 1.0 * _DAYS, number(60, 3.2e7))
    """how long the Object Store keeps an output or inline input not yet removed"""
    idempotency_ttl_s: float = setting("PIXELBUS_IDEMPOTENCY_TTL_S", 1.0 * _DAYS, number(60, 3.2e7))
    """how long an `Idempotency-Key` is remembered"""
    progress_interval_s: float = setting("PIXELBUS_PROGRESS_INTERVAL_S", 0.25, number(0, 60))
    """least time between two progress events of one task (reports in between are coalesced)"""
    inline_output_bytes: int = setting(
        "PIXELBUS_INLINE_OUTPUT_BYTES", 256 * 1024, integer(0, 512 * 1024)
    )
    """outputs of a task up to this size in all (at most 512 KiB) travel inline in `OutputsReady`;
    larger ones through the Object Store"""

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        """A pool without ``PIXELBUS_ACK_WAIT_S_<POOL>`` follows ``PIXELBUS_ACK_WAIT_S``."""
        waits = dict(cls.pool_ack_wait_s)
        for pool in POOLS:
            name = f"PIXELBUS_ACK_WAIT_S_{pool.name.upper()}"
            if (raw := reader.get(name)) is not None:
                try:
                    waits[pool.name] = number(0.5, 3600)(name, raw)
                except SettingsError as exc:
                    reader.refuse(name, str(exc))
        return reader.fields(cls, pool_ack_wait_s=tuple(sorted(waits.items())))

    def retry_policy(self) -> RetryPolicy:
        """The redelivery backoff of every task consumer (``pixelbus.runtime.lifecycle``)."""
        return RetryPolicy(self.retry_delay_s, self.retry_max_delay_s, self.max_deliver)

    def ack_wait_for(self, pool: str) -> float:
        """The lease of ``pool``'s tasks: its own setting, else ``ack_wait_s``."""
        return dict(self.pool_ack_wait_s).get(pool, self.ack_wait_s)
