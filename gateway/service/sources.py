"""Which video sources a server-side stream may pull, by an allow-list.

A stream makes the service connect wherever its URL points, so URLs are checked before
anything is opened: the scheme must be allowed (``FACEREC_STREAM_ALLOWED_SCHEMES``), and
the host must be named in ``FACEREC_STREAM_ALLOWED_HOSTS``: a host name, ``*.domain``
(any name under it), an address, or a network in CIDR notation. A host name given in the
URL is allowed by name, or when every address it resolves to lies in an allowed network.
``file:`` URLs are refused unless ``FACEREC_STREAM_FILE_DIR`` is set, and then only for
files under that folder. Camera indices are never accepted from the API.

Credentials in a URL (``rtsp://user:secret@camera/...``) are kept for opening the source and
masked everywhere the URL is shown (:func:`redact`). What a source answers cannot take a
stream past the list either: workers open live sources through
:class:`gateway.service.relay.SourceRelay`, which refuses redirects and playlists.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from facerec.errors import FaceRecError
from gateway.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https")  # what facerec.video.open_source reads


class SourceNotAllowedError(FaceRecError):
    """A stream source outside the allow-list."""

    code = "source_not_allowed"
    http_status = 422


class InvalidSourceError(FaceRecError):
    """A stream source that is not a URL the service can read."""

    code = "invalid_source"
    http_status = 422


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def redact(uri: str) -> str:
    """``uri`` with the password of its user information replaced by ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<invalid>"
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class SourcePolicy:
    """The allow-list: ``schemes`` (lowercase), ``hosts`` (lowercase names, addresses and
    ``*.domain`` patterns), ``networks``, and ``file_dir`` (None: no file sources)."""

    schemes: frozenset[str]
    hosts: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()
    file_dir: Path | None = None
    ca_file: Path | None = None  # authorities besides the system's, for rtsps and https

    def tls_context(self) -> ssl.SSLContext:
        """How TLS sources are checked: the host's certificate, from the system's
        authorities or ``ca_file``'s."""
        context = ssl.create_default_context()
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        return context

    @classmethod
    def from_settings(cls, settings: Settings) -> SourcePolicy:
        hosts: list[str] = []
        networks: list[Network] = []
        for entry in _split(settings.stream_allowed_hosts):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.append(entry.lower().strip("[]"))
        schemes = frozenset(s.lower() for s in _split(settings.stream_allowed_schemes))
        file_dir = settings.stream_file_dir.resolve() if settings.stream_file_dir else None
        return cls(schemes, tuple(hosts), tuple(networks), file_dir, settings.stream_ca_file)

    def check(self, uri: str) -> str:
        """What to open for ``uri`` (a ``file:`` URL becomes its resolved path), or
        :class:`InvalidSourceError` / :class:`SourceNotAllowedError`."""
        if not uri or any(ch.isspace() or ord(ch) < 32 for ch in uri):
            raise InvalidSourceError("the source must be a URL without spaces or controls")
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise InvalidSourceError(f"not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme == "file":
            return str(self._file(unquote(parts.path)))
        if scheme not in LIVE_SCHEMES:
            raise InvalidSourceError(
                "the source must be an rtsp://, rtsps://, http:// or https:// URL (or file: "
                "where enabled)",
                scheme=scheme or None,
            )
        if scheme not in self.schemes:
            raise SourceNotAllowedError(f"the scheme {scheme}: is not allowed", scheme=scheme)
        host = (parts.hostname or "").lower()
        if not host:
            raise InvalidSourceError("the URL names no host")
        if not self.host_allowed(host, parts.port):
            raise SourceNotAllowedError(
                f"the host {host} is not in FACEREC_STREAM_ALLOWED_HOSTS", host=host
            )
        return uri

    def _file(self, path: str) -> Path:
        if self.file_dir is None:
            raise SourceNotAllowedError(
                "file: sources are not enabled (FACEREC_STREAM_FILE_DIR)", scheme="file"
            )
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.file_dir):
            raise SourceNotAllowedError(f"file: sources must lie under {self.file_dir}")
        if not resolved.is_file():
            raise InvalidSourceError(f"no such file: {resolved}", code="file_not_found")
        return resolved

    def host_allowed(self, host: str, port: int | None) -> bool:
        """Whether ``host`` is in the allow-list (by name, or every address it resolves
        to within an allowed network)."""
        if host in self.hosts:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            return any(address in net for net in self.networks)
        if any(p.startswith("*.") and host.endswith(p[1:]) for p in self.hosts):
            return True
        if not self.networks:
            return False
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except OSError:
            return False
        found = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
        return bool(found) and all(any(a in net for net in self.networks) for a in found)
