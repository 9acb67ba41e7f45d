"""A delivery pass SIGKILLed mid-send loses no lead and calls no one twice.

The pass runs in a child process against the same SQLite file and the emulator; the parent kills
it at the two moments that matter, then runs a fresh pass once the child's lease has expired.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from tests.conftest import ROOT, TOKEN
from tests.test_delivery import add_leads, all_leads, statuses

pytestmark = pytest.mark.slow

LEASE = 120
CHILD = """
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from crm2calls.config import Settings, load_policy
from crm2calls.delivery import deliver_pending
from crm2calls.logs import configure_logging
from crm2calls.services import Services

leads_toml, store, url, token, now, batch_size, concurrency = sys.argv[1:]
policy = load_policy(Path(leads_toml), "RU")
delivery = replace(policy.delivery, batch_size=int(batch_size), concurrency=int(concurrency))
settings = Settings(policy=replace(policy, delivery=delivery), aimylogic_url=url, aimylogic_token=token,
                    leads_store=store)
configure_logging("INFO")
fixed = datetime.fromisoformat(now)
print(deliver_pending(Services(settings, clock=lambda: fixed)))
"""


@pytest.fixture
def services(make_services, shipped_policy, aimylogic):
    delivery = replace(shipped_policy.delivery, batch_size=10, concurrency=2, lease_seconds=LEASE)
    return make_services(
        policy=replace(shipped_policy, delivery=delivery), aimylogic_token=TOKEN, aimylogic_url=aimylogic.url
    )


def spawn_pass(services, tmp_path) -> subprocess.Popen:
    """deliver_pending in a child process, at the parent's clock time, logging to a file."""
    settings, policy = services.settings, services.settings.policy.delivery
    args = [ROOT / "leads.toml", settings.leads_store, settings.aimylogic_url, TOKEN, services.clock().isoformat(),
            policy.batch_size, policy.concurrency]
    log = open(tmp_path / "child.log", "w")  # noqa: SIM115  # closed with the process
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], cwd=ROOT, stdout=log, stderr=log)


def wait_for(predicate, child: subprocess.Popen, tmp_path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if child.poll() is not None:
            break
        time.sleep(0.05)
    child.kill()
    pytest.fail(f"the child never reached the kill point; its log:\n{(tmp_path / 'child.log').read_text()}")


def kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_killed_after_the_claim_before_the_send_arrived(services, aimylogic, clock, tmp_path):
    add_leads(services, 30)
    aimylogic.hang(60, times=2)  # both batches stall before Aimylogic records anything

    child = spawn_pass(services, tmp_path)
    wait_for(lambda: aimylogic.hanging == 2, child, tmp_path)
    kill(child)
    aimylogic.recover()  # the stalled requests end with a 504 to a dead socket: nothing recorded

    # The child's store write is done: 20 leads leased to a dead worker, 10 never claimed.
    assert statuses(services) == {"sending": 20, "pending": 10} and aimylogic.calls == {}
    # While the lease holds, a fresh pass leaves them alone and sends only the unclaimed ones.
    assert deliver_pending(services).sent == 10
    clock.advance(seconds=LEASE)
    assert deliver_pending(services).sent == 20

    assert statuses(services) == {"sent": 30}
    assert len(aimylogic.calls) == 30 and set(aimylogic.calls_per_phone().values()) == {1}
    assert aimylogic.duplicates_ignored == 0


def test_killed_after_aimylogic_accepted_before_the_answer_was_recorded(services, aimylogic, clock, tmp_path):
    add_leads(services, 30)
    aimylogic.record_then_hang(60)  # one batch: accepted (jobs created), answer never arrives

    child = spawn_pass(services, tmp_path)
    # The other batch is answered at once and recorded SENT: batches are settled as they complete.
    wait_for(lambda: aimylogic.hanging == 1 and statuses(services).get("sent") == 10, child, tmp_path)
    kill(child)
    aimylogic.recover()

    in_flight = [lead for lead in all_leads(services) if lead.status is Status.SENDING]
    first_jobs = {entry["phone"]: job for job, entry in aimylogic.calls.items()}
    assert len(in_flight) == 10 and len(aimylogic.calls) == 20
    clock.advance(seconds=LEASE)
    report = deliver_pending(services)

    assert statuses(services) == {"sent": 30} and report.sent == 20
    # Re-sent entries = the batch in flight at the kill (10): Aimylogic had created their jobs but
    # the child died before storing the job ids, so after the lease they went out again. The
    # batch the child recorded (10) and the leads it never claimed (10) were sent exactly once.
    # The duplicate guard ignored all 10 repeats and answered with the first job ids, so each
    # phone got one call: 20 + 10 + 10 = 40 entries received, 30 calls.
    assert aimylogic.duplicates_ignored == 10
    assert len(aimylogic.entries) == 40
    assert len(aimylogic.calls) == 30 and set(aimylogic.calls_per_phone().values()) == {1}
    for lead in in_flight:
        phone = json.loads(lead.entry)["phone"]
        assert services.store.get(lead.id).job_id == first_jobs[phone]
