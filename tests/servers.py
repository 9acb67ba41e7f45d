"""Reusable local servers for tests: real HTTP on 127.0.0.1, a free port each.

Fixtures here are used by importing them into a test module (`from tests.servers import aws_env`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest


def _one_at_a_time(app: Callable[..., Any]) -> Callable[..., Any]:
    """A WSGI app that handles one request at a time (the whole response is built under the lock)."""
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    return serialized


@contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's AWS emulator (DynamoDB and friends) on 127.0.0.1; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    # moto checks a ConditionExpression and then writes, unlocked: two racing requests can both pass.
    # DynamoDB makes each conditional write atomic; one request at a time restores that guarantee.
    server._server.app = _one_at_a_time(server._server.app)
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session; tests keep apart by using their own table names."""
    with moto_server() as url:
        yield url


def point_boto3_at(patch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Set the environment so boto3 talks to `endpoint` with dummy credentials, whatever the machine's AWS setup."""
    patch.setenv("AWS_ENDPOINT_URL", endpoint)
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        patch.delenv(name, raising=False)


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at the moto server with dummy credentials; return the endpoint URL."""
    point_boto3_at(monkeypatch, moto_endpoint)
    return moto_endpoint
