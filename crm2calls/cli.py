"""Commands: `flask --app app config check`, `serve`, `dialer test`, `leads ...`."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from crm2calls import lifecycle
from crm2calls.config import MISSING_SHARED_KEY, Settings, check_configuration, is_loopback, load_settings
from crm2calls.errors import ConfigError, Crm2CallsError, UnusableLeadError
from crm2calls.lifecycle import JOB_STATUSES
from crm2calls.model import LeadRecord, Status
from crm2calls.policy import DEFAULT_CAMPAIGN, Policy, SourcePolicy
from crm2calls.services import Services
from crm2calls.stats import GROUPINGS, funnel

QUEUED = (Status.SENT, Status.CALLING)  # a job in Aimylogic that may still call (crm2calls/lifecycle.py QUEUED)

config_cli = AppGroup("config", help="Check the configuration.")
dialer_cli = AppGroup("dialer", help="Talk to Aimylogic directly.")
leads_cli = AppGroup("leads", help="Inspect and operate the lead store.")
crm_cli = AppGroup("crm", help="Jobs that talk to the CRMs (also scheduled on Lambda).")
aws_cli = AppGroup("aws", help="Set up the AWS side of a Lambda deployment.")


# `leads list --outcome`: a jobStatus, or the lead status it leads to.
OUTCOMES = [*JOB_STATUSES, *dict.fromkeys(status.value for status in JOB_STATUSES.values())]


def _state():
    return current_app.extensions["crm2calls"]


def _services() -> Services:
    state = _state()
    if state.services is None:
        _fail_config(state.config_error)
    return state.services


def _fail_config(error: ConfigError) -> None:
    click.secho("The configuration has problems:", fg="red", err=True)
    for problem in error.problems:
        click.echo(f"  - {problem}", err=True)
    sys.exit(2)


def parse_age(text: str, option: str = "--since") -> timedelta:
    """'30d', '12h', '90m' -> timedelta; a usage error names `option` otherwise."""
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number and a unit: 30d, 12h or 90m", param_hint=option)
    amount, unit = int(match[1]), match[2]
    return timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[unit]: amount})


def _secret_state(values: tuple[str, ...] | str | None) -> str:
    if not values:
        return "not set"
    if isinstance(values, tuple) and len(values) > 1:
        return f"set ({len(values)} values: current and previous)"
    return "set"


@config_cli.command("check")
@click.option("--dev", is_flag=True, help="Check as `make run` serves (serve --dev): no WEBHOOK_SECRET on loopback.")
def config_check(dev: bool) -> None:
    """Report every problem in the environment and leads.toml, then warnings, then the effective policy."""
    check = check_configuration(serving=True, dev_mode=dev)
    if check.problems:
        click.secho("The configuration has problems:", fg="red", err=True)
        for problem in check.problems:
            click.echo(f"  - {problem}", err=True)
    if check.warnings:
        click.secho("Warnings:", fg="yellow", err=True)
        for warning in check.warnings:
            click.echo(f"  - {warning}", err=True)
    if not check.problems:
        click.secho("Configuration OK.", fg="green")
    if check.settings is not None:
        click.echo(describe_environment(check.settings))
    if check.policy is not None:
        click.echo(describe_policy(check.policy))
    if check.settings is not None:
        click.echo(describe_write_back(check.settings))
    if check.problems:
        sys.exit(2)


def _cap(value: int, unit: str) -> str:
    return f"{value} {unit}" if value else f"any number {unit}"  # 0: no cap


def _window(source: SourcePolicy) -> str:
    w = source.window
    hours = "; ".join(f"{day} {', '.join(map(str, intervals))}" for day, intervals in w.hours.items())
    return (
        f"days {' '.join(w.days)}; hours {hours}; retry every {w.retry_interval_minutes} min, "
        f"{w.max_call_attempts} call attempts; call within {w.call_within_hours} h; "
        f"phones {' > '.join(source.phone_preference)}"
    )


def describe_environment(settings: Settings) -> str:
    """The settings from the environment, secrets shown only as set/not set."""
    secret = _secret_state(settings.webhook_secrets)
    if not settings.webhook_secrets and settings.dev_mode:
        secret += " (development mode: webhooks from this machine only)"
    return "\n".join([
        "Environment:",
        f"  Aimylogic: {settings.aimylogic_url}  token: {_secret_state(settings.aimylogic_token)}"
        + ("  (DRY RUN: entries are logged, not sent)" if settings.dry_run else ""),
        f"  WEBHOOK_SECRET: {secret}",
        f"  Store: {settings.leads_store}",
        f"  Mapping file: {settings.leads_config}",
        f"  Default phone region: {settings.default_region}",
        *(f"  Campaign {name}: {variable} {_secret_state(settings.campaign_tokens.get(name))}"
          for name, variable in sorted(settings.policy.campaigns.items())),
    ])  # fmt: skip


def _route(source: SourcePolicy) -> str:
    if source.campaign_by is None:
        return "" if source.campaign == DEFAULT_CAMPAIGN else f"; campaign {source.campaign}"
    route = source.campaign_by
    pairs = ", ".join(f"{value} -> {campaign}" for value, campaign in route.map.items())
    return f"; campaign by {route.field} ({pairs}; otherwise {route.default or source.campaign})"


def describe_policy(policy: Policy) -> str:
    """The mapping file as it is applied, in words."""
    d, g = policy.delivery, policy.guards
    lines = [
        "Policy:",
        f"  Default zone: {policy.default_zone}   safe hours: {policy.safe_hours}"
        f"{' (calls outside them allowed)' if policy.allow_outside_safe_hours else ''}   "
        f"duplicate window: {policy.duplicate_window_hours} h",
        f"  Delivery: batches of {d.batch_size}, {d.concurrency} at once; "
        f"gives up after {d.max_send_attempts} send attempts "
        f"or {d.max_age_hours} h; backoff {d.backoff_base_seconds:g}-{d.backoff_cap_seconds:g} s; "
        f"phone fetched from the CRM up to {d.enrich_max_attempts} times",
        f"  Guards: {_cap(g.calls_per_minute, 'a minute')}, {_cap(g.calls_per_day, 'a day')}; per number: "
        f"{_cap(g.per_number_per_day, 'a day')}, {_cap(g.per_number_per_week, 'a week')}, "
        f"{_cap(g.per_number_per_month, 'a month')}",
        f"  Cities mapped to zones: {len(policy.cities)}",
    ]
    common = _window(policy.defaults)
    lines.append(f"  Call window of every source: {common}")
    campaigns = [f"{name} ({policy.campaigns.get(name, 'AIMYLOGIC_TOKEN')})" for name in policy.campaign_names()]
    lines.append(f"  Campaigns: {', '.join(campaigns)}")
    lines.append("  Sources:")
    for source in policy.sources.values():
        own = _window(source)
        lines.append(
            f"    {source.name}: region {source.region}{_route(source)}"
            + (f"; own window: {own}" if own != common else "")
        )
    lines.append(f"    any other source: region {policy.defaults.region}")
    return "\n".join(lines)


def describe_write_back(settings: Settings) -> str:
    """Per source: whether call outcomes are written back, and what the CRM's token must be allowed."""
    from crm2calls.sources import SOURCES
    from crm2calls.sources.base import load_source
    from crm2calls.writeback import describe

    lines = ["Write-back of call outcomes ([sources.X.results]):"]
    for name in SOURCES:
        lines.append(f"  {name}: {describe(load_source(name, settings), settings.policy.source(name))}")
    return "\n".join(lines)


