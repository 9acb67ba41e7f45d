"""Check a Lambda zip built by scripts/build_package.sh; exit 1 naming every problem.

    python scripts/check_package.py build/crm2calls-dev.zip

Size within budget; the app, its schemas and leads.toml inside; no tests and no dev tools; the
generated zappa_settings.py says DEBUG=False and ships no secret; every module has bytecode that
stays valid on Lambda; native code runs on the python3.11 runtime (Amazon Linux 2, glibc 2.26);
and the handler, started from the unpacked zip in a fresh process, serves requests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "build" / "lambda-runtime"  # boto3 alone: what the Lambda runtime adds after /var/task
BUDGET = 8 * 1024 * 1024
REQUIRED = ["app.py", "handler.py", "zappa_settings.py", "leads.toml", "crm2calls/lambda_tasks.py"]
SHIPPED_TREES = ["crm2calls", "schemas"]  # every module of these must be in the zip
# Path components and top-level names that must never ship: tests, tooling, what the runtime provides.
FORBIDDEN_PARTS = {"tests", "bench", "docs", "scripts", ".venv", "build", "__MACOSX"}
FORBIDDEN_TOP = {
    "pytest", "_pytest", "hypothesis", "moto", "ruff", "schemathesis", "pip", "setuptools", "pkg_resources",
    "wheel", "boto3", "botocore", "s3transfer", "troposphere", "yaml", "gunicorn", "cfn_flip", "placebo",
    "geodata", "carrierdata", "prometheus_client",  # the server's metrics; Lambda writes EMF lines itself
}
FORBIDDEN_FILES = {"zappa/cli.py", "zappa/core.py", "phonenumbers/geocoder.py", "phonenumbers/carrier.py"}
SECRET_NAME = re.compile(r"(?i)(SECRET|TOKEN|PASSWORD|API_KEY|SIGNATURE_KEY|WEBHOOK_URL)")
MAX_GLIBC = (2, 26)  # Amazon Linux 2, the OS of the python3.11 runtime
ARCH = "x86_64"  # zappa_settings.json "architecture"
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked

SMOKE = r"""
import importlib, json, pkgutil, sys
import handler
import crm2calls
for module in pkgutil.walk_packages(crm2calls.__path__, "crm2calls."):
    importlib.import_module(module.name)
import phonenumbers
from phonenumbers import timezone
zones = timezone.time_zones_for_number(phonenumbers.parse("+74951234567"))
def event(method, path, query=""):
    return {
        "version": "2.0", "rawPath": path, "rawQueryString": query,
        "headers": {"host": "abc.lambda-url.eu-central-1.on.aws", "content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path, "sourceIp": "203.0.113.9"}},
        "body": "{}", "isBase64Encoded": False,
    }
missing = handler.lambda_handler(event("GET", "/no-such-page"), None)
unauthorised = handler.lambda_handler(event("POST", "/webhooks/generic", "key=wrong"), None)
print(json.dumps({"zones": list(zones), "statuses": [missing["statusCode"], unauthorised["statusCode"]],
                  "errors": [json.loads(missing["body"])["error"], json.loads(unauthorised["body"])["error"]]}))
"""


def check_contents(names: set[str], size: int) -> list[str]:
    """Size, required files, the app's modules, and nothing that must not ship."""
    problems = []
    if size > BUDGET:
        problems.append(f"size {size / 2**20:.1f} MiB is over the {BUDGET / 2**20:.0f} MiB budget")
    problems += [f"missing {name}" for name in REQUIRED if name not in names]
    for tree in SHIPPED_TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if "__pycache__" not in name and name not in names:
                problems.append(f"missing {name} (is it new? the build stages {', '.join(SHIPPED_TREES)})")
    if not any(name.startswith("schemas/") and name.endswith(".py") for name in names):
        problems.append("missing the schemas package")
    for name in sorted(names):
        parts = name.split("/")
        if FORBIDDEN_PARTS & set(parts[:-1]) or parts[0].split("-")[0] in FORBIDDEN_TOP or name in FORBIDDEN_FILES:
            problems.append(f"must not ship: {name}")
    return problems


def check_settings(source: str) -> list[str]:
    """The generated zappa_settings.py: no debug, a quiet log level, no secrets, a DynamoDB store."""
    settings: dict = {}
    exec(compile(source, "zappa_settings.py", "exec"), settings)  # noqa: S102 - our own build output
    problems = []
    if settings.get("DEBUG") is not False:
        problems.append(f"zappa_settings.py: DEBUG={settings.get('DEBUG')!r}; set \"debug\": false")
    if settings.get("LOG_LEVEL") not in ("INFO", "WARNING", "ERROR"):
        problems.append(f"zappa_settings.py: LOG_LEVEL={settings.get('LOG_LEVEL')!r} logs raw events; use INFO")
    env = settings.get("ENVIRONMENT_VARIABLES", {})
    for name in sorted(env):
        if SECRET_NAME.search(name):
            problems.append(f"zappa_settings.py: {name} ships inside the zip; set it on the function instead")
    if not str(env.get("LEADS_STORE", "")).startswith("dynamodb://"):
        problems.append("zappa_settings.py: LEADS_STORE must be dynamodb://TABLE on Lambda")
    return problems


def check_bytecode(archive: zipfile.ZipFile, names: set[str]) -> list[str]:
    """Each module has an unchecked-hash .pyc for this interpreter (timestamps break in a zip)."""
    problems = []
    for name in sorted(names):
        if not name.endswith(".py") or "__pycache__" in name:
            continue
        cached = importlib.util.cache_from_source(name)
        if cached not in names:
            problems.append(f"no bytecode for {name}")
            continue
        header = archive.read(cached)[:8]
        if header[:4] != importlib.util.MAGIC_NUMBER:
            problems.append(f"{cached} was compiled by another Python version")
        elif int.from_bytes(header[4:8], "little") != UNCHECKED_HASH:
            problems.append(f"{cached} is checked against its source: compile with --invalidation-mode unchecked-hash")
    return problems


def _glibc_ok(tag: str) -> bool:
    platform = tag.split("-")[-1]
    if platform == "any":
        return True
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    match = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014|manylinux_(\d+)_(\d+))_(\w+)", platform)
    if not match or match[4] != ARCH:
        return False
    glibc = legacy.get(match[1]) or (int(match[2]), int(match[3]))
    return glibc <= MAX_GLIBC


