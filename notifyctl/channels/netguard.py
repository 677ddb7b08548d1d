"""Where end-user URLs may lead, and how long a send may take (SPEC §14).

Two guards shared by the HTTP channels:

- ``AddressPolicy`` decides whether an address is a public destination or one
  the operator allowed (``NOTIFYCTL_WEBHOOK_ALLOW``: hostnames and CIDRs).
  ``http_session`` gives a requests session whose connections resolve the
  host once, check every resolved address, and connect to the checked IP
  itself, while the Host header, TLS SNI and certificate checks keep the
  hostname: nothing can resolve differently between the check and the
  connect (no DNS-rebinding gap).
- ``Deadline`` bounds a whole send. Per-socket timeouts only bound one read,
  so a receiver that trickles a byte at a time would never time out; a
  watchdog thread shuts down the send's sockets when its deadline passes,
  which ends any blocking read or write at once, with or without TLS.

Both HTTP clients here build on the same guarded urllib3 connections: the
requests session (webhooks) and ``JsonClient`` (the Bot API, which sends the
most and so skips requests' per-call work). requests and urllib3 are
imported inside functions, so importing this module costs nothing on an
idle run.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import ipaddress
import itertools
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: answers are read up to this size; a larger one is cut off (nothing needs more)
MAX_BODY = 64 * 1024

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
#: ranges Python's flags miss or that embed another address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # CGNAT


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_public(ip: IPAddress) -> bool:
    """True for an address on the public internet; False for loopback, private,
    link-local (169.254.169.254 included), CGNAT, multicast, reserved,
    unspecified and their IPv6 forms (::1, fc00::/7, fe80::/10, IPv4-mapped …)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        inner = _embedded_ipv4(ip)
        if inner is not None and not is_public(inner):
            return False
        if ip in _NAT64_LOCAL or ip.is_site_local:
            return False
    elif ip in _SHARED:
        return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def literal_ip(host: str) -> IPAddress | None:
    """The address a URL host names literally (``[::1]`` too), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (for "https except to loopback" rules)."""
    name = host.strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES:
        return True
    ip = literal_ip(name)
    return ip is not None and ip.is_loopback


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus the hosts and networks the operator allowed."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> AddressPolicy:
        """``NOTIFYCTL_WEBHOOK_ALLOW``: a comma list of hostnames and CIDRs (or IPs).

        ``ValueError`` names the entry that is neither.
        """
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in (text or "").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = entry.rstrip(".")
            labels = name.split(".")
            if not all(lab and len(lab) < 64 and lab.replace("-", "").isalnum() for lab in labels):
                raise ValueError(
                    f"NOTIFYCTL_WEBHOOK_ALLOW: {raw.strip()[:80]!r} is not a hostname or CIDR"
                )
            hosts.add(name)
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.strip("[]").rstrip(".").lower() in self.hosts

    def allows_address(self, ip: IPAddress) -> bool:
        if is_public(ip):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def check_literal(self, host: str) -> None:
        """``ValueError`` when ``host`` is a literal non-public IP not allowed (at ``create``)."""
        ip = literal_ip(host)
        if ip is not None and not self.allows_host(host) and not self.allows_address(ip):
            raise ValueError(
                "the webhook URL points to a non-public address "
                "(allow internal receivers with NOTIFYCTL_WEBHOOK_ALLOW)"
            )

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """``getaddrinfo`` once; every address must pass, or ``DestinationRefused``."""
        name = host.strip("[]")
        infos = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM)
        if self.allows_host(name):
            return infos
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]))  # a scoped IPv6 is never public
            if not self.allows_address(ip):
                raise DestinationRefused(
                    "the webhook host resolves to a non-public address "
                    "(allow internal receivers with NOTIFYCTL_WEBHOOK_ALLOW)"
                )
        return infos


class DestinationRefused(OSError):
    """The destination is not public and not allowed; never retried."""


# --- the deadline of one send ----------------------------------------------------------