@click.command("serve")
@click.option("--host", default=None, help="Address to bind (default: HOST, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default: PORT, 5000).")
@click.option("--dev", is_flag=True, help="Local development: serve without WEBHOOK_SECRET, loopback only.")
def serve(host: str | None, port: int | None, dev: bool) -> None:
    """Serve webhooks with a background delivery worker (local use; production: gunicorn or Lambda)."""
    from werkzeug.serving import WSGIRequestHandler, run_simple

    from crm2calls.worker import start_workers

    try:
        settings = load_settings(serving=True, dev_mode=dev)
    except ConfigError as exc:
        _fail_config(exc)
    host, port = host or settings.host, port or settings.port
    if not settings.webhook_secrets:  # only --dev gets this far without one
        if not is_loopback(host):
            click.secho("--dev serves without WEBHOOK_SECRET only on a loopback HOST.", fg="red", err=True)
            _fail_config(ConfigError([MISSING_SHARED_KEY]))
        click.secho("Development mode: no WEBHOOK_SECRET, webhooks accepted from this machine only.", fg="yellow")

    services = Services(settings)
    app = _state().factory(services=services)
    if settings.dry_run:
        click.secho("DRY RUN: addPhones bodies are logged, not sent; leads end dry_run.", fg="yellow")

    class QuietHandler(WSGIRequestHandler):
        """Our own access log replaces this one, whose lines carry the query string (and the key)."""

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    workers = start_workers(services)
    try:
        click.echo(f"crm2calls listening on http://{host}:{port}")
        run_simple(host, port, app, threaded=True, request_handler=QuietHandler)
    finally:
        for worker in workers:
            worker.stop()