def check_native(archive: zipfile.ZipFile, names: set[str]) -> list[str]:
    """Every binary wheel shipped has a tag the runtime can load (arch and glibc)."""
    problems = []
    for name in sorted(n for n in names if n.endswith(".dist-info/WHEEL")):
        wheel = archive.read(name).decode()
        tags = re.findall(r"^Tag: (\S+)$", wheel, re.MULTILINE)
        if "Root-Is-Purelib: true" in wheel or not tags:
            continue
        if not any(_glibc_ok(tag) for tag in tags):
            problems.append(f"{name.split('/')[0]}: none of {tags} runs on {ARCH} with glibc {MAX_GLIBC}")
    return problems


def smoke(archive: zipfile.ZipFile) -> list[str]:
    """Unpack, then in a fresh process with only the zip and boto3 on sys.path, import and serve."""
    if not RUNTIME.is_dir():
        return [f"{RUNTIME} is missing: run scripts/build_package.sh"]
    with tempfile.TemporaryDirectory() as task:
        archive.extractall(task)
        code = f"import sys; sys.path[:0] = [{task!r}, {str(RUNTIME)!r}]\n" + SMOKE
        env = {
            "PATH": os.environ.get("PATH", ""),
            "AWS_LAMBDA_FUNCTION_NAME": "crm2calls-smoke",
            "AWS_DEFAULT_REGION": "eu-central-1",
            "WEBHOOK_SECRET": "smoke-test-secret-not-a-real-one",
            "DRY_RUN": "1",  # no campaign to call: the smoke run must not need a token
        }
        # -I -S: no site-packages of whatever venv runs this check, exactly the zip and the runtime's boto3
        run = subprocess.run(  # noqa: S603 - our interpreter, our code
            [sys.executable, "-I", "-S", "-c", code], cwd=task, env=env, capture_output=True, text=True, timeout=120
        )
    if run.returncode != 0:
        return [f"the handler did not start from the unpacked zip:\n{run.stderr[-3000:]}"]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    problems = []
    if result["statuses"] != [404, 401]:
        problems.append(f"smoke requests answered {result['statuses']} {result['errors']}, expected [404, 401]")
    if "Europe/Moscow" not in result["zones"]:
        problems.append(f"phonenumbers.timezone is broken in the zip: {result['zones']}")
    return problems


def main(path: str) -> int:
    """Run every check on the zip at `path`; print the problems."""
    zip_path = Path(path)
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        problems = check_contents(names, zip_path.stat().st_size)
        if "zappa_settings.py" in names:
            problems += check_settings(archive.read("zappa_settings.py").decode())
        problems += check_bytecode(archive, names)
        problems += check_native(archive, names)
        if not problems:
            problems += smoke(archive)
    if problems:
        print(f"{zip_path}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{zip_path}: OK, {zip_path.stat().st_size / 2**20:.1f} MiB, {len(names)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/crm2calls-dev.zip"))
