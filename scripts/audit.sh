#!/usr/bin/env bash
# Audit the pinned runtime dependencies (and what they pull in) against PyPI's vulnerability data.
#
#   scripts/audit.sh [requirements.txt]
#
# Exit 0: no known vulnerability, or the database could not be reached ("audit skipped: database
# unreachable": a network error is not a finding). Exit 1: vulnerabilities found. Exit 2: the audit
# failed for another reason (read its output).
#
# pip-audit alone cannot tell these apart: it exits 1 for findings, for network errors and for
# crashes, and it reports "No known vulnerabilities found" when every lookup answered 404. So the
# database is probed first, and the verdict is read from pip-audit's JSON report, never its exit code.
set -uo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS=${1:-requirements.txt}
PYTHON=${PYTHON:-.venv/bin/python}
PIP_AUDIT=${PIP_AUDIT:-.venv/bin/pip-audit}
PROBE_URL=${AUDIT_PROBE_URL:-https://pypi.org/pypi/pip/json}  # the JSON API pip-audit's "pypi" service reads

skipped() {
    echo "audit skipped: database unreachable ($1)"
    exit 0
}

probe_error=$("$PYTHON" - "$PROBE_URL" <<'EOF'
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=15) as response:
        response.read(1)
except Exception as exc:  # any failure to get an answer: DNS, refused, TLS, timeout, HTTP error
    print(f"{type(exc).__name__}: {exc}")
EOF
)
[ -z "$probe_error" ] || skipped "$PROBE_URL: $probe_error"

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
"$PIP_AUDIT" -r "$REQUIREMENTS" --format json --output "$workdir/report.json" --progress-spinner off \
    --timeout 30 >"$workdir/out.txt" 2>&1
status=$?

if [ ! -s "$workdir/report.json" ]; then
    # No report: the audit did not finish. A connection failure is not a finding; anything else is an error.
    if grep -qE "ConnectionError|ConnectTimeout|Could not connect|Max retries exceeded|NameResolution|Temporary failure in name resolution|Network is unreachable|timed out|network may be blocking" "$workdir/out.txt"; then
        skipped "the connection failed during the audit: $(grep -m1 -E 'Error|timed out' "$workdir/out.txt")"
    fi
    cat "$workdir/out.txt"
    echo "audit failed: pip-audit exited $status without a report"
    exit 2
fi

"$PYTHON" - "$workdir/report.json" <<'EOF'
import json
import sys

report = json.load(open(sys.argv[1]))
deps = report["dependencies"]
unknown = [d for d in deps if "skip_reason" in d]
audited = [d for d in deps if "skip_reason" not in d]
if deps and not audited:
    print(
        "audit skipped: database unreachable (PyPI's JSON API had no entry for any of the "
        f"{len(deps)} resolved dependencies; first: {unknown[0]['skip_reason']})"
    )
    sys.exit(0)
if unknown:
    print("not audited (unknown to the database): " + ", ".join(d["name"] for d in unknown))
found = [(d, v) for d in audited for v in d["vulns"]]
for dep, vuln in found:
    fixes = ", ".join(vuln.get("fix_versions") or []) or "none yet"
    print(f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes}) {(vuln.get('description') or '')[:160]}")
if found:
    print(f"audit failed: {len(found)} known vulnerabilities in {len({d['name'] for d, _ in found})} dependencies")
    sys.exit(1)
print(f"audit passed: no known vulnerabilities in {len(audited)} dependencies")
EOF
