"""A WSGI app served on 127.0.0.1 in a thread: the base of every local stand-in."""

from __future__ import annotations

import threading

from werkzeug.serving import make_server


class LocalServer:
    """Serve `wsgi_app` on a free loopback port for the duration of a `with` block."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> LocalServer:
        """Start serving in a daemon thread."""
        self._server = make_server("127.0.0.1", 0, self.wsgi_app, threaded=True)
        # A short poll interval: shutdown() waits up to one interval, and tests stop servers often.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
