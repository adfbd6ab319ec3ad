"""``tidemq top``: a live terminal view of a server's rates and lag, through its HTTP API.

It reads the server at ``URL`` (its HTTP port, ``tidemq serve --http-port``) every
``--interval`` seconds: ``GET /metrics`` (the counters and gauges of every topic and group the
user may see, one request whatever their number), ``GET /api/v1/stats`` (version, uptime,
connections, storage, disk, fsync p99) and ``GET /api/v1/topics`` (the topic names). Rates are the counters' differences between two reads
divided by the time between them, so the first frame of a live view has none yet; ``--once``
reads twice, ``--interval`` apart, prints one frame and exits (scripts, tests).

Nothing here needs the binary port: the global ``--url`` is not used. Credentials: a token
(``--token``, else ``$TIDEMQ_TOKEN``: ``Authorization: Bearer``), or ``USER:PASSWORD@`` in the
URL (Basic), or a client certificate (``--tls-cert``/``--tls-key``, when the server verifies
client certificates with ``--tls-client-ca``).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ._common import UsageError, positive_float
from ._output import error

__all__ = ["register", "Sample", "read_sample", "render", "DEFAULT_HTTP_URL"]

DEFAULT_HTTP_URL = "http://127.0.0.1:7680"
TIMEOUT = 10.0  # seconds per HTTP request

_EPILOG = f"""\
examples:
  tidemq top                                  the server's HTTP API at {DEFAULT_HTTP_URL}
  tidemq top http://mq.internal:7680 --token "$TOKEN"
  tidemq top https://ops:secret@mq:7680 --tls-ca ca.pem
  tidemq top --once --interval 1              one frame (rates over 1 s), then exit

Columns: PUBLISH/S (the topic's messages stored per second), DELIVER/S (the group's
deliveries per second), LAG (messages not done), LAG AGE (age of the oldest not done),
IN FLIGHT (leased now), DEAD/S (dead-lettered per second). Ctrl-C quits.
"""

GroupKey = tuple[str, str]


@dataclass
class Sample:
    """One read of the server: counters and gauges from /metrics, and /api/v1/stats."""

    at: float  # time.monotonic() of the read
    stats: dict[str, Any]
    topics: list[str] = field(default_factory=list)  # every topic the user may see
    published: dict[str, float] = field(default_factory=dict)  # topic -> total
    delivered: dict[GroupKey, float] = field(default_factory=dict)
    dead: dict[GroupKey, float] = field(default_factory=dict)  # all reasons
    lag: dict[GroupKey, float] = field(default_factory=dict)
    lag_seconds: dict[GroupKey, float] = field(default_factory=dict)
    inflight: dict[GroupKey, float] = field(default_factory=dict)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("top", help="live view of rates and lag (through the HTTP API)",
                       description="A live view of a server's publish and deliver rates and "
                                   "each group's lag, read from its HTTP API (--http-port).",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("http_url", nargs="?", metavar="URL",
                   default=os.environ.get("TIDEMQ_HTTP_URL") or DEFAULT_HTTP_URL,
                   help="the server's HTTP API: http[s]://[USER:PASSWORD@]HOST:PORT (default: "
                        f"$TIDEMQ_HTTP_URL, else {DEFAULT_HTTP_URL})")
    p.add_argument("--interval", type=positive_float, default=2.0, metavar="SECONDS",
                   help="seconds between reads (default 2)")
    p.add_argument("--once", action="store_true",
                   help="read twice, --interval apart, print one frame and exit")
    p.add_argument("--topic", action="append", metavar="TOPIC",
                   help="show only this topic (repeat for more)")
    p.add_argument("--token", metavar="TOKEN",
                   help="log in with this token (default: $TIDEMQ_TOKEN)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's "
                   "certificate (https://)")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="client certificate (mTLS: logs in as the user it names)")
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert")
    p.set_defaults(func=_run)


class _Conn:
    """GETs against the server's HTTP API with the credentials given."""

    def __init__(self, args: argparse.Namespace) -> None:
        parts = urllib.parse.urlsplit(args.http_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"URL must be http://HOST:PORT or https://HOST:PORT, got "
                             f"{_redact(args.http_url)!r}", "tidemq top")
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        self.base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        self.shown = self.base
        self.headers = {"Accept": "application/json"}
        token = args.token or os.environ.get("TIDEMQ_TOKEN")
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            raw = f"{user}:{password}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        elif token:
            if parts.scheme != "https" and not _loopback(parts.hostname):
                raise UsageError("a token is sent only over https:// or to a loopback address "
                                 "(in plain text anyone on the path could copy it)",
                                 "tidemq top")
            self.headers["Authorization"] = "Bearer " + token
        self.context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.context = ssl.create_default_context(cafile=args.tls_ca)
            if args.tls_cert:
                self.context.load_cert_chain(args.tls_cert, args.tls_key)
        elif args.tls_cert or args.tls_ca:
            raise UsageError("--tls-ca and --tls-cert need an https:// URL", "tidemq top")

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(self.base + path, headers=self.headers)
        with urllib.request.urlopen(req, timeout=TIMEOUT, context=self.context) as r:
            data: bytes = r.read()
        return data


