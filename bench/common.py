"""What the benchmarks share: realistic leads, a bench mapping file, gunicorn children, a load generator, baselines.

Everything talks to 127.0.0.1 only; every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-webhook-secret-0123456789abcdef"
TOKEN = "8231.7056.1b131df1"
WEBHOOK_PATH = f"/webhooks/generic?key={SECRET}"
REQUEST_TIMEOUT = 60.0  # seconds the load generator waits for one answer

# The bench's own mapping file: every day, no guards, delivery sized by the bench.
MAPPING = """\
[calls]
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
hours = {{ default = ["10:00-20:00"], sat = ["11:00-17:00"], sun = ["11:00-17:00"] }}
retry_interval_minutes = 60
max_call_attempts = 3
call_within_hours = 72
default_zone = "Europe/Moscow"
phone_preference = ["mobile", "primary", "any"]
duplicate_window_hours = 24
safe_hours = "09:00-21:00"

[delivery]
batch_size = {batch_size}
concurrency = {concurrency}

[guards]  # all off: the bench measures throughput, not the spend caps
calls_per_minute = 0
calls_per_day = 0
per_number_per_day = 0
per_number_per_week = 0
per_number_per_month = 0

[zones.cities]
"Москва" = "Europe/Moscow"
"Санкт-Петербург" = "Europe/Moscow"
"Екатеринбург" = "Asia/Yekaterinburg"
"Новосибирск" = "Asia/Novosibirsk"
"Владивосток" = "Asia/Vladivostok"

[sources.generic]
region = "RU"

[sources.generic.fields]
id = "id"
phones = ["phone"]
name = "name"
zone = "timezone"
city = "city"
"""


def write_mapping(directory: Path, batch_size: int = 250, concurrency: int = 4) -> Path:
    """Write the bench mapping file into `directory` and return its path."""
    path = directory / "bench-leads.toml"
    path.write_text(MAPPING.format(batch_size=batch_size, concurrency=concurrency), encoding="utf-8")
    return path


# Realistic leads: what managers and landing pages type, Russian mobiles and landlines.

_MOBILE_CODES = ("912", "916", "921", "926", "903", "985", "999", "950")
_MOBILE_FORMATS = (
    "+7 {a} {b}-{c}-{d}",
    "8{a}{b}{c}{d}",
    "8 ({a}) {b}-{c}-{d}",
    "{a}{b}{c}{d}",  # ten digits, no trunk prefix
    "+7{a}{b}{c}{d}",
    "7 {a} {b}{c}{d}",
)
# Area code, a city the lead may name, and the first subscriber digit that makes the number valid.
_LANDLINES = (("495", "Москва", "1"), ("812", "Санкт-Петербург", "3"), ("343", "Екатеринбург", "2"),
              ("383", "Новосибирск", "2"), ("423", "Владивосток", "2"))
_LANDLINE_FORMATS = ("+7 ({a}) {b}-{c}-{d}", "8 ({a}) {b}-{c}-{d}", "8-{a}-{b}-{c}-{d} доб. 12")
_CITIES = (None, None, "Москва", "Екатеринбург", "Новосибирск", "Владивосток", "Санкт-Петербург", "Казань")
_ZONES = (None, None, None, None, None, "Asia/Yekaterinburg", "+03:00", "Europe/Samara")
_NAMES = ("Иван Петров", "Ольга", "Pavel", "Анна-Мария Сидорова", "Дмитрий", None)
_COMMENTS = ("", "Перезвоните после обеда", "Интересует тариф «Бизнес»", "callback please")


def lead_body(index: int, run: str = "bench") -> dict[str, Any]:
    """Lead number `index` as a landing page or CRM posts it; its phone is unique within a run."""
    subscriber = f"{(index * 7919) % 9_000_000 + 1_000_000:07d}"  # a bijection for index < 9,000,000
    if index % 5 == 4:  # one lead in five gives a landline
        code, city, first = _LANDLINES[(index // 5) % len(_LANDLINES)]
        # Six digits after the fixed first one: a bijection again, for index < 25,000,000.
        subscriber = first + f"{(index // 25 * 7919) % 1_000_000:06d}"
        template = _LANDLINE_FORMATS[index % len(_LANDLINE_FORMATS)]
        phone = template.format(a=code, b=subscriber[:3], c=subscriber[3:5], d=subscriber[5:])
    else:
        code = _MOBILE_CODES[index % len(_MOBILE_CODES)]
        template = _MOBILE_FORMATS[index % len(_MOBILE_FORMATS)]
        phone = template.format(a=code, b=subscriber[:3], c=subscriber[3:5], d=subscriber[5:])
        city = _CITIES[index % len(_CITIES)]
    lead: dict[str, Any] = {"id": f"{run}-{index}", "phone": phone}
    if name := _NAMES[index % len(_NAMES)]:
        lead["name"] = name
    if city and index % 3:  # a third of the leads with a city still leave it out
        lead["city"] = city
    if zone := _ZONES[index % len(_ZONES)]:
        lead["timezone"] = zone
    lead["source"] = "landing"
    lead["utm_source"] = ("yandex", "vk", "google")[index % 3]
    if comment := _COMMENTS[index % len(_COMMENTS)]:
        lead["comment"] = comment
    return lead


def lead_bodies(count: int, run: str = "bench", start: int = 0) -> list[bytes]:
    """Request bodies of leads start..start+count-1, one lead each; disjoint ranges never share a phone."""
    return [json.dumps(lead_body(i, run), ensure_ascii=False).encode() for i in range(start, start + count)]


def machine() -> str:
    """CPUs and load average, printed with every run: figures from a busy machine say so."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.1f} (1 min) {five:.1f} (5 min), Python {sys.version.split()[0]}"


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `with` blocks stop the servers as Ctrl-C does."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