@dialer_cli.command("test")
@click.argument("phone")
@click.option("--payload", default="{}", help='JSON object passed to the bot, e.g. \'{"name": "Alex"}\'.')
@click.option("--campaign", default=DEFAULT_CAMPAIGN, show_default=True, help="The campaign to call through.")
def dialer_test(phone: str, payload: str, campaign: str) -> None:
    """Place ONE real test call through a campaign (checks its token and the campaign end to end)."""
    from crm2calls.aimylogic import AimylogicClient
    from crm2calls.phones import mask, normalize

    settings = _services().settings
    _known_campaign(settings, campaign)
    token = settings.campaign_token(campaign)
    if settings.dry_run or not token:
        raise click.UsageError(f"{settings.token_env(campaign)} is not set: there is no campaign to call through.")
    try:
        number = normalize(phone, settings.default_region)
    except UnusableLeadError as exc:
        raise click.ClickException(f"PHONE: {exc.reason}; give a number such as +79123456789") from None
    try:
        extra = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    if not isinstance(extra, dict):
        raise click.ClickException('--payload: give a JSON object of the bot\'s variables, e.g. \'{"name": "Alex"}\'')
    try:
        client = AimylogicClient(
            settings.aimylogic_url, token, campaign=campaign, token_env=settings.token_env(campaign)
        )
        job = client.test_call(number, extra)
    except Crm2CallsError as exc:
        click.secho(f"Test call to {mask(number)} failed: {exc}", fg="red", err=True)
        sys.exit(1)
    click.secho(f"Test call to {mask(number)} queued in campaign {campaign}: job {job}", fg="green")


