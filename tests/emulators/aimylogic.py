"""An emulator of the Aimylogic Calls API, written from shared/docs/addPhones.md alone.

It deliberately imports nothing from schemas/ or crm2calls: it is a second, independent reading
of the contract, so a mistake in our schemas shows up as a 400 here instead of passing silently.

Where the docs are silent the emulator picks a behaviour and says so:
* every error body is plain text naming the element index and the field;
* unknown fields in an entry are refused (strict: a misspelt field is our bug, never a feature);
* a request with any bad element adds nothing (all or nothing);
* a paused campaign answers addPhones with 503 and adds nothing ("unavailable": the platform
  pauses itself when minutes run out or on failure, so a sender should keep the leads and retry);
  `paused_answer` makes it 200 (queued) or 400 instead: the real answer is UNKNOWN;
* a finished or deleted campaign answers addPhones with 400 "campaign is finished" (`closed_answer`);
* several campaigns, each with its own token (add_campaign), keep their own jobs and duplicate guard;
* GET .../status answers the bare status as text; GET /api/calls/campaign/{token} the campaign's
  details with shortReport counters (totalNumbers = jobs, processedNumbers = 0: nobody is called here);
* a wrong token answers 404 on every method;
* POST .../callJob/cancel cancels the campaign's jobs named by `ids` and/or `phones` that are neither
  finished (finish_job) nor cancelled already, and answers the JSON array of the ids it cancelled (a.6);
  `cancel_answer` = "object" or "empty" answers in shapes the docs do not show, to test a client's safety.

* callJob/getReport answers each job's report as the injected clock has moved it along its JobPlan
  (plan_job per phone, default_plan otherwise): planned, then attempts (inProcess, onRetry between them),
  then its final status, or never one; the report's phone is normalised 8... -> 7... as the real one's is
  (aimylogic-calls-api.md a.10); unknown ids are left out of the answer, not refused.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
import zoneinfo
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.base import LocalServer

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FIELDS = {
    "phone", "payload", "startDateTime", "finishDateTime", "allowedDays", "allowedTime",
    "retryIntervalInMinutes", "maxAttempts", "gmtZone",
}
DUPLICATE_WINDOW = timedelta(hours=24)
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$")
# Java ZoneOffset.of forms: +h, +hh, +hh:mm, +hhmm, +hh:mm:ss, +hhmmss
_OFFSET = re.compile(
    r"^[+-](?:(\d)|(\d{2})|(\d{2}):(\d{2})|(\d{2})(\d{2})|(\d{2}):(\d{2}):(\d{2})|(\d{2})(\d{2})(\d{2}))$"
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def valid_offset(text: str) -> bool:
    """A ZoneOffset.of string within ±18:00."""
    match = _OFFSET.match(text)
    if not match:
        return False
    parts = [int(g) for g in match.groups() if g is not None]
    hours, minutes, seconds = [*parts, 0, 0][:3]
    if minutes > 59 or seconds > 59:
        return False
    return hours < 18 or (hours == 18 and minutes == 0 and seconds == 0)


_IANA_ZONES = functools.cache(zoneinfo.available_timezones)  # it reads the whole tz database each call


def valid_zone(value: Any) -> bool:
    """gmtZone as documented: Z, an offset, UTC/GMT/UT with or without an offset, or an IANA id."""
    if not isinstance(value, str) or not value:
        return False
    if value == "Z" or value in ("UTC", "GMT", "UT"):
        return True
    if value[0] in "+-":
        return valid_offset(value)
    for prefix in ("UTC", "GMT", "UT"):
        rest = value[len(prefix):]
        if value.startswith(prefix) and rest[:1] in ("+", "-"):
            return valid_offset(rest)
    return "/" in value and value in _IANA_ZONES()


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not _DATETIME.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def validate_entry(entry: Any) -> list[str]:
    """Every way one addPhones element breaks the documented rules, as "field: problem"."""
    if not isinstance(entry, dict):
        return ["(element): must be an object"]
    errors = [f"{name}: unknown field" for name in sorted(set(entry) - FIELDS)]
    phone = entry.get("phone")
    if phone is None:
        errors.append("phone: required")
    elif isinstance(phone, bool) or not (
        (isinstance(phone, int) and phone > 0) or (isinstance(phone, str) and phone.isascii() and phone.isdigit())
    ):
        errors.append("phone: must be digits, country code first")
    if "payload" in entry and not isinstance(entry["payload"], dict):
        errors.append("payload: must be an object")
    moments = {}
    for name in ("startDateTime", "finishDateTime"):
        if name in entry:
            moments[name] = _datetime(entry[name])
            if moments[name] is None:
                errors.append(f"{name}: must be an ISO date-time with an offset, e.g. 2020-03-23T00:00:00Z")
    start, finish = moments.get("startDateTime"), moments.get("finishDateTime")
    if start and finish and finish <= start:
        errors.append("finishDateTime: must be after startDateTime")
    if "allowedDays" in entry:
        days = entry["allowedDays"]
        if not isinstance(days, list) or not days:
            errors.append("allowedDays: must be a non-empty array of weekdays")
        elif any(day not in WEEKDAYS for day in days) or len(set(days)) != len(days):
            errors.append(f"allowedDays: each of {', '.join(WEEKDAYS)} at most once")
    if "allowedTime" in entry:
        errors.extend(_allowed_time_errors(entry["allowedTime"]))
    for name in ("retryIntervalInMinutes", "maxAttempts"):
        if name in entry and not _non_negative_int(entry[name]):
            errors.append(f"{name}: must be a non-negative integer")
    if "gmtZone" in entry and not valid_zone(entry["gmtZone"]):
        errors.append(f"gmtZone: {entry['gmtZone']!r} is not Z, an offset within ±18:00 or a time zone id")
    return errors


def _allowed_time_errors(allowed: Any) -> list[str]:
    if not isinstance(allowed, dict):
        return ["allowedTime: must be an object keyed by weekday or default"]
    errors = []
    for day, intervals in allowed.items():
        where = f"allowedTime.{day}"
        if day not in (*WEEKDAYS, "default"):
            errors.append(f"{where}: key must be a weekday or default")
            continue
        if not isinstance(intervals, list):
            errors.append(f"{where}: must be an array of intervals")
            continue
        bounds = []
        for i, interval in enumerate(intervals):
            at = f"{where}[{i}]"
            if not isinstance(interval, dict):
                errors.append(f"{at}: must be an object")
                continue
            extra = set(interval) - {"localTimeFrom", "localTimeTo"}
            if extra:
                errors.append(f"{at}: unknown field {sorted(extra)[0]}")
            ok = True
            for bound in ("localTimeFrom", "localTimeTo"):
                if bound not in interval:
                    errors.append(f"{at}.{bound}: required")
                    ok = False
                elif not isinstance(interval[bound], str) or not _HHMM.match(interval[bound]):
                    errors.append(f"{at}.{bound}: must be HH:mm")
                    ok = False
            if ok:
                if interval["localTimeFrom"] >= interval["localTimeTo"]:
                    errors.append(f"{at}: localTimeFrom must be before localTimeTo")
                bounds.append((interval["localTimeFrom"], interval["localTimeTo"]))
        bounds.sort()
        for (_, earlier_end), (later_start, _) in pairwise(bounds):
            if earlier_end > later_start:
                errors.append(f"{where}: intervals overlap")
    return errors


def fingerprint(entry: dict) -> str:
    """Same phone, same settings, same payload: the duplicate guard's notion of "the same"."""
    return json.dumps({**entry, "phone": str(entry["phone"])}, sort_keys=True, separators=(",", ":"))


