"""Write-back on Lambda: the scheduled follow_up, through Zappa's own handler, with the store in DynamoDB (moto)."""

from __future__ import annotations

import time

from crm2calls.clock import utcnow
from tests.emulators.amocrm import AmoCrmEmulator
from tests.servers import aws_env, moto_endpoint  # noqa: F401 - fixtures
from tests.test_lambda_handler import (  # noqa: F401 - fixtures
    aws_module,
    created_table,
    invoke,
    isolated_process,
    lambda_api,
    module_lambda_api,
    module_store,
    scheduled_event,
    settings_dir,
    store,
)
from tests.writeback_leads import ended_lead


def test_the_scheduled_follow_up_writes_the_outcome_once(invoke, store, monkeypatch):  # noqa: F811
    with AmoCrmEmulator() as amo:
        amo.add_lead({"id": 31000001, "name": "Site form", "created_at": int(time.time())})
        monkeypatch.setenv("AMOCRM_BASE_URL", amo.url)
        monkeypatch.setenv("AMOCRM_TOKEN", amo.token)
        record = ended_lead("amocrm", "lead:31000001", utcnow())
        store.insert(record)

        first = invoke(scheduled_event("follow_up"))
        again = invoke(scheduled_event("follow_up"))

    [note] = amo.notes
    assert "write_back 1" in first and "nothing due" in again
    assert note["params"]["text"].endswith("crm2calls job 7001")
    stored = store.get(record.id)
    assert "write_back" not in stored.work and stored.outcome["written"]["id"] == str(note["id"])