@dialer_cli.command("status")
def dialer_status() -> None:
    """Each campaign: Aimylogic's status and counters, and what delivery does with its leads (exit 1 on a problem)."""
    from crm2calls import campaigns
    from crm2calls.aimylogic import AimylogicClient

    svc = _services()
    settings = svc.settings
    if settings.dry_run:
        raise click.UsageError("a dry run (DRY_RUN=1, or no AIMYLOGIC_TOKEN) has no campaign to ask")
    headers = ("campaign", "aimylogic", "delivery", "held", "name", "total", "processed", "in process", "retry")
    rows, notes, problem = [], [], False
    for name in settings.policy.campaign_names():
        state = campaigns.state(svc, name)
        token = settings.campaign_token(name)
        row = [name, "-", state.get("delivery", campaigns.SENDING), str(state.get("held", 0)), "-", "-", "-", "-", "-"]
        if not token:
            row[1], problem = "no token", True
            notes.append(f"{name}: {settings.token_env(name)} is not set")
        else:
            client = AimylogicClient(settings.aimylogic_url, token, campaign=name, token_env=settings.token_env(name))
            try:
                details = client.campaign_details()
            except Crm2CallsError as exc:
                row[1], problem = "unreachable", True
                notes.append(f"{name}: {exc}")
            else:
                report = details.get("shortReport") if isinstance(details.get("shortReport"), dict) else {}
                row[1], row[4] = str(details.get("status", "?")), str(details.get("name", "?"))[:24]
                keys = ("totalNumbers", "processedNumbers", "inProcessCalls", "retryCalls")
                row[5:] = [str(report.get(key, "-")) for key in keys]
                if row[1] in campaigns.CLOSED:
                    problem = True
                    notes.append(f"{name}: {row[1]} in Aimylogic: give it a new end date, or a new campaign's "
                                 f"token in {settings.token_env(name)}; its leads are held, not rejected")  # fmt: skip
                elif row[1] == "paused":
                    notes.append(f"{name}: paused in Aimylogic: its leads are held and go out when it runs again")
        if state.get("delivery") == campaigns.TOKEN_REFUSED:
            problem = True
            notes.append(f"{name}: {state.get('reason')}")
        rows.append(row)
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    click.echo("  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for note in notes:
        click.secho(f"  - {note}", fg="red" if problem else "yellow")
    if problem:
        sys.exit(1)


def _known_campaign(settings: Settings, campaign: str | None) -> None:
    if campaign is not None and campaign not in settings.policy.campaign_names():
        names = ", ".join(settings.policy.campaign_names())
        raise click.BadParameter(f"no campaign {campaign!r}; the campaigns are {names}", param_hint="--campaign")


@leads_cli.command("list")
@click.option("--status", type=click.Choice([s.value for s in Status]), default=None)
@click.option("--source", default=None)
@click.option("--since", default=None, help="Only leads newer than this age: 2h, 7d.")
@click.option("--limit", default=50, show_default=True)
@click.option("--campaign", default=None, help="Only leads of this campaign.")
@click.option("--outcome", type=click.Choice(OUTCOMES), default=None,
              help="Only leads whose call ended so: a jobStatus (noAnswer, ...) or called, not_reached, ...")
def leads_list(
    status: str | None, source: str | None, since: str | None, limit: int, campaign: str | None, outcome: str | None
) -> None:
    """A table of leads, newest first, phones masked."""
    svc = _services()
    _known_campaign(svc.settings, campaign)
    after = svc.clock() - parse_age(since) if since else None
    if outcome:  # the store has no outcome index: filter what the other options select
        found = svc.store.list(Status(status) if status else None, source, after, 1_000_000_000, campaign=campaign)
        matching_outcome = [r for r in found if _has_outcome(r, outcome)]
        records = matching_outcome[:limit]
    else:
        records = svc.store.list(Status(status) if status else None, source, after, limit, campaign=campaign)
    click.echo(
        f"{'id':24} {'created (UTC)':19} {'source':10} {'campaign':10} {'status':9} {'att':>3} {'phone':15} last error"
    )
    for r in records:
        error = " ".join((r.last_error or "").split())  # in full: its end says what to fix
        click.echo(
            f"{r.id:24} {r.created_at:%Y-%m-%d %H:%M:%S} {r.source[:10]:10} {r.campaign[:10]:10} {r.status.value:9} "
            f"{r.attempts:>3} {(r.phone_masked or '-'):15} {error}"
        )
    if outcome:
        counts = dict(Counter(r.status.value for r in matching_outcome))
    elif campaign and not (status or source or since):  # the maintained counts have each campaign's
        counts = {status: n.get(campaign, 0) for status, n in svc.store.counts().items()}
    elif status or source or since or campaign:  # the totals of what was asked for, not of the whole store
        matching = svc.store.list(Status(status) if status else None, source, after, 1_000_000_000, campaign=campaign)
        counts = dict(Counter(r.status.value for r in matching))
    else:
        counts = svc.store.count_by_status()
    filters = (("status", status), ("source", source), ("since", since), ("campaign", campaign), ("outcome", outcome))
    asked = ", ".join(f"{name} {value}" for name, value in filters if value)
    click.echo(
        f"totals{f' ({asked})' if asked else ''}: "
        + (", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "no leads")
    )


@leads_cli.command("stats")
@click.option("--since", default="7d", show_default=True, help="Leads that arrived within this age: 24h, 7d, 30d.")
@click.option("--by", type=click.Choice(GROUPINGS), default=None, help="One row per group.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def leads_stats(since: str, by: str | None, as_json: bool) -> None:
    """The funnel: received, sent, where the rest stand; rejection reasons ranked; speed to lead p50/p95."""

    svc = _services()
    now = svc.clock()
    after = now - parse_age(since)
    report = funnel(svc.store.list(since=after, limit=1_000_000_000), by, after, now)
    click.echo(json.dumps(report.document(), ensure_ascii=False, indent=2) if as_json else report.table())


@leads_cli.command("show")
@click.argument("lead_id")
@click.option("--reveal", is_flag=True, help="Show the full phone number in the entry.")
def leads_show(lead_id: str, reveal: bool) -> None:
    """One lead: its status, the entry that is (or was) sent, its history."""
    from crm2calls.logs import redact

    svc = _services()
    record = svc.store.get(lead_id)
    if record is None:
        raise click.ClickException(f"no lead {lead_id}")
    click.echo(f"lead {record.id}  source {record.source}  ref {record.ref}  key {record.key}")
    click.echo(
        f"campaign {record.campaign}  status {record.status.value}  attempts {record.attempts}  {_job(svc, record)}"
    )
    click.echo(f"created {record.created_at.isoformat()}  next attempt {record.next_attempt_at}")
    if record.last_error:
        click.echo(f"last error: {record.last_error}")
    _show_write_back(record)
    for line in _outcome_lines(record) + _work_lines(record):
        click.echo(line)
    if record.entry:
        entry = json.dumps(json.loads(record.entry), indent=2, ensure_ascii=False)
        click.echo("entry:\n" + (entry if reveal else redact(entry)))
    click.echo("history:")
    for step in record.history:
        click.echo(f"  {step['at']}  {step['status']:9} {step.get('note', '')}")


def _show_write_back(record: LeadRecord) -> None:
    """The outcome's write-back: where it was written, or its pending or parked item and its last error."""
    written = (record.outcome or {}).get("written")
    item = record.work.get("write_back")
    if written:
        click.echo(f"write-back: written to {written['crm']} as {written['id']} at {written['at']}")
    if item is not None:
        state = f"due {item.due.isoformat()}" if item.due else "DEAD LETTER (`leads replay ID` writes it again)"
        error = f"; last error: {item.error}" if item.error else ""
        click.echo(f"write-back: {state}; attempts {item.attempts}{error}")


def _work_lines(record: LeadRecord) -> list[str]:
    """Its other follow-up work (a cancel being retried shows its attempts and error).

    The write-back and the polling have lines of their own (_show_write_back, _outcome_lines).
    """
    lines = []
    for task, item in sorted(record.work.items()):
        if task in ("write_back", "poll"):
            continue
        when = f"due {item.due.isoformat()}" if item.due else "PARKED (an operator must act)"
        tried = f"; {item.attempts} attempt(s)" if item.attempts else ""
        lines.append(f"work: {task} {when}{tried}" + (f"; last error: {item.error}" if item.error else ""))
    return lines


def _has_outcome(record: LeadRecord, outcome: str) -> bool:
    job_status = (record.outcome or {}).get("job_status")
    return job_status is not None and outcome in (job_status, JOB_STATUSES.get(job_status, Status.CALLING).value)


def _outcome_lines(record: LeadRecord) -> list[str]:
    """The call's outcome as Aimylogic reported it, and whether its job is still polled."""
    from crm2calls.logs import redact

    outcome = record.outcome
    poll = record.work.get("poll")
    lines = []
    if outcome and outcome.get("job_status"):
        parts = [f"call: {outcome.get('job_status')}"]
        if outcome.get("call_result"):
            parts.append(f"result {outcome['call_result']}")
        parts.append(f"{outcome.get('attempts', 0)} attempt(s)")
        if outcome.get("duration_s"):
            parts.append(f"talked {outcome['duration_s']} s")
        if outcome.get("started_at"):
            parts.append(f"started {outcome['started_at']}")
        if outcome.get("finished_at"):
            parts.append(f"finished {outcome['finished_at']}")
        if outcome.get("tag"):
            parts.append(f"tag {outcome['tag'].get('name')}")
        lines.append(", ".join(parts))
        if outcome.get("report") is not None:
            lines.append("report: " + redact(json.dumps(outcome["report"], ensure_ascii=False)))
    if poll is not None:
        state = f"next {poll.due.isoformat()}" if poll.due else "PARKED, no longer polled"
        lines.append(f"polling its job: {state}" + (f" ({poll.error})" if poll.error else ""))
    return lines


def _job(svc: Services, record: LeadRecord) -> str:
    """The job id and which token placed it; a job of a replaced token is said to be one."""
    if not record.job_id:
        return "job -"
    if not record.job_token:
        return f"job {record.job_id}"
    from crm2calls.aimylogic import token_fingerprint

    token = svc.settings.campaign_token(record.campaign)
    if token and token_fingerprint(token) != record.job_token:
        replaced = "since replaced: reports and cancels cannot reach it"
        return f"job {record.job_id} (placed by token {record.job_token}, {replaced})"
    return f"job {record.job_id} (token {record.job_token})"


@leads_cli.command("retry")
@click.argument("lead_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed lead.")
@click.option("--dry-run", "all_dry_run", is_flag=True, help="Send for real every lead a dry run logged.")
def leads_retry(lead_id: str | None, all_failed: bool, all_dry_run: bool) -> None:
    """Queue leads again with a fresh calling window: one by id (failed, rejected, expired, dry_run), or all failed."""
    from crm2calls.lifecycle import RETRYABLE, requeue

    svc = _services()
    if [bool(lead_id), all_failed, all_dry_run].count(True) != 1:
        raise click.UsageError("give a lead id, --failed or --dry-run")
    if all_failed or all_dry_run:
        records = svc.store.list(Status.FAILED if all_failed else Status.DRY_RUN, limit=1_000_000)
    else:
        record = svc.store.get(lead_id)
        if record is None:
            raise click.ClickException(f"no lead {lead_id}")
        if record.status not in RETRYABLE:
            raise click.ClickException(
                f"lead {lead_id} is {record.status}: only {', '.join(sorted(RETRYABLE))} leads can be retried"
            )
        records = [record]
    settings = svc.settings
    if any(r.status is Status.DRY_RUN for r in records) and (settings.dry_run or not settings.aimylogic_token):
        raise click.ClickException(
            "dry-run leads are retried to be sent for real: set AIMYLOGIC_TOKEN (and unset DRY_RUN) first"
        )
    outcomes: dict[str, int] = {}
    with click.progressbar(records, label="retrying", file=sys.stderr) as bar:
        for record in bar:
            if requeue(svc, record, svc.clock()):
                outcomes[record.status.value] = outcomes.get(record.status.value, 0) + 1
    svc.notify()
    summary = ", ".join(f"{status} {count}" for status, count in sorted(outcomes.items()))
    click.echo(f"{sum(outcomes.values())} lead(s) queued again ({summary or 'none'})")


# Parked follow-up work `leads replay ID` starts again besides the write-back (which replays on its own terms).
REPLAYABLE = ("notify", "poll", "cancel")


@leads_cli.command("replay")
@click.argument("lead_ids", nargs=-1)
@click.option("--dead", "all_dead", is_flag=True, help="Every write-back that gave up (a scan of the store).")
def leads_replay(lead_ids: tuple[str, ...], all_dead: bool) -> None:
    """Start follow-up work that gave up again: these leads' parked write-back, results webhook, poll or
    cancel, or every parked write-back with --dead."""
    from crm2calls import writeback

    svc = _services()
    if bool(lead_ids) == all_dead:
        raise click.UsageError("give lead ids or --dead")
    if all_dead:
        records = writeback.dead_letters(svc)
        counts = Counter(record.source for record in records)
        writeback.set_dead_counts(svc, dict(counts))  # the count /healthz shows, made true again
        started = writeback.replay(svc, records, svc.clock())
        click.echo(f"{started} write-back(s) planned again; the follow-up worker writes them within a minute")
        return
    records = []
    for lead_id in lead_ids:
        record = svc.store.get(lead_id)
        if record is None:
            raise click.ClickException(f"no lead {lead_id}")
        if not any(item.due is None for item in record.work.values()):
            raise click.ClickException(f"lead {lead_id} has no follow-up work that gave up: nothing to replay")
        records.append(record)
    for record in records:
        written = writeback.replay(svc, [record], svc.clock()) if writeback.parked(record) else 0
        others = lifecycle.replay_parked(svc, record, svc.clock(), REPLAYABLE)
        started = (["write_back"] if written else []) + others
        click.echo(f"{record.id}: {', '.join(started) or 'nothing'} planned again")
    svc.notify_follow_up()


@leads_cli.command("deliver")
def leads_deliver() -> None:
    """Run one delivery pass now (what the schedule runs on Lambda)."""
    from crm2calls.delivery import deliver_pending

    report = deliver_pending(_services())
    click.echo(str(report))


@leads_cli.command("follow-up")
def leads_follow_up() -> None:
    """Run one follow-up pass now: poll calls, cancel, write outcomes back (what the schedule runs on Lambda)."""
    from crm2calls.followup import follow_up

    click.echo(str(follow_up(_services())))


@leads_cli.command("purge")
@click.option("--older-than", "older_than", required=True, help="Age such as 30d.")
def leads_purge(older_than: str) -> None:
    """Delete final leads (an end status and no follow-up work left) older than the age."""
    from crm2calls.store import KEY_TTL

    age = parse_age(older_than, "--older-than")
    if age < KEY_TTL:  # a purged lead's key is gone: a CRM retry of it would be called again
        raise click.BadParameter(f"keep at least {KEY_TTL.days}d: CRMs retry for days", param_hint="--older-than")
    svc = _services()
    cutoff = svc.clock() - age
    count = svc.store.purge(cutoff)
    click.echo(f"purged {count} final lead(s) created before {cutoff:%Y-%m-%d %H:%M} UTC")


def _phone_key_of(phone: str) -> tuple[str, str]:
    from crm2calls.errors import UnusableLeadError
    from crm2calls.guards import phone_key
    from crm2calls.phones import mask, normalize

    try:
        number = normalize(phone, _services().settings.default_region)
    except UnusableLeadError as exc:
        raise click.BadParameter(f"not a phone number we can use: {exc.reason}", param_hint="PHONE") from None
    return phone_key(number), mask(number)


@leads_cli.command("block")
@click.argument("phone")
@click.option("--note", default="", help="Why (shown by unblock and in the record).")
def leads_block(phone: str, note: str) -> None:
    """Put a number on the do-not-call list: it is never sent, whatever the source or campaign."""
    from crm2calls.guards import block

    key, masked = _phone_key_of(phone)
    svc = _services()
    block(svc, key, svc.clock(), note)
    click.echo(f"{masked} is on the do-not-call list")
    queued = [record.id for record in _leads_of_phone(svc, key) if record.status in QUEUED]
    for line in _stop_and_cancel(svc, queued, f"number blocked by an operator{f': {note}' if note else ''}"):
        click.echo(line)


@leads_cli.command("unblock")
@click.argument("phone")
def leads_unblock(phone: str) -> None:
    """Take a number off the do-not-call list."""
    from crm2calls.guards import unblock

    key, masked = _phone_key_of(phone)
    if not unblock(_services(), key):
        raise click.ClickException(f"{masked} was not on the do-not-call list")
    click.echo(f"{masked} may be called again")


@leads_cli.command("forget")
@click.argument("phone")
@click.confirmation_option(prompt="Erase every lead, entry and history held for this number?")
def leads_forget(phone: str) -> None:
    """Erase everything the store holds about a person (their leads, entries, history, claims).

    Jobs still queued in Aimylogic are cancelled first. A job known by its id keeps a lead with no phone,
    entry or history (its job id and campaign) until Aimylogic confirms the cancel; one known only by the
    phone is cancelled now, or nothing is erased.
    """
    key, masked = _phone_key_of(phone)
    svc = _services()
    queued = [record for record in _leads_of_phone(svc, key) if record.status in QUEUED]
    lines = _stop_and_cancel(svc, [record.id for record in queued], "forgotten at the person's request")
    for line in lines:
        click.echo(line)
    if any(line.endswith(BUSY) for line in lines):
        raise click.ClickException(f"a lead of {masked} is busy: nothing was erased; run `leads forget` again")
    waiting = [record for record in queued if (now := svc.store.get(record.id)) and "cancel" in now.work]
    if any(not _exact_job(record) for record in waiting):
        raise click.ClickException(
            f"a job of {masked} is known by its phone only and Aimylogic did not take its cancel: nothing was "
            "erased; run `leads forget` again once Aimylogic answers"
        )
    kept = [_strip(svc, record.id, "forgotten at the person's request") for record in waiting]
    count = svc.store.forget(key)
    click.echo(f"erased {count} lead(s) of {masked}; a do-not-call entry, if any, is kept (a pseudonym only)")
    if kept:
        click.echo(f"{len(kept)} queued job(s) keep their id and campaign, with no phone, until Aimylogic confirms "
                   "the cancel (the worker retries it): `leads show ID`")  # fmt: skip


def _leads_of_phone(svc: Services, key: str) -> list[LeadRecord]:
    """Every lead of a phone (a Scan on DynamoDB: an operator's command)."""
    return [record for record in svc.store.list(limit=1_000_000_000) if record.phone_key == key]


def _strip(svc: Services, lead_id: str, reason: str) -> str:
    """Keep of a stopped lead only what cancelling its job needs: no phone, entry or history; its id."""
    now = svc.clock()
    record = svc.store.lease(lead_id, "operator:forget", now, 60)
    if record is None:
        raise click.ClickException(f"lead {lead_id} is being worked on right now: nothing was erased; try again")
    # The stops it has seen stay known (their marks), so none of them is applied to it again.
    notes = " ".join(step.get("note", "") for step in record.history)
    seen = " ".join(dict.fromkeys(re.findall(r"\(stop [0-9a-f]{10}\)", notes)))
    record.entry = record.raw = record.phone_masked = record.phone_key = record.outcome = None
    note = f"{reason}: kept without its phone until Aimylogic cancels job {record.job_id} {seen}".strip()
    record.history = [{"at": now.isoformat(), "status": record.status.value, "note": note}]
    record.lease_owner = record.lease_until = None
    svc.store.update(record, "operator:forget")
    return lead_id


def _exact_job(record: LeadRecord) -> bool:
    return bool(record.job_id) and "," not in (record.job_id or "")


BUSY = "a worker holds it right now (sending or polling it): run the command again in a few seconds"


def _stop_and_cancel(svc: Services, lead_ids: list[str], reason: str) -> list[str]:
    """Stop these leads as a CRM stop would, then cancel their queued jobs now; a line per lead."""
    from crm2calls.stops import stop_lead

    lines, planned = [], []
    for lead_id in lead_ids:
        did = stop_lead(svc, lead_id, reason)
        record = svc.store.get(lead_id)
        status = record.status.value if record else "?"
        if did == "canceled":
            lines.append(f"lead {lead_id}: canceled; it was never sent and will not be")
        elif did == "cancel_planned":
            planned.append(lead_id)
        elif did == "deferred":
            lines.append(f"lead {lead_id}: not stopped: {BUSY}")
        else:
            lines.append(f"lead {lead_id}: nothing to cancel, it is {status}; the stop is recorded in its history")
    if planned:
        lines += _cancel_now(svc, planned)
    return lines


def _cancel_now(svc: Services, lead_ids: list[str]) -> list[str]:
    """Run these leads' "cancel" work now, as the follow-up worker would; what Aimylogic made of each."""
    import uuid

    from crm2calls.followup import LEASE, FollowUpPass
    from crm2calls.stops import cancel_jobs

    now = svc.clock()
    run = FollowUpPass(svc, now, f"operator:{uuid.uuid4().hex[:12]}")
    lease = int(LEASE.total_seconds())
    leased = [record for lead_id in lead_ids if (record := svc.store.lease(lead_id, run.owner, now, lease))]
    cancel_jobs(run, leased)
    lines = []
    for lead_id in lead_ids:
        record = svc.store.get(lead_id)
        item = record.work.get("cancel") if record else None
        if record is None:
            lines.append(f"lead {lead_id}: gone")
        elif item is None and record.status is Status.CANCELED:
            jobs = ", ".join((record.outcome or {}).get("canceled_ids", [])) or "none queued"
            lines.append(f"lead {lead_id}: canceled; Aimylogic cancelled job {jobs}")
        elif item is None:
            lines.append(f"lead {lead_id}: Aimylogic did not cancel job {record.job_id} (it has ended or is unknown); "
                         f"its report tells how it ended")  # fmt: skip
        elif item.due is None:
            lines.append(f"lead {lead_id}: cancel PARKED: {item.error}")
        else:
            lines.append(f"lead {lead_id}: cancel failed ({item.error}); the worker retries it from "
                         f"{item.due:%H:%M:%S} UTC")  # fmt: skip
    return lines


@leads_cli.command("cancel")
@click.argument("lead_id", required=False)
@click.option("--source", "source_name", default=None, help="With --ref: the leads of one CRM record.")
@click.option("--ref", default=None, help="The CRM's id of the record, as `leads show` prints it.")
@click.option("--reason", default="canceled by an operator", show_default=True, help="Kept in its history.")
def leads_cancel(lead_id: str | None, source_name: str | None, ref: str | None, reason: str) -> None:
    """Stop one lead (or every lead of one CRM record): never sent, or its queued job cancelled in Aimylogic."""
    svc = _services()
    if bool(lead_id) == bool(source_name or ref) or bool(source_name) != bool(ref):
        raise click.UsageError("give a lead id, or --source and --ref")
    if lead_id:
        if svc.store.get(lead_id) is None:
            raise click.ClickException(f"no lead {lead_id}")
        lead_ids = [lead_id]
    else:
        lead_ids = [record.id for record in svc.store.find_by_ref(source_name, ref)]
        if not lead_ids:
            raise click.ClickException(f"no lead of {source_name} record {ref}")
    lines = _stop_and_cancel(svc, lead_ids, reason)
    for line in lines:
        click.echo(line)
    if any(line.endswith(BUSY) for line in lines):
        sys.exit(1)


@leads_cli.command("reconcile")
@click.option("--source", "source_name", required=True, type=click.Choice(["amocrm", "bitrix24"]))
@click.option("--since", default="2h", show_default=True, help="How far back to list the CRM's leads: 2h, 1d.")
def leads_reconcile(source_name: str, since: str) -> None:
    """Enqueue every lead the CRM created in the window that no webhook brought (idempotent)."""
    from crm2calls.reconcile import reconcile

    try:
        report = reconcile(_services(), source_name, parse_age(since))
    except Crm2CallsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"listed {report.listed}, enqueued {report.enqueued}, already known {report.already_known}")


@crm_cli.command("zoho-renew")
def zoho_renew() -> None:
    """Renew the Zoho CRM notification channel for another week (run daily; Lambda schedules it)."""
    from crm2calls.sources.zoho import renew_watch

    svc = _services()
    try:
        result = renew_watch(svc, svc.clock())
    except Crm2CallsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, ensure_ascii=False, default=str))


