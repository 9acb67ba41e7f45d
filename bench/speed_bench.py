"""Speed to lead: from a webhook's acknowledgement to its entry reaching the emulator, beside a synchronous forwarder.

Leads are posted at a steady rate (1 lead/s from one sender, 100 leads/s from 16 senders), then as
fast as 16 senders can (a burst: the batching shows in the addPhones column), to our app under
gunicorn, delivering to an in-process Aimylogic emulator that stamps the moment each phone first
arrives in an addPhones body. Speed to lead is that moment minus the moment the client read
the webhook's answer. The naive forwarder (a bare Flask endpoint calling addPhones before it
answers, same gunicorn settings) is the floor: its entries arrive before its answer, so its
figures are negative.

    .venv/bin/python -m bench.speed_bench [--slow-leads N] [--fast-leads N] [--burst-leads N] [--quick] [--lambda]

With --lambda the same leads also go through the Lambda path, last: API events through Zappa's
handler in this process, the store in DynamoDB at moto's server (in its own process), and the asynchronous delivery task
started through boto3 at a local Invoke API that runs it at once in a thread (on AWS another
instance would run it, after its own start-up). Leads whose entry has not arrived within 30 s were
left to the scheduled sweep (every minute on AWS, none in the bench).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.burst_bench import add_phones_requests, emulator_with_memoised_zone_check
from bench.common import (
    REQUEST_TIMEOUT,
    ROOT,
    SECRET,
    TOKEN,
    WEBHOOK_PATH,
    Gunicorn,
    app_env,
    machine,
    percentile,
    print_table,
    stop_on_sigterm,
    verdict,
    warm_up,
    write_mapping,
)
from tests.emulators.base import LocalServer

TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0
DELIVERY_WAIT = 30.0  # seconds after the last answer for every entry to arrive


def lead_body(index: int, run: str) -> bytes:
    """A lead whose mobile maps to the entry phone 7912<index>, so the emulator's stamp finds its lead."""
    return f'{{"id": "{run}-{index}", "phone": "+7 912 {index:07d}", "name": "Иван"}}'.encode()


def entry_phone(index: int) -> str:
    """The phone Aimylogic receives for lead `index`."""
    return f"7912{index:07d}"


def stamping_emulator() -> object:
    """An emulator that records, per phone, the perf_counter() moment its first addPhones request arrived."""
    base = emulator_with_memoised_zone_check()

    class Stamping(base):
        def reset(self) -> None:
            super().reset()
            self.arrived: dict[str, float] = {}

        def _add_phones(self, request, *args):
            now = time.perf_counter()
            try:
                phones = [str(entry.get("phone")) for entry in request.get_json(force=True, silent=True) or []]
            except AttributeError:  # not an array of objects: the emulator answers 400 itself
                phones = []
            with self._lock:
                for phone in phones:
                    self.arrived.setdefault(phone, now)
            return super()._add_phones(request, *args)

    return Stamping(token=TOKEN)


@dataclass
class Run:
    """One paced run: when each lead was acknowledged, and what the emulator saw."""

    posted: int = 0  # leads the run posted
    acks: dict[int, float] = field(default_factory=dict)  # lead index -> perf_counter() after the answer
    statuses: dict[int, int] = field(default_factory=dict)
    speeds_ms: list[float] = field(default_factory=list)
    missing: int = 0  # acknowledged leads whose entry never arrived
    requests: int = 0  # addPhones requests during the run

    def p(self, share: float) -> float:
        """Speed-to-lead percentile in ms."""
        return percentile(self.speeds_ms, share)


def http_sender(port: int, run: str) -> Callable[[int], int | None]:
    """POST lead `index` over one keep-alive connection per sending thread; its status, None on a failure."""
    local = threading.local()
    headers = {"Content-Type": "application/json"}

    def send(index: int) -> int | None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            local.conn.request("POST", WEBHOOK_PATH, body=lead_body(index, run), headers=headers)
            response = local.conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            local.conn.close()
            return None
        return response.status

    return send


