"""The Flask app. Zappa's app_function is `app.app`; gunicorn serves `app:app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import click
from flask import Flask

from crm2calls.config import Settings, load_settings
from crm2calls.errors import ConfigError
from crm2calls.logs import configure_logging
from crm2calls.services import Services


@dataclass
class AppState:
    """What the views and commands reach through app.extensions["crm2calls"]."""

    services: Services | None
    config_error: ConfigError | None = None
    factory: Callable[..., Flask] | None = None  # create_app, for `serve` (commands never import this module)


def refuse_flask_run() -> None:
    """`flask run` would serve without the delivery worker and the dev-mode key rules: point at `serve`."""
    from flask.cli import run_command

    context = click.get_current_context(silent=True)
    if context is not None and context.command is run_command:
        raise click.UsageError(
            "`flask run` serves without the delivery worker, so no lead would be sent: use "
            "`flask --app app serve` (`make run` for local development), or gunicorn on a server"
        )


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the app. Without settings, read the environment once and refuse to start when it is wrong.

    Under the Flask CLI a broken configuration does not stop the factory, so that
    `flask --app app config check` can report every problem.
    """
    refuse_flask_run()
    config_error = None
    if services is not None:
        settings = services.settings
    if settings is None:
        try:
            settings = load_settings(serving=click.get_current_context(silent=True) is None)
        except ConfigError as exc:
            if click.get_current_context(silent=True) is None:
                raise
            config_error = exc
    if settings is not None and services is None:
        services = Services(settings)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes if settings else 1024 * 1024
    app.json.sort_keys = False
    app.json.ensure_ascii = False  # UTF-8 answers: "Алексей" as the logs show it, not "\u0410..."
    app.extensions["crm2calls"] = AppState(services, config_error, create_app)
    configure_logging(settings.log_level if settings else "INFO")
    if settings is not None and settings.on_lambda:
        from crm2calls.lambda_tasks import attach

        attach(services)  # webhooks kick an async delivery pass; CloudWatch gets redacted lines only

    from crm2calls import cli, metrics, web

    metrics.configure(settings)  # EMF on Lambda, Prometheus with METRICS_TOKEN, else off
    app.register_blueprint(web.bp)
    web.register_error_handlers(app)
    web.register_request_log(app)
    web.register_metrics(app)
    cli.register(app)
    return app


app = create_app()
