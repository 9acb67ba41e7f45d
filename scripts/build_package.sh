#!/usr/bin/env bash
# Build the Lambda zip of one stage offline: `zappa package`, run from a clean build venv
# (requirements.txt + Zappa only) on a staged copy of the app, with bytecode that stays valid on Lambda.
#
#   scripts/build_package.sh [STAGE]      -> build/crm2calls-STAGE.zip
#
# Also builds build/lambda-runtime: boto3 alone, standing in for what the Lambda runtime provides
# after /var/task on sys.path (scripts/check_package.py and bench/cold_start.py import from it).
set -euo pipefail

STAGE="${1:-dev}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$ROOT/build"
PYTHON="${PYTHON:-python3}"
VENV="$BUILD/venv"
RUNTIME="$BUILD/lambda-runtime"
STAGED="$BUILD/stage/$STAGE"
ZIP="$BUILD/crm2calls-$STAGE.zip"
# What ships from the repository; everything else (tests, docs, bench, tools) never enters the stage.
APP_FILES=(app.py leads.toml zappa_settings.json crm2calls schemas)

cd "$ROOT"
runtime="$("$PYTHON" -c 'import json; print(json.load(open("zappa_settings.json"))["base"]["runtime"])')"
have="python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$have" != "$runtime" ]; then
    echo "build_package: $PYTHON is $have but zappa_settings.json says $runtime; set PYTHON=${runtime}" >&2
    exit 2
fi
zappa_pin="$(grep -E '^zappa==' requirements-dev.txt)"
boto_pin="$(grep -E '^boto3==' requirements.txt)"

# 1. The build venv, rebuilt only when the requirements or the interpreter change. Its bytecode is
#    compiled as in step 3 (pip's own .pyc files would be timestamp-checked, hence stale on Lambda).
site="$VENV/lib/$runtime/site-packages"
want="$(cat requirements.txt; echo "$zappa_pin"; "$PYTHON" -VV)"
if [ ! -f "$VENV/.built-from" ] || [ "$(cat "$VENV/.built-from")" != "$want" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --quiet --no-compile -r requirements.txt "$zappa_pin"
    "$VENV/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$site" >/dev/null
    printf '%s' "$want" > "$VENV/.built-from"
fi
if [ ! -f "$RUNTIME/.built-from" ] || [ "$(cat "$RUNTIME/.built-from")" != "$boto_pin" ]; then
    rm -rf "$RUNTIME"
    "$VENV/bin/pip" install --quiet --quiet --target "$RUNTIME" "$boto_pin"
    printf '%s' "$boto_pin" > "$RUNTIME/.built-from"
fi

# 2. A staged copy of the app: bytecode is compiled there, never in the working tree.
rm -rf "$STAGED"
mkdir -p "$STAGED"
cp -R "${APP_FILES[@]}" "$STAGED/"
find "$STAGED" -name __pycache__ -type d -prune -exec rm -rf {} +

# 3. Zip entries carry 1980 timestamps, so timestamp-checked .pyc files never match their source on
#    Lambda and every cold start would recompile everything (/var/task is read-only: nothing is cached).
#    unchecked-hash .pyc files are used as they are; the package is immutable, so they cannot go stale.
"$VENV/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$STAGED" >/dev/null

# 4. `zappa package` needs no AWS credentials (it skips loading them) and no network: the region
#    comes from zappa_settings.json and use_precompiled_packages is false. VIRTUAL_ENV tells Zappa
#    which site-packages to ship (without it Zappa asks pyenv).
rm -f "$ZIP"
(
    cd "$STAGED"
    VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/zappa" package "$STAGE" -o "$ZIP"
)

# 5. Zappa adds handler.py, zappa_settings.py and a few empty __init__.py files after step 3;
#    compile those in the zip too (handler.py alone takes ~25 ms to compile at every cold start).
"$VENV/bin/python" - "$ZIP" <<'PY'
import importlib.util, os, py_compile, sys, tempfile, zipfile

with zipfile.ZipFile(sys.argv[1], "a", zipfile.ZIP_DEFLATED) as archive, tempfile.TemporaryDirectory() as tmp:
    names = set(archive.namelist())
    for name in sorted(names):
        if not name.endswith(".py") or "__pycache__" in name:
            continue
        cached = importlib.util.cache_from_source(name)
        if cached in names:
            continue
        source, target = os.path.join(tmp, "source.py"), os.path.join(tmp, "compiled.pyc")
        with open(source, "wb") as fh:
            fh.write(archive.read(name))
        mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
        py_compile.compile(source, target, dfile=name, doraise=True, invalidation_mode=mode)
        info = zipfile.ZipInfo(cached)
        info.external_attr = 0o644 << 16
        with open(target, "rb") as fh:
            archive.writestr(info, fh.read(), zipfile.ZIP_DEFLATED)
PY