@aws_cli.command("create-table")
@click.argument("table")
def aws_create_table(table: str) -> None:
    """Create the DynamoDB lead table (on-demand, TTL, the worker's index) if it does not exist."""
    from crm2calls.aws import create_table

    click.echo(json.dumps(create_table(table), indent=2))


@aws_cli.command("policy")
@click.option("--table", "table", required=True, help="The table's ARN, or its name when --function is given.")
@click.option("--function", "function_arn", default=None, help="The Lambda function's ARN (adds logs and self-invoke).")
def aws_policy(table: str, function_arn: str | None) -> None:
    """Print the least-privilege IAM policy the function's role needs."""
    from crm2calls.aws import print_policy, resolve_table_arn

    try:
        table_arn = resolve_table_arn(table, function_arn)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    print_policy(table_arn, function_arn)


@aws_cli.command("alarms")
@click.option("--function", "function_name", required=True, help="The function's name, e.g. crm2calls-production.")
@click.option("--sns-topic", default=None, help="An SNS topic's ARN: notified on alarm and on recovery.")
@click.option("--create", is_flag=True, help="Create (or update) them in CloudWatch instead of printing them.")
def aws_alarms(function_name: str, sns_topic: str | None, create: bool) -> None:
    """Print the CloudWatch alarm definitions (PutMetricAlarm JSON); with --create, create them."""
    from crm2calls.aws import alarms, create_alarms

    if sns_topic is not None and not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}", sns_topic):
        raise click.BadParameter("give a topic ARN: arn:aws:sns:REGION:ACCOUNT:NAME", param_hint="--sns-topic")
    definitions = alarms(function_name, sns_topic)
    if not create:
        click.echo(json.dumps(definitions, indent=2))
        return
    for name in create_alarms(definitions):
        click.echo(f"created or updated alarm {name}")


@leads_cli.command("recount")
def leads_recount() -> None:
    """Count every lead again into the maintained counts: a scan, after a manual edit of the store or a logged drift."""
    totals = _services().store.recount()
    click.echo("counted: " + (", ".join(f"{status} {n}" for status, n in sorted(totals.items()) if n) or "no leads"))


def register(app: Flask) -> None:
    """Attach the command groups to the app's CLI."""
    for group in (config_cli, dialer_cli, leads_cli, crm_cli, aws_cli):
        app.cli.add_command(group)
    app.cli.add_command(serve)

