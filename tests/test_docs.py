"""The documents cannot drift: every relative link and anchor resolves, the README's quick start runs."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCUMENTS = sorted([ROOT / "README.md", ROOT / "UPGRADING.md", *(ROOT / "docs").rglob("*.md")])
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_TOML_DOC_PATH = re.compile(r"(?<![\w/.-])((?:docs|tests|bench)/[\w./-]+\.md(?:#[\w-]+)?)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match[2])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def links_of(path: Path) -> list[str]:
    """Relative link targets of a Markdown file, outside code (external and mail links left out)."""
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                targets.append(target)
    return targets


def broken(base: Path, target: str) -> str | None:
    """Why a relative target does not resolve from the directory `base`, or None."""
    path_part, _, anchor = target.partition("#")
    resolved = (base / path_part).resolve() if path_part else None
    if resolved is not None:
        if not resolved.is_relative_to(ROOT):
            return f"{target}: points outside the repository"
        if not resolved.exists():
            return f"{target}: no such file"
    if anchor:
        document = resolved or None
        if document is None or document.suffix != ".md":
            return None if document is not None else f"{target}: an anchor needs a Markdown file"
        if anchor not in anchors_of(document):
            return f"{target}: no heading with the anchor #{anchor} in {document.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(document):
    problems = []
    for target in links_of(document):
        if target.startswith("#"):
            anchor = target[1:]
            if anchor not in anchors_of(document):
                problems.append(f"{target}: no such heading here")
        elif problem := broken(document.parent, target):
            problems.append(problem)
    assert not problems, problems


def test_the_paths_leads_toml_cites_exist():
    cited = [m for line in (ROOT / "leads.toml").read_text(encoding="utf-8").splitlines()
             if "#" in line for m in _TOML_DOC_PATH.findall(line.split("#", 1)[1])]  # fmt: skip
    assert "docs/crm/hubspot.md" in cited  # the pattern finds what the file cites
    problems = [problem for target in cited if (problem := broken(ROOT, target))]
    assert not problems, problems


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("Durability: no lead lost, none called twice", "durability-no-lead-lost-none-called-twice"),
        ("amoCRM / Kommo", "amocrm--kommo"),
        ("The mapping file (`leads.toml`)", "the-mapping-file-leadstoml"),
        ('3. Workflow "Send a webhook" (optional)', "3-workflow-send-a-webhook-optional"),
        ("What it costs at 10,000 leads a month", "what-it-costs-at-10000-leads-a-month"),
        ("Телефоны и зоны", "телефоны-и-зоны"),
        ("[Close](close.md) payload", "close-payload"),
    ],
)
def test_anchors_follow_githubs_slug_rules(text, slug):
    assert github_slug(text) == slug


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    assert broken(ROOT / "docs", "crm/nope.md") == "crm/nope.md: no such file"
    assert "no heading" in broken(ROOT / "docs", "operations.md#no-such-heading")
    assert "outside the repository" in broken(ROOT, "../shared/docs/")
    assert broken(ROOT / "docs", "operations.md#lead-statuses") is None
    assert links_of(ROOT / "README.md")  # the README has links, and the pattern sees them


# The README's quick start, run as written.


def readme_blocks(heading: str) -> list[str]:
    """The fenced code blocks of one README section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```[a-z]*\n(.*?)```", section, re.DOTALL)


def curl_of(block: str) -> tuple[str, dict[str, str], bytes, str]:
    """(path, headers, body, the reply shown in the comment) of the README's first curl command."""
    command, _, rest = block.replace("\\\n", " ").partition("\n")
    words = shlex.split(command)
    assert words[0] == "curl"
    url = next(w for w in words if w.startswith("localhost:"))
    headers = dict(w.split(": ", 1) for w in (words[i + 1] for i, w in enumerate(words) if w == "-H"))
    body = words[words.index("-d") + 1].encode("utf-8")
    reply = rest.strip().removeprefix("# ")
    return "/" + url.split("/", 1)[1], headers, body, reply


@pytest.fixture
def dev_client(settings, clock):
    """The app as `make run` serves it: development mode, no WEBHOOK_SECRET, dry run."""
    from app import create_app
    from crm2calls.services import Services

    services = Services(replace(settings, webhook_secrets=(), dev_mode=True), clock=clock)
    return create_app(services=services).test_client()


