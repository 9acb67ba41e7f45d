"""The note a write-back puts on the CRM record: [sources.X.results] validated at start-up, rendered per language."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm2calls.config import load_policy
from crm2calls.errors import ConfigError
from crm2calls.policy import NOTE_PLACEHOLDERS
from crm2calls.writeback import render_note
from tests.conftest import FIXTURES
from tests.writeback_leads import ended_lead

NOTES = FIXTURES / "writeback"


def policy_of(tmp_path: Path, text: str):
    path = tmp_path / "leads.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path, "RU")


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        policy_of(tmp_path, text)
    return caught.value.problems


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("Called: {outcom}", "unknown placeholder {outcom}"),
        ("Called: {outcome.__class__}", "unknown placeholder {outcome.__class__}"),
        ("Called: {}", "unknown placeholder {}"),
        ("Called: {0}", "unknown placeholder {0}"),
        ("Called: {duration_s:>5}", "{duration_s} takes no format or conversion"),
        ("Called: {outcome!r}", "{outcome} takes no format or conversion"),
        ("Called: {outcome", "write a literal brace as {{ or }}"),
        ("   ", "the note is empty"),
    ],
)
def test_a_bad_note_is_refused_at_start_up_naming_the_key_and_the_placeholders(tmp_path, note, message):
    text = f'[sources.amocrm.results]\nnote = """{note}"""\n'

    [problem] = problems_of(tmp_path, text)

    assert problem.startswith("leads.toml: sources.amocrm.results.note: ")
    assert message in problem
    if "placeholder" in message:
        assert all("{" + name + "}" in problem for name in NOTE_PLACEHOLDERS)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('write_back = "yes"', "sources.amocrm.results.write_back: Not a valid boolean."),
        ('language = "de"', "sources.amocrm.results.language: Must be one of: en, ru."),
        ("notes = 'x'", "sources.amocrm.results.notes: Unknown field."),
    ],
)
def test_other_results_keys_are_checked(tmp_path, line, message):
    assert problems_of(tmp_path, f"[sources.amocrm.results]\n{line}\n") == [f"leads.toml: {message}"]


def test_the_documented_russian_example_renders_every_value(clock):
    policy = load_policy(NOTES / "results_ru.toml", "RU").source("amocrm")
    record = ended_lead("amocrm", "lead:1", clock.now)

    note = render_note(record, policy)

    assert policy.results.write_back is True
    assert note.splitlines() == [
        "Робот позвонил: разговор состоялся, есть результат.",
        "Ответ клиента: interested; разговор 95 с, попыток 2.",  # noqa: RUF001 - Russian
        "Анкета: tariff: Premium; callback: tomorrow",
        "Кампания default, 2026-11-26 08:57 UTC",
        "",
        "crm2calls job 7001",
    ]


def test_an_english_template_with_every_placeholder(clock):
    policy = load_policy(NOTES / "results_en.toml", "RU").source("hubspot")
    record = ended_lead("hubspot", "1501", clock.now, "not_reached")

    note = render_note(record, policy)

    assert note == (
        "Robot call noAnswer / - (0 s, 3 tries) default 2026-11-26 08:58 UTC:\n\ncrm2calls job 7002"
    )


@pytest.mark.parametrize(
    ("region", "language", "first_line"),
    [
        ("RU", None, "Звонок робота (Aimylogic): не дозвонились: нет ответа"),
        ("KZ", None, "Звонок робота (Aimylogic): не дозвонились: нет ответа"),
        ("US", None, "Robot call (Aimylogic): not reached: no answer"),
        ("DE", None, "Robot call (Aimylogic): not reached: no answer"),
        ("RU", "en", "Robot call (Aimylogic): not reached: no answer"),
        ("US", "ru", "Звонок робота (Aimylogic): не дозвонились: нет ответа"),
    ],
)
def test_the_default_note_speaks_the_teams_language(tmp_path, clock, region, language, first_line):
    extra = f'\n[sources.pipedrive.results]\nlanguage = "{language}"\n' if language else ""
    policy = policy_of(tmp_path, f'[sources.pipedrive]\nregion = "{region}"\n{extra}').source("pipedrive")

    note = render_note(ended_lead("pipedrive", "5", clock.now, "not_reached"), policy)

    assert note.splitlines()[0] == first_line
    assert note.endswith("crm2calls job 7002")
    assert "\n\n\n" not in note  # an empty report leaves no run of blank lines


def test_a_job_that_is_not_known_is_named_by_the_lead(clock):
    policy = load_policy(NOTES / "results_en.toml", "RU").source("hubspot")
    record = ended_lead("hubspot", "1501", clock.now, outcome={"job_id": None}, job_id=None)

    assert render_note(record, policy).endswith(f"crm2calls job lead-{record.id}")