def paced(indexes: list[int], rate: float, senders: int, send: Callable[[int], int | None]) -> Run:
    """Send lead i at start + i/rate (rate 0: at once) from `senders` threads; record each acknowledgement."""
    result = Run(posted=len(indexes))
    lock = threading.Lock()
    queue = iter(enumerate(indexes))
    start = time.perf_counter() + 0.2

    def work() -> None:
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            number, index = item
            if rate:  # 0: as fast as the senders can
                time.sleep(max(0.0, start + number / rate - time.perf_counter()))
            status = send(index)
            acked = time.perf_counter()
            if status is None:
                continue
            with lock:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 202:
                    result.acks[index] = acked

    threads = [threading.Thread(target=work, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(len(indexes) / (rate or 100) + REQUEST_TIMEOUT + 5)
    return result


def measure(emulator: object, indexes: list[int], rate: float, senders: int, send: Callable[[int], int | None]) -> Run:
    """One paced run against a warm server; waits for the entries, then computes the speeds."""
    requests_before = add_phones_requests(emulator)
    result = paced(indexes, rate, senders, send)
    deadline = time.monotonic() + DELIVERY_WAIT
    wanted = [entry_phone(index) for index in result.acks]
    while time.monotonic() < deadline and not all(phone in emulator.arrived for phone in wanted):
        time.sleep(0.05)
    for index, acked in result.acks.items():
        arrived = emulator.arrived.get(entry_phone(index))
        if arrived is None:
            result.missing += 1
        else:
            result.speeds_ms.append((arrived - acked) * 1000)
    result.requests = add_phones_requests(emulator) - requests_before
    return result


def run_server(label: str, app: str, env_of: object, workdir: Path, levels: list[tuple[str, float, int, int]],
               offset: int) -> tuple[dict[str, Run], str]:
    """Start one server delivering to a fresh stamping emulator and run every level against it."""
    results = {}
    with stamping_emulator() as emulator:
        run_dir = workdir / label
        run_dir.mkdir()
        with Gunicorn(app, env_of(run_dir, emulator), workdir / f"{label}.log") as server:
            warm_up(server.port, count=30)
            time.sleep(1.0)  # the warm-up's deliveries are over before measuring
            start = offset
            for name, rate, senders, count in levels:
                indexes = list(range(start, start + count))
                start += count
                results[name] = measure(emulator, indexes, rate, senders, http_sender(server.port, f"{label}-{name}"))
            return results, server.describe()


def lambda_invoke_api(handler: Callable[[dict, object], object], context: object) -> LocalServer:
    """Lambda's Invoke API on 127.0.0.1 that runs each asynchronous invocation at once, in a thread of its own.

    Here the delivery task runs in this process, beside the webhook invocations: on AWS it would run in
    another instance, after the invocation's own start-up.
    """
    from werkzeug.wrappers import Request, Response

    @Request.application
    def invoke(request: Request) -> Response:
        payload = json.loads(request.get_data())
        task = threading.Thread(target=handler, args=(payload, context), daemon=True)
        task.start()
        server.tasks.append(task)
        return Response(b"", status=202)

    server = LocalServer(invoke)
    server.tasks = []  # the started delivery tasks, joined before the store goes away
    return server


@contextlib.contextmanager
def moto_process() -> object:
    """moto's server (one request at a time, as in the tests) in a process of its own: DynamoDB is another
    service, so it must not share this process's interpreter lock with the function it serves."""
    serve = ("import sys; from tests.servers import moto_server\n"
             "with moto_server() as url:\n    print(url, flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", serve], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        yield child.stdout.readline().strip()
    finally:
        child.stdin.close()  # its end of input stops it
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def run_lambda(workdir: Path, levels: list[tuple[str, float, int, int]], offset: int) -> tuple[dict[str, Run], str]:
    """Webhook events through Zappa's handler in this process: the store in DynamoDB (moto's server), the
    kick through boto3 to a local Invoke API that runs Zappa's task message through the same handler."""
    import boto3
    import zappa.asynchronous
    from zappa.cli import ZappaCLI
    from zappa.handler import LambdaHandler

    from crm2calls.aws import create_table
    from tests.test_lambda_handler import FUNCTION, STAGE, Context, http_event

    settings = workdir / "zappa"
    (settings / "module").mkdir(parents=True)
    (settings / "zappa_settings.json").write_text((ROOT / "zappa_settings.json").read_text())
    cwd = Path.cwd()
    os.chdir(settings)  # Zappa scans the working directory for websocket handlers
    try:
        cli = ZappaCLI()
        cli.api_stage, cli.load_credentials = STAGE, False
        cli.load_settings("zappa_settings.json")
        (settings / "module" / "zappa_settings.py").write_text(cli.get_zappa_settings_string())
    finally:
        os.chdir(cwd)
    sys.path.insert(0, str(settings / "module"))
    results = {}
    with moto_process() as endpoint, stamping_emulator() as emulator:
        os.environ.update({
            "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "eu-central-1", "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_LAMBDA_FUNCTION_NAME": FUNCTION, "WEBHOOK_SECRET": SECRET,
            "AIMYLOGIC_TOKEN": TOKEN, "AIMYLOGIC_URL": emulator.url, "LEADS_CONFIG": str(write_mapping(settings)),
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        })
        os.environ.pop("DRY_RUN", None)
        create_table(f"crm2calls-{STAGE}-leads")
        with lambda_invoke_api(LambdaHandler.lambda_handler, Context()) as invoke_api:
            zappa.asynchronous.LAMBDA_CLIENT = boto3.client("lambda", endpoint_url=invoke_api.url)

            def sender(run: str) -> Callable[[int], int | None]:
                def send(index: int) -> int | None:
                    event = http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}",
                                       lead_body(index, run))
                    return int(LambdaHandler.lambda_handler(event, Context())["statusCode"])

                return send

            sender("warm")(offset - 1)  # the cold start, and the first kick
            time.sleep(2.0)
            start = offset
            for name, rate, senders, count in levels:
                indexes = list(range(start, start + count))
                start += count
                results[name] = measure(emulator, indexes, rate, senders, sender(f"lambda-{name}"))
            for task in invoke_api.tasks:
                task.join(60)
    return results, (f"Zappa's handler in this process, stage {STAGE}, DynamoDB at moto's server in its own process, "
                     "async task in a thread")