def test_the_quick_start_curl_gets_the_reply_it_shows(dev_client):
    path, headers, body, reply = curl_of(next(b for b in readme_blocks("Quick start") if "curl" in b))
    response = dev_client.post(path, data=body, headers=headers)
    assert response.status_code == 202
    lead_id = response.get_json()["leads"][0]["lead_id"]
    assert response.get_data(as_text=True).strip() == reply.replace('"..."', f'"{lead_id}"')


def test_the_tour_preview_answers_the_addphones_body_unescaped(dev_client):
    block = next(b for b in readme_blocks("A first-lead tour") if "/preview/generic" in b)
    path, headers, body, _ = curl_of(block.strip() + "\n")
    response = dev_client.post(path, data=body, headers=headers)
    assert response.status_code == 200
    [entry] = response.get_json()["addPhones"]
    assert entry["phone"] == "79123456789" and entry["gmtZone"] == "Asia/Yekaterinburg"
    assert "Алексей" in response.get_data(as_text=True)


def test_the_tour_fixtures_preview_without_a_crm(dev_client):
    block = next(b for b in readme_blocks("A first-lead tour") if "tests/fixtures" in b)
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    assert len(commands) >= 2
    for words in commands:
        url = next(w for w in words if w.startswith("localhost:"))
        [content_type] = [words[i + 1].split(": ", 1)[1] for i, w in enumerate(words) if w == "-H"]
        fixture = ROOT / words[words.index("--data-binary") + 1].removeprefix("@")
        response = dev_client.post(
            "/" + url.split("/", 1)[1], data=fixture.read_bytes(), headers={"Content-Type": content_type}
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["addPhones"], response.get_json()


def flask_commands() -> list[tuple[str, list[str]]]:
    """(document, words after `--app app`) of every `.venv/bin/flask` command in the README and docs/."""
    found = []
    for document in DOCUMENTS:
        for line in document.read_text(encoding="utf-8").splitlines():
            for match in re.finditer(r"\.venv/bin/flask --app app ([^`#|\n]*)", line):
                found.append((document.relative_to(ROOT).as_posix(), match[1].split()))
    return found


def test_every_documented_command_and_option_exists(app):
    from flask.cli import routes_command, run_command, shell_command

    builtins = {"run": run_command, "shell": shell_command, "routes": routes_command}
    commands = flask_commands()
    assert any(words[:2] == ["config", "check"] for _, words in commands)
    problems = []
    for document, words in commands:
        command = builtins.get(words[0]) or app.cli.get_command(None, words[0])
        depth = 1
        while command is not None and hasattr(command, "commands") and depth < len(words):
            command, depth = command.get_command(None, words[depth]), depth + 1
        path = words[:depth]
        if command is None or hasattr(command, "commands"):
            problems.append(f"{document}: no command `{' '.join(words[:2])}`")
            continue
        options = {opt for param in command.params for opt in param.opts} | {"--help"}
        for word in words:
            option = word.strip("[]").split("=", 1)[0]
            if option.startswith("--") and option not in options:
                problems.append(f"{document}: `{' '.join(path)}` has no option {option}")
    assert not problems, problems


def test_no_document_names_a_bare_flask_command():
    """Every section says .venv/bin/flask, so a reader without an activated venv can copy any line."""
    bare = [
        f"{document.relative_to(ROOT)}: {line.strip()}"
        for document in DOCUMENTS
        for line in document.read_text(encoding="utf-8").splitlines()
        if re.search(r"(?<![/\w])flask --app", line)
    ]
    assert not bare, bare


def test_the_make_targets_the_documents_name_exist():
    makefiles = (ROOT / "Makefile").read_text() + (ROOT / "mk" / "package.mk").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefiles, re.MULTILINE))
    named = {
        m for d in DOCUMENTS for m in re.findall(r"(?:`|^\s*)make ([a-z][\w-]*)", d.read_text(encoding="utf-8"), re.M)
    }
    assert {"run", "test"} <= named
    assert named <= targets, named - targets