# Figures.


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of `values` (share in 0..1); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ratio(ours: float, baseline: float) -> str:
    """ours / baseline as "0.52x", or "-" when the baseline is zero."""
    return f"{ours / baseline:.2f}x" if baseline else "-"


def verdict(ok: bool) -> str:
    """PASS or FAIL, for the target lines."""
    return "PASS" if ok else "FAIL"


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table on stdout."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for number, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if number == 0:
            print("  ".join("-" * w for w in widths))


# The load generator: threads, one keep-alive connection each, a fixed count and a time cap.


@dataclass
class LoadResult:
    """What one load run measured."""

    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connection failures
    timed_out: bool = False  # the time cap stopped the run before every body was sent

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def p(self, share: float) -> float:
        """Latency percentile in milliseconds."""
        return percentile(self.latencies, share) * 1000

    def status_text(self) -> str:
        """ "202:3000" or "202:2990 503:10 conn-errors:1"."""
        parts = [f"{code}:{count}" for code, count in sorted(self.statuses.items())]
        if self.errors:
            parts.append(f"conn-errors:{self.errors}")
        return " ".join(parts) or "-"


def post_all(port: int, bodies: list[bytes], concurrency: int, time_cap: float, path: str = WEBHOOK_PATH) -> LoadResult:
    """POST every body to 127.0.0.1:port at `concurrency` requests in flight; stop at time_cap seconds."""
    result = LoadResult()
    lock = threading.Lock()
    indexes = iter(range(len(bodies)))
    start = time.perf_counter()
    deadline = start + time_cap
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}

    def next_index() -> int | None:
        with lock:
            index = next(indexes, None)
            if index is not None and time.perf_counter() >= deadline:
                result.timed_out = True
                return None
            return index

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        latencies, statuses, errors = [], {}, 0
        try:
            while (index := next_index()) is not None:
                began = time.perf_counter()
                try:
                    conn.request("POST", path, body=bodies[index], headers=headers)
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    errors += 1
                    conn.close()  # reconnects on the next request
                    continue
                latencies.append(time.perf_counter() - began)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.will_close:
                    conn.close()
        finally:
            conn.close()
            with lock:
                result.latencies.extend(latencies)
                result.errors += errors
                for code, count in statuses.items():
                    result.statuses[code] = result.statuses.get(code, 0) + count

    threads = [threading.Thread(target=run, name=f"load-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(time_cap + REQUEST_TIMEOUT + 5)  # a request in flight at the cap may take its whole timeout
    result.elapsed = time.perf_counter() - start
    return result


# gunicorn children.


def free_port() -> int:
    """A port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_settings() -> tuple[int, int]:
    """(workers, threads) as gunicorn.conf.py sets them, so baselines run under the same settings."""
    values: dict[str, Any] = {}
    exec(compile((ROOT / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), values)  # noqa: S102
    return int(values["workers"]), int(values["threads"])


class Gunicorn:
    """A gunicorn master started by the bench and always stopped by it (use as a context manager).

    app: "app:app" runs with gunicorn.conf.py (its delivery worker included); anything else, such as
    "bench.common:make_bare_app()", runs with the same workers and threads given as flags.
    """

    def __init__(self, app: str, env: dict[str, str], log_path: Path):
        self.app = app
        self.port = free_port()
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.workers, self.threads = gunicorn_settings()
        self.baseline_conf = log_path.parent / "baseline.gunicorn.conf.py"

    def command(self) -> list[str]:
        """The exact command line (printed by the benches)."""
        base = [sys.executable, "-m", "gunicorn"]
        if self.app == "app:app":
            return [*base, "-c", "gunicorn.conf.py", "app:app"]
        # An explicit config, else gunicorn would pick up ./gunicorn.conf.py and its delivery hook.
        return [*base, "-c", str(self.baseline_conf), "--bind", f"127.0.0.1:{self.port}", "--workers",
                str(self.workers), "--threads", str(self.threads), self.app]

    def describe(self) -> str:
        """The command line as one would type it, with the settings it means."""
        return (f"gunicorn {' '.join(self.command()[3:]).replace(str(self.baseline_conf.parent), '$WORKDIR')}  "
                f"({self.workers} workers x {self.threads} threads, gthread, 127.0.0.1:{self.port})")

    def __enter__(self) -> Gunicorn:
        self.baseline_conf.write_text('accesslog = None\nerrorlog = "-"\n')
        self.log = open(self.log_path, "ab")  # closed in __exit__
        # Its own session: Ctrl-C reaches the bench only, and the bench stops gunicorn in order.
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready(timeout=30.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: workers finish their requests
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group we created: gunicorn and its workers
                self.process.wait(5)
        self.log.close()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
            if len(self.worker_pids()) >= self.workers and self._healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not become ready in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        """The last lines gunicorn and the app wrote."""
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        """The master's child processes (its workers), from /proc."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:  # field 4: the parent pid
                pids.append(int(entry.name))
        return sorted(pids)

    def worker_rss_mb(self) -> list[float]:
        """Resident memory of each worker in MiB (VmRSS from /proc/<pid>/status)."""
        sizes = []
        for pid in self.worker_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        return sizes


def app_env(workdir: Path, *, aimylogic_url: str | None = None, token: str | None = None,
            batch_size: int = 250, concurrency: int = 4) -> dict[str, str]:
    """The environment for `app:app`: its own store and mapping file in workdir; a dry run (asked) without a token."""
    return {
        "WEBHOOK_SECRET": SECRET,
        "LEADS_STORE": f"sqlite:///{workdir / 'leads.db'}",  # workdir is absolute: sqlite:////abs/path.db
        "LEADS_CONFIG": str(write_mapping(workdir, batch_size, concurrency)),
        "AIMYLOGIC_URL": aimylogic_url or "https://app.aimylogic.com",
        "AIMYLOGIC_TOKEN": token or "",
        "DRY_RUN": "0" if token else "1",  # a serving process without a token must be told it is a dry run
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
    }


WARM_UP_START = 8_000_000  # lead numbers (and so phones) of warm-up leads: apart from any measured range


def warm_up(port: int, count: int = 100) -> LoadResult:
    """A few requests so that imports, connections and caches are in place before measuring."""
    return post_all(port, lead_bodies(count, run="warmup", start=WARM_UP_START), concurrency=4, time_cap=30)


# Baselines, served by gunicorn under the same settings as the app (`bench.common:make_bare_app()`).


def make_bare_app() -> Flask:
    """A Flask app whose webhook reads the body and answers 202: the floor of Flask under gunicorn."""
    from flask import Flask, request

    app = Flask("bare")

    @app.post("/webhooks/generic")
    def receive() -> tuple[dict, int]:
        request.get_data()
        return {"accepted": True}, 202

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def make_naive_app() -> Flask:
    """A naive forwarder: each webhook calls addPhones synchronously with its one lead (NAIVE_ADDPHONES_URL)."""
    import requests
    from flask import Flask, request

    url = os.environ["NAIVE_ADDPHONES_URL"]
    local = threading.local()
    app = Flask("naive")

    @app.post("/webhooks/generic")
    def receive() -> tuple[dict, int]:
        lead = json.loads(request.get_data())
        digits = "".join(ch for ch in lead["phone"].split("доб")[0] if ch.isdigit())
        digits = "7" + digits[1:] if len(digits) == 11 and digits[0] == "8" else digits
        digits = "7" + digits if len(digits) == 10 else digits
        if not hasattr(local, "session"):
            local.session = requests.Session()
        answer = local.session.post(url, json=[{"phone": digits}], timeout=30)
        return {"sent": answer.ok}, 202 if answer.ok else 502

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app