class Deadline:
    """One send's overall time limit; sockets registered with it close when it passes.

    Used as a context manager around the send: inside it, connections made
    through ``http_session`` register their sockets with it automatically.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + max(seconds, 0.0)
        self.expired = False
        #: the request started to go out: an abandoned send may have been acted on
        self.request_started = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._active = False

    @property
    def active(self) -> bool:
        """Inside its ``with`` block: the send it guards is under way."""
        return self._active

    def left(self) -> float:
        return max(self.expires_at - time.monotonic(), 0.0)

    def timeout(self, limit: float) -> float:
        """A per-operation timeout: ``limit``, but never past the deadline (≥ 1 ms)."""
        return max(min(limit, self.left()), 0.001)

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return
        _shutdown(sock)

    def expire(self) -> None:
        """Called by the watchdog: cut every socket of this send."""
        with self._lock:
            if not self._active or self.expired:
                return
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> Deadline:
        self._active = True
        _local.deadline = self
        _WATCHDOG.arm(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._active = False
            self._sockets = []
        _local.deadline = None
        _WATCHDOG.disarm()

    def message(self) -> str:
        return f"no complete answer within the send deadline ({self.seconds:g} s)"


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: this runs on another
    # thread than the reader and must not touch the TLS object in use
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Local(threading.local):
    deadline: Deadline | None = None


_local = _Local()


def current_deadline() -> Deadline | None:
    return _local.deadline


def watch(sock: socket.socket | None) -> None:
    """Register a socket with the current send's deadline, if there is one."""
    deadline = _local.deadline
    if deadline is not None:
        deadline.watch(sock)


class _Watchdog:
    """One daemon thread that expires deadlines in order (not a timer per send)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._live = 0  # armed and not yet over

    def arm(self, deadline: Deadline) -> None:
        with self._cond:
            self._live += 1
            heapq.heappush(self._heap, (deadline.expires_at, next(self._counter), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="notifyctl-send-deadline", daemon=True
                )
                self._thread.start()
            if self._heap[0][2] is deadline:  # only an earlier deadline needs the thread awake
                self._cond.notify()

    def disarm(self) -> None:
        """A send is over. Its entry stays until its deadline (no search per send), but
        once most entries are over the heap is rebuilt from the live ones: a fast run
        would otherwise hold every send of the last deadline's length (thousands)."""
        with self._cond:
            self._live -= 1
            if len(self._heap) > 2 * self._live + 64:
                self._heap = [entry for entry in self._heap if entry[2].active]
                heapq.heapify(self._heap)

    def expire_all(self) -> None:
        with self._cond:
            armed, self._heap = [entry[2] for entry in self._heap], []
        for deadline in armed:
            deadline.expire()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                expires_at, _, deadline = self._heap[0]
                wait = expires_at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            deadline.expire()


_WATCHDOG = _Watchdog()


def cut_every_send() -> None:
    """End every send under way now, as if its deadline had passed (a run told to stop
    at once: a thread blocked reading an answer would otherwise keep the process alive
    until its read timeout). A send that connects after this is cut as it connects."""
    _WATCHDOG.expire_all()


# --- HTTP ------------------------------------------------------------------------------