def read_sample(conn: _Conn) -> Sample:
    """Read /api/v1/stats and /metrics once."""
    from prometheus_client.parser import text_string_to_metric_families

    stats = json.loads(conn.get("/api/v1/stats"))
    listed = json.loads(conn.get("/api/v1/topics"))
    text = conn.get("/metrics").decode()
    s = Sample(time.monotonic(), stats, [t["name"] for t in listed.get("topics", [])])
    for fam in text_string_to_metric_families(text):
        for m in fam.samples:
            labels = m.labels
            topic = labels.get("topic", "")
            key = (topic, labels.get("group", ""))
            if m.name == "tidemq_messages_published_total":
                s.published[topic] = s.published.get(topic, 0.0) + m.value
            elif m.name == "tidemq_messages_delivered_total":
                s.delivered[key] = m.value
            elif m.name == "tidemq_messages_dead_lettered_total":
                s.dead[key] = s.dead.get(key, 0.0) + m.value
            elif m.name == "tidemq_group_lag_messages":
                s.lag[key] = m.value
            elif m.name == "tidemq_group_lag_seconds":
                s.lag_seconds[key] = m.value
            elif m.name == "tidemq_group_inflight_messages":
                s.inflight[key] = m.value
    return s


def _rate(now: dict[Any, float], before: dict[Any, float] | None, key: Any,
          dt: float) -> float | None:
    if before is None or dt <= 0:
        return None
    # A counter that went down: the server restarted; count from zero.
    cur, prev = now.get(key, 0.0), before.get(key, 0.0)
    return max(0.0, cur - (prev if prev <= cur else 0.0)) / dt


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def _age(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _bytes(n: float | None) -> str:
    if n is None:
        return "—"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.1f} {units[i]}" if i else f"{n:.0f} B"


def render(now: Sample, before: Sample | None, where: str,
           topics: list[str] | None = None) -> Any:
    """The frame for ``now`` (rates against ``before``, if any), as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    st = now.stats
    dt = now.at - before.at if before is not None else 0.0
    last = st["samples"][-1] if st.get("samples") else None
    conns = ", ".join(f"{k} {v}" for k, v in sorted(st.get("connections", {}).items())) or "—"
    fsync = st.get("fsync_p99_seconds")
    head = Text.assemble(
        ("tidemq top ", "bold"), f"{where}  v{st.get('version', '?')}  up "
        f"{_age(st.get('uptime_seconds'))}\n",
        f"publish {_num(last['published_per_s'] if last else None, 1)}/s  "
        f"deliver {_num(last['delivered_per_s'] if last else None, 1)}/s  "
        f"ack {_num(last['acked_per_s'] if last else None, 1)}/s  (server, last sample)\n",
        f"topics {st.get('topics', 0)}  groups {st.get('groups', 0)}  connections {conns}  "
        f"storage {_bytes(st.get('storage_bytes'))}  disk free "
        f"{_bytes(st.get('disk_free_bytes'))}  fsync p99 "
        f"{'—' if fsync is None else _age(fsync)}")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("TOPIC", "left"), ("GROUP", "left"), ("PUBLISH/S", "right"),
                          ("DELIVER/S", "right"), ("LAG", "right"), ("LAG AGE", "right"),
                          ("IN FLIGHT", "right"), ("DEAD/S", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    names = sorted(set(now.topics) | set(now.published) | {t for t, _ in now.lag})
    if topics:
        names = [t for t in names if t in topics]
    groups = sorted(now.lag)
    for t in names:
        pub = _num(_rate(now.published, before.published if before else None, t, dt), 1)
        mine = [k for k in groups if k[0] == t]
        if not mine:
            table.add_row(t, "—", pub, "", "", "", "", "")
        b = before
        for k in mine:  # the topic on every row: a frame stays greppable
            table.add_row(
                t, k[1], pub,
                _num(_rate(now.delivered, b.delivered if b else None, k, dt), 1),
                _num(now.lag.get(k)), _age(now.lag_seconds.get(k)),
                _num(now.inflight.get(k)),
                _num(_rate(now.dead, b.dead if b else None, k, dt), 1))
    if not names:
        table.add_row("(no topics)", "", "", "", "", "", "", "")
    return Group(head, Text(""), table)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    conn = _Conn(args)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    try:
        before = read_sample(conn)
        if args.once:
            time.sleep(args.interval)
            console.print(render(read_sample(conn), before, conn.shown, args.topic))
            return 0
        with Live(render(before, None, conn.shown, args.topic), console=console,
                  auto_refresh=False, transient=False) as live:
            while True:
                time.sleep(args.interval)
                now = read_sample(conn)
                live.update(render(now, before, conn.shown, args.topic), refresh=True)
                before = now
    except KeyboardInterrupt:
        return 0
    except urllib.error.HTTPError as exc:
        error(f"{conn.shown}: {_problem(exc)}")
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        error(f"cannot read {conn.shown}: {reason} (is 'tidemq serve --http-port' running "
              "there?)")
        return 3


def _problem(exc: urllib.error.HTTPError) -> str:
    """The problem+json detail of an HTTP error, else its status line."""
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"HTTP {exc.code} {detail or exc.reason}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