def main(argv: list[str] | None = None) -> int:
    """Run ours, then the naive forwarder, at each rate; print both side by side; always exits 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-leads", type=int, default=20, help="leads at 1 lead/s, 1 sender (default 20)")
    parser.add_argument("--fast-leads", type=int, default=1000, help="leads at 100 leads/s, 16 senders (default 1000)")
    parser.add_argument("--burst-leads", type=int, default=1000,
                        help="leads as fast as 16 senders can (default 1000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 leads at 1/s, 200 at 100/s, 200 at once")
    parser.add_argument("--lambda", dest="on_lambda", action="store_true",
                        help="also the Lambda path, at the two steady rates (at most 200 leads at 100/s)")
    parser.add_argument("--lambda-rate", type=float, default=5.0,
                        help="with --lambda, also this rate from 4 senders (default 5 leads/s: below what this "
                             "process can serve as a Lambda fleet, so the row shows delivery, not a queue)")
    args = parser.parse_args(argv)
    slow, fast, burst = (5, 200, 200) if args.quick else (
        max(args.slow_leads, 1), max(args.fast_leads, 1), max(args.burst_leads, 1))
    levels = [("1 lead/s, 1 sender", 1.0, 1, slow), ("100 leads/s, 16 senders", 100.0, 16, fast),
              ("burst, 16 senders", 0.0, 16, burst)]

    def ours_env(run_dir: Path, emulator: object) -> dict[str, str]:
        return app_env(run_dir, aimylogic_url=emulator.url, token=TOKEN)

    def naive_env(run_dir: Path, emulator: object) -> dict[str, str]:
        return {"NAIVE_ADDPHONES_URL": f"{emulator.url}/api/calls/campaign/{TOKEN}/addPhones"}

    print(f"machine: {machine()}", flush=True)
    stop_on_sigterm()
    runs: dict[str, dict[str, Run]] = {}
    with tempfile.TemporaryDirectory(prefix="crm2calls-speed-") as tmp:
        workdir = Path(tmp)
        for offset, (label, app, env_of) in enumerate(
            [("ours", "app:app", ours_env), ("naive", "bench.common:make_naive_app()", naive_env)]
        ):
            runs[label], described = run_server(label, app, env_of, workdir, levels, offset * 1_000_000)
            print(f"{label}: {described}", flush=True)
        if args.on_lambda:  # last: Zappa's handler changes this process's environment and logging
            steady = [(name, rate, senders, min(count, 200)) for name, rate, senders, count in levels if rate]
            if args.lambda_rate:
                steady.append((f"{args.lambda_rate:g} leads/s, 4 senders", args.lambda_rate, 4,
                               max(10, int(20 * args.lambda_rate))))
            runs["lambda"], described = run_lambda(workdir, steady, 2_000_000)
            print(f"lambda: {described}", flush=True)
    extra = [level for level in (steady if args.on_lambda else []) if level[0] not in {name for name, *_ in levels}]
    report(runs, levels + extra)
    return 0


def report(runs: dict[str, dict[str, Run]], levels: list[tuple[str, float, int, int]]) -> None:
    """The table and the targets."""
    print("\nspeed to lead: from the client reading the webhook's 202 to the emulator receiving the entry "
          "(negative: the entry arrived before the answer)")
    rows = []
    for name, *_ in levels:
        for label, results in runs.items():
            if name not in results:
                continue
            run = results[name]
            status = " ".join(f"{code}:{n}" for code, n in sorted(run.statuses.items())) or "-"
            rows.append([label, name, f"{len(run.acks)}/{run.posted}", f"{run.p(0.5):.1f}", f"{run.p(0.99):.1f}",
                         f"{max(run.speeds_ms, default=0.0):.1f}", run.missing, run.requests, status])
    print_table(["server", "load", "acked", "p50 ms", "p99 ms", "max ms", "not arrived", "addPhones", "statuses"],
                rows)
    print("\ntargets (ours; the burst has none: there each round waits for the one before, to fill batches):")
    for name, rate, *_ in levels:
        if not rate or name not in runs["ours"]:
            continue
        run = runs["ours"][name]
        ok = run.p(0.5) <= TARGET_P50_MS and run.p(0.99) <= TARGET_P99_MS and not run.missing
        print(f"  {verdict(ok)}  {name}: p50 <= {TARGET_P50_MS:.0f} ms and p99 <= {TARGET_P99_MS:.0f} ms, "
              f"every entry arrived ({run.p(0.5):.1f} / {run.p(0.99):.1f} ms, {run.missing} missing)")


if __name__ == "__main__":
    raise SystemExit(main())
