"""Cold start of the packaged Lambda handler: our app against a bare Flask app packaged the same way.

Each round is a fresh process started from the unpacked zip (build/crm2calls-dev.zip, `make package`)
with nothing on sys.path but the zip and build/lambda-runtime (boto3 alone, as the Lambda runtime
adds it after /var/task). It times `import handler` (Zappa's handler imports boto3 itself: the floor)
and the first request served, which builds the app. The bare app is the same unpacked zip with
zappa_settings.APP_MODULE pointing at a Flask app that reads the body and answers 202: same
handler, same libraries, same bytecode.

Scenarios:
  unauthorised  POST /webhooks/generic with a wrong key: no I/O, both apps answer from memory.
                Our figure against the bare app's is the target (within 1.3x).
  webhook       a valid webhook stored in DynamoDB (moto's server on 127.0.0.1) and the
                asynchronous delivery pass kicked (moto answers the invocation): ours only; what a
                CRM waits for on a cold start (amoCRM gives up after 2 s).

    .venv/bin/python -m bench.cold_start [--rounds N] [--zip build/crm2calls-dev.zip] [--no-store]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import py_compile
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from bench.common import ROOT, SECRET, machine, print_table, ratio, verdict

RUNTIME = ROOT / "build" / "lambda-runtime"
TARGET = 1.3
TABLE = "crm2calls-dev-leads"  # the dev stage's LEADS_STORE in zappa_settings.json
# Modules a request that does not need them should not import (checked per scenario).
HEAVY = (
    "phonenumbers", "requests", "zappa.asynchronous", "crm2calls.mapping", "crm2calls.delivery",
    "crm2calls.sources.hubspot", "crm2calls.sources.amocrm", "crm2calls.sources.bitrix24", "schemas.phone_entry",
    "apispec", "defusedxml", "marshmallow", "environs", "prometheus_client",
)

BARE_APP = '''"""A bare Flask app: the floor of a Flask app behind Zappa's handler."""

from flask import Flask, request

app = Flask("bare")


@app.post("/webhooks/generic")
def receive():
    request.get_data()
    return {"accepted": True}, 202