@dataclass
class Recorded:
    """One request as the emulator saw it."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes
    status: int | None = None  # set once answered

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class _Scripted:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    only: str | None = None  # answer only requests whose path ends so ("status"); None: those that place calls


# getReport: jobs that move on the clock.

FINAL_STATUSES = ("canceled", "noAnswer", "nonexistentNumber", "notDone", "longCallWithResult", "longCallWithNoResult")
TALKED = ("longCallWithResult", "longCallWithNoResult")


@dataclass(frozen=True)
class JobPlan:
    """How a job moves: `planned` for `wait` seconds, then `attempts` dials of `ring` seconds each
    (inProcess), `retry` seconds apart (onRetry), then `final`; final None: it never ends, and stays
    `stuck` after the wait. A talked call (longCall...) lasts `duration` seconds of its last attempt."""

    final: str | None = "longCallWithResult"
    attempts: int = 1
    wait: float = 60.0
    ring: float = 45.0
    retry: float = 600.0
    duration: int = 40
    result: str | None = None  # callResult; None: "OK" for a talked call, else the final status
    report: dict | None = None  # reportData the script set
    tag: tuple[str, dict] | None = None  # tagName, tagPayload
    stuck: str = "planned"


@dataclass
class _Job:
    id: str
    phone: str
    token: str
    created: datetime
    plan: JobPlan
    canceled_at: datetime | None = None  # callJob/cancel took it (before it ended)

    def report(self, now: datetime) -> dict[str, Any]:
        """The job's report at `now`, as getReport answers it."""
        if self.canceled_at is not None and now >= self.canceled_at:
            before = self.report(self.canceled_at - timedelta(microseconds=1))  # attempts made until then
            return {
                **before, "callJobId": self.id, "phone": self.phone, "createdAt": _ms(self.created),
                "jobStatus": "canceled", "callResult": "canceled", "finishedAt": _ms(self.canceled_at),
            }
        plan, elapsed = self.plan, (now - self.created).total_seconds()
        status, attempts, started, finished, duration = "planned", 0, None, None, 0
        ends = plan.wait + plan.attempts * plan.ring + max(plan.attempts - 1, 0) * plan.retry
        if elapsed >= plan.wait and plan.attempts:
            started = plan.wait
        if plan.final is None:
            if elapsed >= plan.wait:
                status = plan.stuck
        elif elapsed >= ends:
            status, attempts, finished = plan.final, plan.attempts, ends
            duration = plan.duration if plan.final in TALKED else 0
        elif elapsed >= plan.wait:
            done = elapsed - plan.wait
            attempt = int(done // (plan.ring + plan.retry))
            attempts = attempt + 1
            status = "inProcess" if done - attempt * (plan.ring + plan.retry) < plan.ring else "onRetry"
        talked = status in TALKED
        return {
            "callJobId": self.id,
            "phone": self.phone,
            "createdAt": _ms(self.created),
            "jobStatus": status,
            "callResult": (plan.result or ("OK" if talked else status)) if status in FINAL_STATUSES else None,
            "reportData": plan.report if talked else None,
            "attemptsCount": attempts,
            "callDuration": duration,
            "startedAt": None if started is None else _ms(self.created + timedelta(seconds=started)),
            "finishedAt": None if finished is None else _ms(self.created + timedelta(seconds=finished)),
            "redialNumber": None,
            "tagName": plan.tag[0] if plan.tag and talked else None,
            "tagPayload": plan.tag[1] if plan.tag and talked else None,
        }


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def report_phone(phone: Any) -> str:
    """The phone as Aimylogic's reports give it: digits, a Russian 8... as 7... (a.10)."""
    digits = str(phone)
    return "7" + digits[1:] if len(digits) == 11 and digits.startswith("8") else digits


def _is_report(path: str) -> bool:
    return path.startswith("/api/calls/campaign/") and path.endswith("/callJob/getReport")


class _ReportMixin:
    """getReport's scripting and handler, kept apart from addPhones'."""

    def plan_job(self, phone: str | int, plan: JobPlan) -> None:
        """The jobs addPhones creates for `phone` from now on move as `plan` says."""
        with self._lock:
            self.plans[report_phone(phone)] = plan

    def hang_reports(self, seconds: float, *, times: int = 1) -> None:
        """The next `times` getReport requests wait `seconds` (or until recover()), then answer as usual."""
        with self._lock:
            self._report_hang.extend([seconds] * times)

    def omit_ids(self, count: int, *, times: int = 1) -> None:
        """The next `times` addPhones answers leave out their last `count` job ids (the jobs are created)."""
        with self._lock:
            self._omit_ids.extend([count] * times)

    def job_report(self, job_id: str) -> dict[str, Any]:
        """A job's report now, as getReport would answer it."""
        with self._lock:
            return self.jobs[job_id].report(self.clock())

    def _get_report(self, request: Request, campaign: Campaign) -> Response:
        try:
            body = json.loads(request.get_data())
        except ValueError:
            return _text("body is not valid JSON", 400)
        if not isinstance(body, dict) or not (body.get("ids") or body.get("phones")):
            return _text('body must be an object with "ids" and/or "phones" arrays', 400)
        ids, phones = body.get("ids") or [], body.get("phones") or []
        if not isinstance(ids, list) or not isinstance(phones, list):
            return _text("ids and phones must be arrays", 400)
        if any(isinstance(v, bool) or not isinstance(v, (str, int)) for v in (*ids, *phones)):
            return _text("ids and phones: each a string or a number", 400)
        with self._lock:
            self.report_ids_asked += len(ids)
            self.report_phones_asked += len(phones)
            hang = self._report_hang.popleft() if self._report_hang else None
        if hang is not None:
            self._wait(hang)
        wanted_ids, wanted_phones = {str(v) for v in ids}, {report_phone(v) for v in phones}
        with self._lock:
            now = self.clock()
            reports = [
                job.report(now)
                for job in self.jobs.values()
                if job.token == campaign.token and (job.id in wanted_ids or job.phone in wanted_phones)
            ]
        return Response(json.dumps(reports), 200, mimetype="application/json")


STATUSES = ("planned", "inProcess", "paused", "finished", "deleted")


@dataclass
class Campaign:
    """One campaign of the emulated account."""

    token: str
    name: str
    id: int
    status: str = "inProcess"
    jobs: list[str] = field(default_factory=list)


class _CancelEndpoint:
    """callJob/cancel (a.6): what it cancelled, per request and per job."""

    def _reset_cancels(self) -> None:
        with self._lock:
            self.cancels: list[dict[str, Any]] = []  # one per request: token, ids, phones, answer
            self.cancelled: dict[str, str] = {}  # job id -> token of the campaign it was cancelled in
            self.finished: set[str] = set()  # jobs that ended (called or not): no longer cancellable
            self.cancel_answer = "ids"  # "object": {"cancelled": [...]}, "empty": a 200 with no body
            self.unknown_answer = 200  # 400: a request naming a job id the campaign never had is refused whole

    def finish_job(self, job_id: str) -> None:
        """The job's calls are over: a cancel leaves it alone."""
        with self._lock:
            self.finished.add(job_id)

    def _ended(self, job: str, now: datetime) -> bool:
        """Finished by hand (finish_job) or by its plan on the clock (getReport's jobs)."""
        if job in self.finished:
            return True
        planned = self.jobs.get(job)
        return planned is not None and planned.report(now)["jobStatus"] in FINAL_STATUSES

    def cancelled_ids(self) -> list[str]:
        """Every job id cancelled so far, in order."""
        with self._lock:
            return list(self.cancelled)

    def _cancel(self, request: Request, campaign: Campaign) -> Response:
        try:
            body = json.loads(request.get_data())
        except ValueError:
            return _text("body is not valid JSON", 400)
        if not isinstance(body, dict) or not (body.get("ids") or body.get("phones")):
            return _text("give ids or phones", 400)
        ids = [str(job_id) for job_id in body.get("ids") or []]
        phones = {str(phone) for phone in body.get("phones") or []}
        with self._lock:
            unknown = [job_id for job_id in ids if job_id not in campaign.jobs]
            if unknown and self.unknown_answer != 200:
                self.cancels.append({"token": campaign.token, "ids": ids, "phones": sorted(phones), "answer": None})
                return _text(f"unknown job id {unknown[0]}", self.unknown_answer)
            named = [job for job in campaign.jobs if job in ids or str(self.calls[job]["phone"]) in phones]
            now = self.clock()
            done = [job for job in named if job not in self.cancelled and not self._ended(job, now)]
            for job in done:
                self.cancelled[job] = campaign.token
                if job in self.jobs:  # its reports say canceled from now on
                    self.jobs[job].canceled_at = now
            self.cancels.append({"token": campaign.token, "ids": ids, "phones": sorted(phones), "answer": done})
            shape = self.cancel_answer
        if shape == "object":
            return Response(json.dumps({"cancelled": done}), 200, mimetype="application/json")
        if shape == "empty":
            return Response(b"", 200)
        return Response(json.dumps(done), 200, mimetype="application/json")


class AimylogicEmulator(_CancelEndpoint, _ReportMixin):
    """A real HTTP server on 127.0.0.1 that keeps the addPhones contract; use it as a context manager."""

    def __init__(self, token: str = "8231.7056.1b131df1", *, clock=_utcnow, first_job_id: int = 5665334669):
        self.token = token  # the first campaign's
        self.clock = clock
        self._first_job_id = first_job_id
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.reset()
        self._server = LocalServer(self._app)

    # lifecycle

    def reset(self) -> None:
        """Forget every request, job and scripted fault (one server can serve many tests)."""
        self.recover()
        with self._lock:
            self.delay = 0.0  # seconds each request waits before it is handled
            self.requests: list[Recorded] = []  # addPhones and test calls: what places calls
            self.status_requests: list[Recorded] = []  # GET status, campaign details, getReport: what only reads
            self.entries: list[dict] = []  # every valid entry of every accepted addPhones request, duplicates too
            self.calls: dict[str, dict] = {}  # job id -> entry: distinct jobs, each one real call
            self.test_calls: dict[str, dict] = {}  # job id -> query of test/addPhone (real calls, no guard)
            self.duplicates_ignored = 0
            self.hanging = 0  # requests waiting in a hang right now
            self._seen: dict[str, tuple[str, datetime]] = {}
            self._next_id = self._first_job_id
            self.campaigns: dict[str, Campaign] = {self.token: Campaign(self.token, "Qualification", 1001)}
            self.paused_answer = 503
            self.closed_answer = 400
            self.jobs: dict[str, _Job] = {}  # job id -> its plan and creation time (getReport)
            self.plans: dict[str, JobPlan] = {}  # normalised phone -> the plan of its next jobs
            self.default_plan = JobPlan()
            self.report_ids_asked = 0  # ids asked in getReport requests, over all of them
            self.report_phones_asked = 0
        self._reset_cancels()

    def start(self) -> AimylogicEmulator:
        """Serve on a free port in a daemon thread."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Release hanging requests and shut the server down."""
        self._release.set()
        self._server.stop()

    def __enter__(self) -> AimylogicEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to give the client (AIMYLOGIC_URL)."""
        return self._server.url

    # fault injection

    def fail_next(
        self, status: int, *, times: int = 1, retry_after: str | int | None = None, body: str | None = None,
        headers: dict[str, str] | None = None, only: str | None = None,
    ) -> None:
        """Answer the next `times` requests with `status`, handling nothing.

        Scripted answers go to requests that place calls (addPhones, test/addPhone); only="status" (or any
        path ending) aims them at the requests whose path ends so instead.
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        with self._lock:
            self._script.extend(_Scripted(status, body if body is not None else f"scripted {status}", extra, only)
                                for _ in range(times))

    def hang(self, seconds: float, *, times: int = 1) -> None:
        """The next `times` requests wait `seconds`, then get 504 with nothing recorded (lost before the backend)."""
        with self._lock:
            self._hang_before.extend([seconds] * times)

    def record_then_hang(self, seconds: float, *, times: int = 1) -> None:
        """The next `times` addPhones requests are fully accepted, then the answer waits `seconds`."""
        with self._lock:
            self._hang_after.extend([seconds] * times)

    def add_campaign(self, token: str, name: str, status: str = "inProcess") -> Campaign:
        """Another campaign of the account, with its own token."""
        with self._lock:
            campaign = self.campaigns[token] = Campaign(token, name, 1001 + len(self.campaigns), status)
        return campaign

    def set_status(self, status: str, token: str | None = None) -> None:
        """A person (or Aimylogic itself) pauses, resumes, finishes or deletes a campaign."""
        assert status in STATUSES, status
        with self._lock:
            self.campaigns[token or self.token].status = status

    def pause(self, token: str | None = None) -> None:
        """The campaign pauses: status says paused, addPhones answers paused_answer (see the module docstring)."""
        self.set_status("paused", token)

    def resume(self, token: str | None = None) -> None:
        """The campaign runs again."""
        self.set_status("inProcess", token)

    def jobs_of(self, token: str | None = None) -> list[str]:
        """The distinct jobs a campaign's addPhones created, in order."""
        with self._lock:
            return list(self.campaigns[token or self.token].jobs)

    def count(self, what: str, token: str | None = None) -> int:
        """How many requests of a kind ("addPhones", "status", "details") a campaign got."""
        prefix = f"/api/calls/campaign/{token or self.token}"
        paths = {"addPhones": prefix + "/addPhones", "status": prefix + "/status", "details": prefix,
                 "getReport": prefix + "/callJob/getReport"}  # fmt: skip
        return sum(1 for r in (*self.requests, *self.status_requests) if r.path == paths[what])

    def recover(self) -> None:
        """Drop scripted failures and pending hangs, resume the campaign, release current hangs."""
        with self._lock:
            self._script: deque[_Scripted] = deque()
            self._hang_before: deque[float] = deque()
            self._hang_after: deque[float] = deque()
            self._report_hang: deque[float] = deque()
            self._omit_ids: deque[int] = deque()
            for campaign in getattr(self, "campaigns", {}).values():
                campaign.status = "inProcess"
            self._release.set()
            self._release = threading.Event()

    def calls_per_phone(self) -> dict[str, int]:
        """How many distinct jobs (real calls) each phone got through addPhones."""
        counts: dict[str, int] = {}
        with self._lock:
            for entry in self.calls.values():
                phone = str(entry["phone"])
                counts[phone] = counts.get(phone, 0) + 1
        return counts

    # HTTP

    @Request.application
    def _app(self, request: Request) -> Response:
        recorded = Recorded(request.method, request.path, dict(request.args), request.get_data())
        reads = request.method == "GET" and request.path.startswith("/api/calls/campaign/")
        reads = reads or _is_report(request.path)  # getReport is a POST that only reads
        with self._lock:
            (self.status_requests if reads else self.requests).append(recorded)
            hang = self._hang_before.popleft() if self._hang_before and not reads else None
            scripted = None
            only = self._script[0].only if self._script else None
            if self._script and hang is None and (request.path.endswith(only) if only else not reads):
                scripted = self._script.popleft()
        if self.delay:
            time.sleep(self.delay)
        if hang is not None:
            self._wait(hang)
            response = Response("gateway timeout", 504, mimetype="text/plain")
        elif scripted is not None:
            response = Response(scripted.body, scripted.status, headers=scripted.headers, mimetype="text/plain")
        else:
            response = self._route(request)
        recorded.status = response.status_code
        return response

    def _wait(self, seconds: float) -> None:
        with self._lock:
            self.hanging += 1
        try:
            self._release.wait(seconds)
        finally:
            with self._lock:
                self.hanging -= 1

    def _route(self, request: Request) -> Response:
        parts = request.path.split("/")  # "", "api", "calls"|"crmCalls", "campaign", token, ...
        campaign = self.campaigns.get(parts[4]) if len(parts) > 4 and parts[3] == "campaign" else None
        if campaign is None:
            return _text("campaign not found", 404)
        prefix = f"/api/calls/campaign/{campaign.token}"
        if request.path == prefix + "/addPhones":
            return self._add_phones(request, campaign) if request.method == "POST" else _text("method not allowed", 405)
        if request.path == f"/api/crmCalls/campaign/{campaign.token}/test/addPhone" and request.method == "GET":
            return self._test_add_phone(request)
        if request.path == prefix + "/status" and request.method == "GET":
            return _text(campaign.status)
        if request.path == prefix and request.method == "GET":
            return self._details(campaign)
        if request.path == prefix + "/callJob/cancel" and request.method == "POST":
            return self._cancel(request, campaign)
        if request.path == prefix + "/callJob/getReport":
            return self._get_report(request, campaign) if request.method == "POST" else _text("method not allowed", 405)
        return _text("not found", 404)

    def _details(self, campaign: Campaign) -> Response:
        with self._lock:
            total = len(campaign.jobs)
        details = {
            "id": campaign.id, "name": campaign.name, "projectName": "crm2calls-tests",
            "creationDate": "2026-11-01T09:00:00Z", "botId": f"bot-{campaign.id}", "status": campaign.status,
            "shortReport": {"totalNumbers": total, "processedNumbers": 0, "usedTalkingTime": 0, "usedAsrSeconds": 0,
                            "inProcessCalls": 0, "retryCalls": 0},
            "startTime": "2026-11-01T09:00:00Z", "endTime": None, "maxSimultaneousCalls": 10,
        }  # fmt: skip
        return Response(json.dumps(details), 200, mimetype="application/json")

    def _add_phones(self, request: Request, campaign: Campaign) -> Response:
        if campaign.status == "paused" and self.paused_answer != 200:
            return _text("campaign is paused", self.paused_answer)
        if campaign.status in ("finished", "deleted"):
            return _text(f"campaign is {campaign.status}", self.closed_answer)
        if request.mimetype != "application/json":
            return _text("Content-Type must be application/json", 415)
        try:
            body = json.loads(request.get_data())
        except ValueError:
            return _text("body is not valid JSON", 400)
        if not isinstance(body, list):
            return _text("body must be a JSON array of phone entries", 400)
        errors = [f"element {i}: {problem}" for i, entry in enumerate(body) for problem in validate_entry(entry)]
        if errors:
            return _text("; ".join(errors), 400)
        ids = []
        with self._lock:
            now = self.clock()
            for entry in body:
                self.entries.append(entry)
                key = campaign.token + fingerprint(entry)  # each campaign has its own duplicate guard
                seen = self._seen.get(key)
                if seen is not None and now - seen[1] < DUPLICATE_WINDOW:
                    self.duplicates_ignored += 1
                    ids.append(seen[0])
                    continue
                job_id = self._new_id()
                self.calls[job_id] = entry
                campaign.jobs.append(job_id)
                phone = report_phone(entry["phone"])
                self.jobs[job_id] = _Job(job_id, phone, campaign.token, now, self.plans.get(phone, self.default_plan))
                self._seen[key] = (job_id, now)
                ids.append(job_id)
            hang = self._hang_after.popleft() if self._hang_after else None
            omit = self._omit_ids.popleft() if self._omit_ids else 0
        if hang is not None:
            self._wait(hang)
        return Response(json.dumps(ids[: max(len(ids) - omit, 0)]), 200, mimetype="application/json")

    def _test_add_phone(self, request: Request) -> Response:
        phone = request.args.get("phone", "")
        if not (phone.isascii() and phone.isdigit()):
            return _text("phone: required, digits only", 400)
        if "gmtZone" in request.args and not valid_zone(request.args["gmtZone"]):
            return _text("gmtZone: not a valid zone", 400)
        with self._lock:
            job_id = self._new_id()
            self.test_calls[job_id] = dict(request.args)
        return _text(job_id)

    def _new_id(self) -> str:
        job_id = str(self._next_id)
        self._next_id += 1
        return job_id


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status, mimetype="text/plain")
