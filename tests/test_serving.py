"""Starting and serving as a newcomer does: one message for a bad start, no `flask run` trap, readable answers."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crm2calls.logs import JsonFormatter
from tests.conftest import FIXTURES, ROOT, SECRET

BIN = Path(sys.executable).parent
FORM = "application/x-www-form-urlencoded"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "HOST": "127.0.0.1", "PORT": str(free_port()),
            "LEADS_STORE": f"sqlite:///{tmp_path / 'leads.db'}", **values}  # fmt: skip


@pytest.mark.parametrize(
    ("env", "problems"),
    [
        ({}, ["WEBHOOK_SECRET: required to serve webhooks"]),
        (
            {"WEBHOOK_SECRET": "s3cret", "LEADS_CONFIG": str(FIXTURES / "config" / "unknown_region.toml")},
            ["unknown_region.toml: sources.generic.region: 'XX'", "unknown_region.toml: sources.generic.fields"],
        ),
    ],
)
def test_gunicorn_checks_the_configuration_once_and_prints_only_the_problems(tmp_path, env, problems):
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"],
        cwd=ROOT, env=base_env(tmp_path, **env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, output
    assert "Traceback" not in result.stderr and "Booting worker" not in result.stderr
    # gunicorn's own "Starting gunicorn" line, then our message alone: the header and one line per problem
    assert "Starting gunicorn" in output[0] and output[1] == "The configuration has problems:", output
    assert all(line.startswith("  - ") for line in output[2:]) and len(output) < 8, output
    for expected in problems:
        assert any(expected in line for line in output[2:]), output


def test_gunicorn_with_a_bad_port_names_it_instead_of_a_traceback(tmp_path):
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"],
        cwd=ROOT, env={**base_env(tmp_path, WEBHOOK_SECRET="s3cret"), "PORT": "x"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "PORT: Not a valid integer" in result.stderr


def test_flask_run_refuses_and_points_at_serve(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "run"],
        cwd=ROOT, env=base_env(tmp_path, WEBHOOK_SECRET="s3cret"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Running on" not in result.stderr
    assert "flask --app app serve" in result.stderr and "delivery worker" in result.stderr


def test_the_other_commands_still_load_the_app(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "routes"],
        cwd=ROOT, env=base_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "/webhooks/<source_name>" in result.stdout


@pytest.mark.parametrize(
    ("source", "content_type"),
    [("generic", FORM), ("generic", None), ("zoho", FORM), ("hubspot", FORM), ("close", None)],
)
def test_json_sent_as_a_form_is_told_to_send_the_json_content_type(client, source, content_type):
    body = b'{"id": "43", "phone": "8 (912) 345-67-89"}'  # what `curl -d` sends, Content-Type and all
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(f"/webhooks/{source}?key={SECRET}", data=body, headers=headers)
    assert response.status_code == 415
    answer = response.get_json()
    assert "send the header Content-Type: application/json" in answer["message"]
    assert answer["field"] == "Content-Type"


def test_a_real_form_is_still_a_form(client):
    body = (FIXTURES / "generic" / "one_lead.form").read_bytes()
    response = client.post(f"/webhooks/generic?key={SECRET}", data=body, content_type=FORM)
    assert response.status_code == 202, response.get_json()


def test_a_source_that_takes_only_forms_is_not_told_to_send_json(client):
    response = client.post(f"/webhooks/amocrm?key={SECRET}", data=b'{"leads": []}', content_type=FORM)
    assert "application/json" not in response.get_json().get("message", "")


def test_preview_answers_text_as_it_is(client):
    body = (FIXTURES / "amocrm" / "contacts_add.form").read_bytes()
    response = client.post(f"/preview/amocrm?key={SECRET}", data=body, content_type=FORM)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    text = response.get_data().decode("utf-8")
    assert "Анна Смирнова" in text and "\\u0410" not in text
    assert json.loads(text)["addPhones"][0]["payload"]["name"] == "Анна Смирнова"


def test_colour_codes_never_reach_the_json_log():
    record = logging.LogRecord(
        "werkzeug", logging.INFO, __file__, 1, "\x1b[33mPress CTRL+C to quit\x1b[0m", None, None
    )
    line = JsonFormatter().format(record)
    assert json.loads(line)["message"] == "Press CTRL+C to quit"
    assert "\\u001b" not in line and "\x1b" not in line


def test_serve_logs_werkzeugs_lines_without_colour_codes(tmp_path):
    env = {**base_env(tmp_path), "TERM": "xterm-256color", "FORCE_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "serve", "--dev"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if "CTRL+C" in line or len(lines) > 50:
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
    werkzeug = [json.loads(line) for line in lines if line.startswith("{") and '"werkzeug"' in line]
    assert werkzeug, lines
    assert all("\x1b" not in entry["message"] for entry in werkzeug), werkzeug
    assert os.linesep.join(lines).count("\\u001b") == 0