'''

CHILD = r"""
import json, sys, time
began = time.perf_counter()
sys.path[:0] = [TASK, RUNTIME]
import handler
imported = time.perf_counter()
response = handler.lambda_handler(EVENT, None)
served = time.perf_counter()
print(json.dumps({
    "import_ms": (imported - began) * 1000, "first_ms": (served - imported) * 1000,
    "status": response["statusCode"], "modules": len(sys.modules),
    "heavy": [name for name in HEAVY if name in sys.modules],
}))
"""


def webhook_event(query: str, body: dict) -> dict:
    """A function URL event: POST /webhooks/generic."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": "/webhooks/generic", "rawQueryString": query,
        "headers": {"host": "x7kq2m4n5p6r8s9t0v1w3y4z5a.lambda-url.eu-central-1.on.aws",
                    "content-type": "application/json", "x-forwarded-proto": "https"},
        "requestContext": {"http": {"method": "POST", "path": "/webhooks/generic", "sourceIp": "203.0.113.7"},
                           "stage": "$default"},
        "body": json.dumps(body, ensure_ascii=False), "isBase64Encoded": False,
    }


def unpack(zip_path: Path, workdir: Path) -> tuple[Path, Path]:
    """Our unpacked package, and a copy whose app is the bare one (compiled as the build compiles)."""
    ours, bare = workdir / "ours", workdir / "bare"
    for target in (ours, bare):
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(target)
    (bare / "bare_app.py").write_text(BARE_APP)
    settings = bare / "zappa_settings.py"
    settings.write_text(re.sub(r"(?m)^APP_MODULE=.*$", "APP_MODULE='bare_app'", settings.read_text()))
    for source in (bare / "bare_app.py", settings):
        py_compile.compile(str(source), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH, doraise=True)
    return ours, bare


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """What the Lambda runtime sets, plus the secrets the function's configuration holds."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_FUNCTION_NAME": "crm2calls-dev",
        "AWS_REGION": "eu-central-1",
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "WEBHOOK_SECRET": SECRET,
        "DRY_RUN": "1",  # nothing to call: the cold start is what is measured
        **extra,
    }


def run_once(task: Path, event: dict, env: dict[str, str], importtime: bool = False) -> dict:
    """One cold start in a fresh process: -I -S keeps every site-packages but the zip's off sys.path."""
    code = f"TASK = {str(task)!r}\nRUNTIME = {str(RUNTIME)!r}\nEVENT = {event!r}\nHEAVY = {HEAVY!r}\n" + CHILD
    flags = ["-X", "importtime"] if importtime else []
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-I", "-S", "-c", code], cwd=task, env=env, capture_output=True, text=True,
        timeout=120,
    )
    wall = (time.perf_counter() - began) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"cold start failed in {task}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["total_ms"] = result["import_ms"] + result["first_ms"]
    result["process_ms"] = wall  # with interpreter start-up, the same for both
    result["importtime"] = done.stderr if importtime else ""
    return result


def slowest_imports(importtime: str, count: int = 14) -> list[list[str]]:
    """Top-level imports by cumulative time, from -X importtime output."""
    rows = []
    for line in importtime.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\S.*)$", line)  # depth 0: no indent
        if match:
            rows.append((int(match[2]), int(match[1]), match[3]))
    rows.sort(reverse=True)
    return [[name, f"{cumulative / 1000:.1f}", f"{own / 1000:.1f}"] for cumulative, own, name in rows[:count]]


def summarise(results: list[dict]) -> dict[str, float]:
    """Median and best of each figure (noise on a shared machine only ever adds time)."""
    out = {}
    for key in ("import_ms", "first_ms", "total_ms", "process_ms"):
        values = [r[key] for r in results]
        out[key] = statistics.median(values)
        out[key.replace("_ms", "_best")] = min(values)
    return out


def with_store(rounds: int, ours: Path) -> list[dict]:
    """The valid-webhook scenario: moto's server for DynamoDB and the Lambda invoke, the table made first."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        extra = {"AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        os.environ.update(child_env(extra))  # for create_table in this process
        from crm2calls.aws import create_table

        create_table(TABLE)
        results = []
        for n in range(rounds):
            lead = {"id": f"cold-{n}", "phone": f"+7 912 345-{n // 100 % 100:02d}-{n % 100:02d}", "name": "Анна"}
            results.append(run_once(ours, webhook_event(f"key={SECRET}", lead), child_env(extra)))
            if results[-1]["status"] != 202:
                raise RuntimeError(f"the webhook answered {results[-1]['status']}")
        return results
    finally:
        server.stop()


def main() -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="fresh processes per variant (default 9)")
    parser.add_argument("--zip", type=Path, default=ROOT / "build" / "crm2calls-dev.zip")
    parser.add_argument("--no-store", action="store_true", help="skip the valid-webhook scenario (moto)")
    args = parser.parse_args()
    if not args.zip.is_file() or not RUNTIME.is_dir():
        sys.exit(f"{args.zip} or {RUNTIME} is missing: run `make package` first")

    print(f"cold start of {args.zip.relative_to(ROOT)} ({args.zip.stat().st_size / 2**20:.1f} MiB); {machine()}")
    unauthorised = webhook_event("key=wrong", {"id": "cold", "phone": "+7 912 345-67-89"})
    env = child_env({})
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        ours_dir, bare_dir = unpack(args.zip, Path(tmp))
        ours, bare = [], []
        for _ in range(args.rounds):  # alternate, so drift in the machine's load hits both alike
            ours.append(run_once(ours_dir, unauthorised, env))
            bare.append(run_once(bare_dir, unauthorised, env))
        assert {r["status"] for r in ours} == {401} and {r["status"] for r in bare} == {202}
        traced = run_once(ours_dir, unauthorised, env, importtime=True)
        stored = [] if args.no_store else with_store(args.rounds, ours_dir)

    o, b = summarise(ours), summarise(bare)
    print(f"\n{args.rounds} fresh processes each; milliseconds, median (best)")
    rows = [
        ["bare Flask, same package", *[f"{b[k + '_ms']:.0f} ({b[k + '_best']:.0f})" for k in ("import", "first",
                                                                                            "total", "process")],
         bare[0]["modules"]],
        ["crm2calls, unauthorised webhook", *[f"{o[k + '_ms']:.0f} ({o[k + '_best']:.0f})" for k in
                                              ("import", "first", "total", "process")], ours[0]["modules"]],
    ]
    if stored:
        s = summarise(stored)
        rows.append(["crm2calls, valid webhook stored", *[f"{s[k + '_ms']:.0f} ({s[k + '_best']:.0f})" for k in
                                                          ("import", "first", "total", "process")],
                     stored[0]["modules"]])
    print_table(["variant", "import handler", "first request", "import+first", "whole process", "modules"], rows)
    measured = o["total_ms"] / b["total_ms"]
    print(f"\nimport + first request, ours / bare: {ratio(o['total_ms'], b['total_ms'])} median, "
          f"{ratio(o['total_best'], b['total_best'])} best; target within {TARGET}x: {verdict(measured <= TARGET)}")
    print(f"heavy modules loaded by the unauthorised webhook: {', '.join(ours[0]['heavy']) or 'none'}")
    if stored:
        print(f"heavy modules loaded by a valid webhook: {', '.join(stored[0]['heavy']) or 'none'}")
    print("\nslowest top-level imports on the unauthorised path (-X importtime, one run; ms)")
    print_table(["module", "cumulative", "own"], slowest_imports(traced["importtime"]))


if __name__ == "__main__":
    main()