def http_session(
    policy: AddressPolicy | None, *, trust_env: bool, pool_size: int = 10
) -> requests.Session:
    """A requests session whose connections honour the current ``Deadline``.

    With a ``policy``, every connection checks the addresses it connects to
    (see ``AddressPolicy.resolve``). ``trust_env=False`` ignores ``.netrc``
    and the environment's proxies. ``pool_size``: connections kept per host
    (the sends in flight at once; more are opened, then dropped with a warning).
    """
    import requests

    session = requests.Session()
    session.trust_env = trust_env
    adapter = _adapter_class()(policy, pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _adapter_class() -> Any:
    """Built on first use, so that requests is imported only by channels that send."""
    global _ADAPTER
    if _ADAPTER is not None:
        return _ADAPTER
    from requests.adapters import HTTPAdapter

    class GuardedAdapter(HTTPAdapter):
        def __init__(self, policy: AddressPolicy | None, pool_size: int) -> None:
            self._policy = policy
            super().__init__(pool_maxsize=pool_size)

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = guarded_pool_classes(self._policy)

    _ADAPTER = GuardedAdapter
    return _ADAPTER


def guarded_pool_classes(policy: AddressPolicy | None) -> dict[str, Any]:
    """urllib3 connection pools whose connections check ``policy`` (when given) and
    register their sockets with the current ``Deadline``, by scheme."""
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    plain, tls = _guarded_connection_classes()

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = type("HTTPConnection", (plain,), {"policy": policy})

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = type("HTTPSConnection", (tls,), {"policy": policy})

    return {"http": HTTPPool, "https": HTTPSPool}


@functools.cache
def _guarded_connection_classes() -> tuple[type, type]:
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.exceptions import NewConnectionError
    from urllib3.util import connection as util_connection

    class GuardedMixin:
        policy: AddressPolicy | None = None
        host: str
        port: int
        timeout: Any
        source_address: Any
        socket_options: Any
        sock: Any

        def _new_conn(self) -> socket.socket:
            deadline = _local.deadline
            timeout = self.timeout
            if deadline is not None and isinstance(timeout, int | float):
                timeout = deadline.timeout(timeout)
            if self.policy is None:
                sock: socket.socket = super()._new_conn()  # type: ignore[misc]
            else:
                sock = self._guarded_conn(self.policy, timeout)
            if deadline is not None:
                deadline.watch(sock)
            return sock

        def _guarded_conn(self, policy: AddressPolicy, timeout: Any) -> socket.socket:
            conn: Any = self
            try:
                infos = policy.resolve(self.host, self.port)
            except DestinationRefused as e:
                raise _Refused(conn, str(e)) from None
            except OSError as e:
                raise NewConnectionError(conn, f"Failed to resolve the host: {e}") from e
            error: OSError | None = None
            for family, socktype, proto, _, address in infos:
                sock = socket.socket(family, socktype, proto)
                try:
                    util_connection._set_socket_options(sock, self.socket_options)
                    sock.settimeout(timeout)
                    sock.connect(address)  # the checked address itself
                    return sock
                except OSError as e:
                    sock.close()
                    error = e
            if isinstance(error, TimeoutError):
                from urllib3.exceptions import ConnectTimeoutError

                raise ConnectTimeoutError(conn, f"Connection timed out ({timeout} s)")
            raise NewConnectionError(conn, f"Failed to establish a new connection: {error}")

        def request(self, *args: Any, **kwargs: Any) -> Any:
            deadline = _local.deadline
            if deadline is not None:
                deadline.watch(self.sock)  # a kept-alive connection's socket
                deadline.request_started = True
            return super().request(*args, **kwargs)  # type: ignore[misc]

    class _Refused(NewConnectionError):
        refused = True

    class GuardedHTTPConnection(GuardedMixin, HTTPConnection):
        pass

    class GuardedHTTPSConnection(GuardedMixin, HTTPSConnection):
        pass

    return GuardedHTTPConnection, GuardedHTTPSConnection


_ADAPTER: Any = None


def refused(error: BaseException) -> bool:
    """Whether a requests/urllib3 error (at any depth) is a ``DestinationRefused``."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if getattr(item, "refused", False) is True or isinstance(item, DestinationRefused):
            return True
        stack.extend([getattr(item, "reason", None), item.__cause__, item.__context__])
        stack.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
    return False


def read_bounded(response: requests.Response, limit: int = MAX_BODY) -> bytes:
    """At most ``limit`` bytes of a streamed answer (decoded); the rest is never read.

    A failure while reading is a ``requests.ConnectionError`` saying "aborted"
    (the request went out: its effect is uncertain), a stalled read a
    ``requests.ReadTimeout``, as when requests reads the body itself.
    """
    import requests

    try:
        return _read_answer(response.raw, limit)[0]
    except HttpFailure as e:
        error = requests.ReadTimeout if e.kind == "ReadTimeout" else requests.ConnectionError
        raise error(e.detail) from e.__cause__


def _read_answer(raw: Any, limit: int) -> tuple[bytes, bool]:
    """(at most ``limit`` decoded bytes of a urllib3 answer, whether it ended there).

    A failure while reading is an uncertain ``HttpFailure``: the request went out.
    """
    from urllib3.exceptions import HTTPError, ReadTimeoutError

    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = raw.read(min(8192, limit - size), decode_content=True)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
    except (HTTPError, OSError) as e:
        if isinstance(e, ReadTimeoutError | TimeoutError):
            raise HttpFailure("ReadTimeout", f"no answer in time: {e}", uncertain=True) from e
        detail = f"Connection aborted while reading the answer: {e}"
        raise HttpFailure("ConnectionError", detail, uncertain=True) from e
    return b"".join(chunks), False


class HttpFailure(Exception):
    """No usable answer. ``kind`` names the failure as requests does (ConnectionError,
    ConnectTimeout, ReadTimeout, SSLError, ProxyError), so stored errors read the same
    whichever channel sent; ``uncertain`` when the request may have been acted on."""

    def __init__(self, kind: str, detail: object, *, uncertain: bool) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = str(detail)
        self.uncertain = uncertain


def _failure(error: Exception) -> HttpFailure:
    """A urllib3 (or socket) error of a request made without retries, classified."""
    from urllib3 import exceptions as x

    if isinstance(error, x.NewConnectionError):  # before its base, ConnectTimeoutError
        return HttpFailure("ConnectionError", error, uncertain=False)
    if isinstance(error, x.ConnectTimeoutError):
        return HttpFailure("ConnectTimeout", error, uncertain=False)
    if isinstance(error, x.ReadTimeoutError | TimeoutError):
        return HttpFailure("ReadTimeout", error, uncertain=True)  # the request went out
    if isinstance(error, x.ProtocolError):  # "Connection aborted": broke after sending
        return HttpFailure("ConnectionError", error, uncertain=True)
    if isinstance(error, x.ProxyError | x.SSLError):
        return HttpFailure(type(error).__name__, error, uncertain=False)
    return HttpFailure("ConnectionError", error, uncertain=False)


class JsonClient:
    """POSTs a JSON body and reads a bounded answer, on urllib3 directly.

    The Telegram channel sends through it: a requests.Session costs about twice
    the CPU per send (request preparation, hooks, settings merged per call),
    which against a fast provider is dispatch's largest cost per reminder. What
    requests gave is kept: connections kept alive and shared by threads, the
    current ``Deadline`` watching every socket, no redirects followed, the
    operator's proxy and CA bundle (certifi's by default). Nothing is retried
    here: a retry is the run's decision.
    """

    def __init__(
        self,
        *,
        proxy: str | None = None,
        ca_bundle: str | None = None,
        pool_size: int = 10,
    ) -> None:
        import urllib3

        options: dict[str, Any] = {"maxsize": pool_size, "retries": False}
        if ca_bundle and os.path.isdir(ca_bundle):
            options["ca_cert_dir"] = ca_bundle
        else:
            import certifi

            options["ca_certs"] = ca_bundle or certifi.where()
        self._manager: Any = (
            urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        )
        # no address policy: the API URL is the operator's, not an end user's
        self._manager.pool_classes_by_scheme = guarded_pool_classes(None)
        self._timeout = urllib3.Timeout
        self._proxied = bool(proxy)
        self._routes: dict[str, tuple[Any, str]] = {}  # url → (its pool, request target)

    def post_json(
        self, url: str, body: dict[str, Any], *, connect_timeout: float, read_timeout: float
    ) -> tuple[int, bytes]:
        """(status, at most ``MAX_BODY`` bytes of the answer); ``HttpFailure`` otherwise."""
        from urllib3.exceptions import HTTPError

        data = json.dumps(body, allow_nan=False).encode()
        timeout = self._timeout(connect=connect_timeout, read=read_timeout)
        try:
            response = self._post(url, data, timeout)
        except (HTTPError, OSError) as e:
            raise _failure(e) from e
        complete = False
        try:
            content, complete = _read_answer(response, MAX_BODY)
        finally:
            if not complete:  # unread bytes would corrupt the connection's next answer
                response.close()
            response.release_conn()
        return response.status, content

    def _post(self, url: str, data: bytes, timeout: Any) -> Any:
        """POST through the URL's pool directly, or through the manager when proxied.

        The manager parses the URL and looks its pool up on every request: ~5 % of
        dispatch's CPU per reminder against a fast provider. A proxy needs its
        headers and, for http, the absolute URL: the manager does that.
        """
        options: dict[str, Any] = {
            "body": data,
            "headers": _JSON_HEADERS,
            "timeout": timeout,
            "redirect": False,
            "retries": False,
            "preload_content": False,
        }
        if self._proxied:
            return self._manager.request("POST", url, **options)
        route = self._routes.get(url)
        if route is None:
            from urllib3.util import parse_url

            route = self._routes[url] = (
                self._manager.connection_from_url(url),
                parse_url(url).request_uri,
            )
        pool, target = route
        return pool.urlopen("POST", target, assert_same_host=False, **options)

    def close(self) -> None:
        for pool, _ in self._routes.values():  # the manager forgets pools, GC closes them
            pool.close()
        self._routes.clear()
        self._manager.clear()

    def __enter__(self) -> JsonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_JSON_HEADERS = {"Content-Type": "application/json", "User-Agent": "notifyctl"}
