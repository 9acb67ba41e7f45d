"""What every CRM API stand-in shares: a real local server, a log of hits, scripted failures, slowness."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from werkzeug.wrappers import Request, Response

from tests.emulators.base import LocalServer


@dataclass
class Hit:
    """One request as the stand-in saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int | None = None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    return Response(json.dumps(body, ensure_ascii=False), status=status, headers=headers,
                    content_type="application/json; charset=utf-8")


def retry_after_header(seconds: int | None) -> dict[str, str]:
    """{"Retry-After": seconds}, or no header for None."""
    return {"Retry-After": str(seconds)} if seconds is not None else {}


class StandIn:
    """A CRM API on 127.0.0.1; subclasses implement handle() and may log their own kind of hit. A context manager."""

    def __init__(self) -> None:
        self.hits: list[Any] = []  # what hit() returns, one per request
        self.delay = 0.0  # seconds every answer waits (a slow CRM)
        self._script: deque[Callable[[], Response]] = deque()
        self._lost_answers: deque[int] = deque()  # statuses that replace answers of handled requests
        self.down_status: int | None = None  # while set, every request is answered with it (an outage)
        self._lock = threading.Lock()
        self._server = LocalServer(self._app)

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        """Base URL to configure as the CRM's API base."""
        return self._server.url

    def fail_next(self, status: int, *, times: int = 1, retry_after: int | None = None) -> None:
        """Answer the next `times` requests with `status` (and Retry-After) before looking at them."""
        headers = retry_after_header(retry_after)
        self.script_next(lambda: json_response({"error": f"scripted {status}"}, status, headers), times)

    def script_next(self, answer: Callable[[], Response], times: int = 1) -> None:
        """Answer the next `times` requests with answer() before looking at them."""
        with self._lock:
            self._script.extend([answer] * times)

    def lose_next_answers(self, status: int = 504, times: int = 1) -> None:
        """Handle the next `times` requests (a write is recorded) but answer `status`: the CRM wrote, we never heard."""
        with self._lock:
            self._lost_answers.extend([status] * times)

    def paths(self) -> list[str]:
        """The paths hit so far, in order."""
        return [hit.path for hit in self.hits]

    def hit(self, request: Request) -> Any:
        """What hits records of a request; it needs a `status` attribute, set once answered."""
        return Hit(request.method, request.path, request.args.to_dict(flat=False), dict(request.headers),
                   request.get_data())

    @Request.application
    def _app(self, request: Request) -> Response:
        hit = self.hit(request)
        with self._lock:
            self.hits.append(hit)
            scripted = self._script.popleft() if self._script else None
        if self.delay:
            time.sleep(self.delay)
        if scripted is None and self.down_status is not None:
            scripted = lambda: json_response({"error": "down"}, self.down_status)  # noqa: E731
        response = scripted() if scripted is not None else self.handle(request)
        if scripted is None:
            with self._lock:
                lost = self._lost_answers.popleft() if self._lost_answers else None
            if lost is not None:
                response = json_response({"error": f"answer lost ({lost})"}, lost)
        hit.status = response.status_code
        return response

    def handle(self, request: Request) -> Response:
        """Answer one request."""
        raise NotImplementedError
