"""Hostile input at every webhook and preview endpoint: never a 5xx, a JSON 4xx, nothing half-stored.

Every source registered in SOURCES is covered with each of its own content types, so a new CRM is
fuzzed the day it is registered. Two apps: one where every source authenticates with the shared key
(so bodies reach the parsers) and one where every CRM credential is configured (so each source's own
authentication reads the hostile request). Hypothesis runs derandomized without a database: CI runs
the same examples every time.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
from dataclasses import dataclass, fields
from datetime import timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm2calls.config import CrmSettings, Settings
from crm2calls.model import Status
from crm2calls.sources import SOURCES
from crm2calls.sources.base import FORM, JSON
from tests.conftest import FIXTURES, SECRET, FakeClock
from tests.emulators.base import LocalServer

XML_TYPES = frozenset({"text/xml", "application/xml", "application/soap+xml"})
SOURCE_NAMES = sorted(SOURCES)


def content_types(name: str) -> list[str]:
    """The content types a source takes, read from its class."""
    module, cls = SOURCES[name].split(":")
    return sorted(getattr(import_module(module), cls).content_types)


ENDPOINTS = [(name, ct) for name in SOURCE_NAMES for ct in content_types(name)]
XML_ENDPOINTS = [(name, ct) for name, ct in ENDPOINTS if ct in XML_TYPES]
KINDS = ("webhooks", "preview")
LIMIT = 1024 * 1024  # MAX_BODY_BYTES of the fuzzed apps (the default)


def family(content_type: str) -> str:
    """json, form or xml."""
    return "xml" if content_type in XML_TYPES else "form" if content_type == FORM else "json"


def fixture_bodies(name: str, kind: str) -> list[bytes]:
    """A source's webhook fixtures of one family (its own realistic bodies, to be mutated)."""
    suffix = {"json": ".json", "form": ".form", "xml": ".xml"}[kind]
    folder = FIXTURES / name
    return [path.read_bytes() for path in sorted(folder.glob(f"*{suffix}"))] if folder.is_dir() else []


# Hostile bodies by name: each is sent to every endpoint at each of its content types.

DEEP = 100_000
HOSTILE: dict[str, bytes] = {
    "empty": b"",
    "nul": b"\x00",
    "bom_only": b"\xef\xbb\xbf",
    "bom_object": b'\xef\xbb\xbf{"phone": "+7 912 000-42-42"}',
    "utf16_bom": '{"phone": "+7 912 000-42-42"}'.encode("utf-16"),
    "broken_utf8": b'{"phone": "\xff\xfe\xc3"}',
    "overlong_utf8": b'{"name": "\xc0\xaf"}',
    "lone_surrogate": b'{"phone": "+79120004242", "id": "\\ud800"}',
    "lone_low_surrogate_key": b'{"\\udc00": 1, "phone": "+79120004242"}',
    "surrogate_pair": b'{"phone": "+79120004242", "name": "\\ud83d\\ude00"}',
    "nan": b'{"phone": NaN}',
    "infinity": b'[{"phone": Infinity, "id": -Infinity}]',
    "huge_float": b'{"phone": 1e400, "id": 1e400, "timezone": -1e400}',
    "huge_int": b'{"id": ' + b"9" * 5000 + b', "phone": "+79120004242"}',
    "int_at_limit": b'{"id": ' + b"9" * 4300 + b', "phone": "+79120004242"}',
    "duplicate_keys": b'{"phone": "+79120004242", "phone": {"a": 1}, "id": 1, "id": [1]}',
    "deep_arrays": b"[" * DEEP,
    "deep_objects": b'{"a":' * DEEP,
    "deep_closed": b"[" * 900 + b"]" * 900,
    "array_20000_objects": b"[" + b",".join([b"{}"] * 20_000) + b"]",
    "array_20000_numbers": b"[" + b",".join([b"0"] * 20_000) + b"]",
    "typed_values": b'{"phone": ["+79120004242"], "id": {"x": 1}, "name": 5, "timezone": true, "city": []}',
    "long_string": b'{"phone": "+79120004242", "name": "' + b"x" * 60_000 + b'"}',
    "top_level_string": b'"+79120004242"',
    "top_level_null": b"null",
    "form_bad_escape": b"a=%ZZ",
    "form_truncated_escape": b"phone=%2",
    "form_deep_name": b"a" + b"[b]" * 10_000 + b"=1",
    "form_ampersands": b"&&&",
    "form_equals": b"=",
    "form_empty_pairs": b"&=&=&",
    "form_unbalanced": b"leads[add[0]=1&a]=2&[=3",
    "form_scalar_then_nested": b"leads=1&leads[add][0][id]=2&leads[add]=3&leads[add][0][id][x]=4",
    "form_20000_fields": b"&".join([b"a[]=1"] * 20_000),
    "form_encoded_surrogate": b"event=ONCRMLEADADD&data[FIELDS][ID]=%ED%A0%80",
    "form_huge_id": b"event=ONCRMLEADADD&data[FIELDS][ID]=" + b"9" * 5000 + b"&leads[add][0][id]=" + b"9" * 5000,
    "form_negative_index": b"leads[add][-1][id]=1&leads[add][99999999999999999999][id]=2",
    "xml_billion_laughs": (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            b"<!ENTITY %s \"%s\">" % (bytes([98 + i]), (b"&%s;" % bytes([97 + i])) * 10) for i in range(9)
        )
        + b"]><l>&j;</l>"
    ),
    "xml_quadratic": (
        b'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY x "' + b"x" * 20_000 + b'">]><q>' + b"&x;" * 2000 + b"</q>"
    ),
    "xml_xxe_file": b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY x SYSTEM "file:///etc/passwd">]><f>&x;</f>',
    "xml_parameter_entity": b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY % e SYSTEM "file:///etc/passwd"> %e;]><p/>',
    "xml_deep": b"<a>" * DEEP,
    "xml_deep_closed": b"<a>" * 2000 + b"</a>" * 2000,
    "xml_declared_utf16": b'<?xml version="1.0" encoding="UTF-16"?><a>x</a>',
    "xml_unknown_encoding": b'<?xml version="1.0" encoding="x-nonsense"?><a>x</a>',
    "xml_not_closed": b"<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'>",
    "xml_unbound_prefix": b"<sf:Lead><sf:Phone>+79120004242</sf:Phone></sf:Lead>",
}


# The two apps under fuzzing, built once per module (hypothesis runs hundreds of examples).


@dataclass
class Target:
    """An app under test: its client, its services and how a request authenticates to it."""

    client: Any
    services: Any
    clock: FakeClock
    key: str  # query string that carries the shared key ("" for none)


def every_credential() -> CrmSettings:
    """Every CRM secret and account id set (hex strings, valid for every kind); API hosts on a closed port."""
    values: dict[str, Any] = {}
    for item in fields(CrmSettings):
        if item.name.endswith(("_url", "_domain")):
            values[item.name] = "http://127.0.0.1:9/rest/1/fuzz/"
        elif isinstance(item.default, tuple):
            values[item.name] = (item.name.encode().hex(),)
        elif item.default is None:
            values[item.name] = item.name.encode().hex()
    return CrmSettings(**values)


def make_target(policy, folder: Path, key: str, **overrides: Any) -> Target:
    from app import create_app
    from crm2calls.services import Services

    clock = FakeClock()
    settings = Settings(
        policy=policy,
        webhook_secrets=(SECRET,),
        leads_store=f"sqlite:///{folder / 'leads.db'}",
        max_body_bytes=LIMIT,
        **overrides,
    )
    services = Services(settings, clock=clock)
    return Target(create_app(services=services).test_client(), services, clock, key)


@pytest.fixture(scope="module")
def shared(shipped_policy, tmp_path_factory) -> Target:
    """No CRM credential configured: the shared key authenticates every source, so bodies reach the parsers."""
    return make_target(shipped_policy, tmp_path_factory.mktemp("shared"), f"?key={SECRET}")


@pytest.fixture(scope="module")
def guarded(shipped_policy, tmp_path_factory) -> Target:
    """Every CRM credential configured: each source's own authentication reads the hostile request."""
    return make_target(shipped_policy, tmp_path_factory.mktemp("guarded"), f"?key={SECRET}", crm=every_credential())


@pytest.fixture(scope="module")
def targets(shared, guarded) -> dict[str, Target]:
    return {"shared": shared, "guarded": guarded}


def post(target: Target, kind: str, source: str, body: bytes, content_type: str, *, key: bool = True,
         headers: dict[str, str] | None = None):
    """POST through the app, then check the invariants every response keeps; return the response."""
    target.clock.advance(seconds=1)  # each request's records are exactly those created at this instant
    sent_at = target.clock.now
    before = target.services.store.count_by_status()
    response = target.client.post(
        f"/{kind}/{source}{target.key if key else ''}", data=body, content_type=content_type, headers=headers or {}
    )
    assert_no_harm(target, response, before, sent_at, kind)
    return response


def assert_no_harm(target: Target, response, before: dict[str, int], sent_at, kind: str) -> None:
    """< 500; a 4xx is a JSON error and changes nothing; a 2xx stores only whole records."""
    status = response.status_code
    assert status < 500, response.get_data()[:500]
    store = target.services.store
    after = store.count_by_status()
    if status >= 400:
        assert response.is_json, response.get_data()[:200]
        body = response.get_json()
        assert isinstance(body["error"], str) and isinstance(body["message"], str) and body["message"]
        assert after == before, "a refused request changed the store"
        return
    if kind == "preview":
        assert after == before, "a preview stored something"
        return
    new = store.list(since=sent_at, limit=10_000)
    assert sum(after.values()) - sum(before.values()) == len(new)
    for record in new:
        assert_whole(record)


def assert_whole(record) -> None:
    """A stored record is complete for its status: nothing half-written."""
    assert record.key.startswith(f"{record.source}:") and record.history
    if record.status is Status.RECEIVED:
        assert record.entry is None and isinstance(json.loads(record.raw), dict)
    elif record.status in (Status.PENDING, Status.DUPLICATE):
        entry = json.loads(record.entry)
        assert entry["phone"].isdigit() and record.phone_key and record.phone_masked
        assert record.raw is None
    else:
        assert record.status is Status.REJECTED and record.last_error and record.raw is None


# Named hostile bodies: every endpoint, every content type it takes, both apps.


@pytest.mark.parametrize("body_name", sorted(HOSTILE))
@pytest.mark.parametrize(("source", "content_type"), ENDPOINTS)
def test_named_hostile_bodies_never_hurt(targets, source, content_type, body_name):
    for target in targets.values():
        for kind in KINDS:
            post(target, kind, source, HOSTILE[body_name], content_type)


@pytest.mark.parametrize("body_name", sorted(HOSTILE))
@pytest.mark.parametrize(("source", "content_type"), ENDPOINTS)
def test_without_a_key_hostile_bodies_are_401(shared, source, content_type, body_name):
    for kind in KINDS:
        response = post(shared, kind, source, HOSTILE[body_name], content_type, key=False)
        assert response.status_code == 401


def test_a_lone_surrogate_in_json_is_malformed_not_a_crash(shared):
    # Regression: json.loads accepts "\ud800"; the hash, the store and the log encoder did not.
    for source, content_type in ENDPOINTS:
        if content_type == JSON:
            response = post(shared, "webhooks", source, HOSTILE["lone_surrogate"], content_type)
            assert response.status_code == 400 and response.get_json()["error"] == "malformed"


# Property tests: hypothesis draws the endpoint, the app and the body.

FUZZ = settings(
    max_examples=120,
    deadline=timedelta(seconds=5),  # each example is one request: a parser blow-up shows as a deadline error
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
endpoints = st.sampled_from(ENDPOINTS)
app_names = st.sampled_from(["shared", "guarded"])
kinds = st.sampled_from(KINDS)

RAW_JSON_VALUES = [
    "1e400", "-1e400", "9" * 4300, "9" * 4301, "-0", "0.5e-400", "NaN", "Infinity", "-Infinity", "null", "true",
    "[]", "{}", '""', '"\\ud800"', '"\\udfff"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\u202e"', '" "',
    '"+7 912 000-42-42"', '"8 (912) 000-42-42"', '"79120004242"', '"12345678901234567890123"',
    '"Europe/Moscow"', '"Asia/Nowhere"', '"UTC+99:99"', '"GMT-00:00"', '"../../etc/passwd"', '"%s"' % ("x" * 5000),
    "[" * 2000, "[" * 900 + "]" * 900, "[" + ",".join(["{}"] * 2000) + "]", '{"a": 1, "a": 2}',
]
json_scalars = st.one_of(
    st.sampled_from(RAW_JSON_VALUES),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=30).map(lambda text: json.dumps(text, ensure_ascii=False)),
)
json_docs = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(st.text(max_size=12), children), max_size=6).map(
            lambda pairs: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=25,
)
MARK = "\u0000hostile\u0000"


def json_paths(doc: Any) -> list[tuple]:
    """Every path to a value inside a JSON document (the root is ())."""
    paths, stack = [], [((), doc)]
    while stack:
        path, value = stack.pop()
        paths.append(path)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend(((*path, key), item) for key, item in items)
    return paths


def with_raw_value(doc: Any, path: tuple, raw: str) -> bytes:
    """The document with the value at `path` replaced by raw JSON text (which may be invalid)."""
    if not path:
        return raw.encode("utf-8", "surrogatepass")
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = MARK
    return json.dumps(doc, ensure_ascii=False).replace(json.dumps(MARK, ensure_ascii=False), raw, 1).encode()


@st.composite
def mutated_json(draw, source: str) -> bytes:
    """A source's JSON fixture with one value replaced by hostile JSON text, or a key duplicated."""
    bodies = fixture_bodies(source, "json")
    parsed = []
    for body in bodies:
        try:
            parsed.append(json.loads(body.decode("utf-8-sig")))
        except ValueError:
            continue  # the fixture folder also holds broken bodies; they are hostile enough as they are
    if not parsed:
        return draw(json_docs).encode("utf-8", "surrogatepass")
    doc = draw(st.sampled_from(parsed))
    path = draw(st.sampled_from(json_paths(doc)))
    raw = draw(st.one_of(json_scalars, json_docs))
    return with_raw_value(doc, path, raw)


FORM_VALUES = [
    b"", b"%ZZ", b"%", b"%2", b"%FF", b"%ED%A0%80", b"%C0%AF", b"%00", b"9" * 5000, b"-1", b"0", b"00", b"1e400",
    b"NaN", b"%2B7+912+000-42-42", b"8+(912)+000-42-42", b"x" * 5000, b"[]", b"a=b=c", b"%5B%5D",
]
FORM_NAME_SUFFIXES = [b"[]", b"[x]", b"[0]", b"[-1]", b"[", b"]", b"[a]b", b"[b]" * 40, b"%5B0%5D", b"[%FF]"]


@st.composite
def mutated_form(draw, source: str) -> bytes:
    """A source's form fixture with a value or a name broken, or hostile fields added."""
    bodies = fixture_bodies(source, "form") or [b"phone=%2B79120004242&name=x"]
    pieces = draw(st.sampled_from(bodies)).rstrip(b"\n").split(b"&")
    index = draw(st.integers(0, len(pieces) - 1))
    name, _, value = pieces[index].partition(b"=")
    operation = draw(st.sampled_from(["value", "name", "append", "truncate"]))
    if operation == "value":
        pieces[index] = name + b"=" + draw(st.sampled_from(FORM_VALUES) | st.binary(max_size=20))
    elif operation == "name":
        pieces[index] = name + draw(st.sampled_from(FORM_NAME_SUFFIXES)) + b"=" + value
    elif operation == "append":
        pieces.append(draw(st.sampled_from([b"&&", b"=", b"=x", name + b"[0]=1", name + b"=1"])))
    body = b"&".join(pieces)
    if operation == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    return body


@st.composite
def mutated_xml(draw, source: str, bait_url: str) -> bytes:
    """A source's XML fixture with a DTD (entities, XXE to a local bait server) or hostile text inside."""
    bodies = [b for b in fixture_bodies(source, "xml") if b"<!DOCTYPE" not in b] or [b"<a>x</a>"]
    body = draw(st.sampled_from(bodies))
    declaration_end = body.find(b"?>") + 2 if body.startswith(b"<?xml") else 0
    head, rest = body[:declaration_end], body[declaration_end:]
    dtds = [
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "' + bait_url.encode() + b'/entity">]>',
        b'<!DOCTYPE x SYSTEM "' + bait_url.encode() + b'/dtd">',
        b'<!DOCTYPE x [<!ENTITY % p SYSTEM "' + bait_url.encode() + b'/param"> %p;]>',
        b'<!DOCTYPE x [<!ENTITY e "' + b"e" * 1000 + b'">]>',
    ]
    texts = [b"&e;", b"&e;" * 1000, b"&undefined;", b"<![CDATA[<x>]]>", b"\xff", b"&#0;", b"&#xD800;", b"9" * 5000,
             b"<x xmlns:sf='urn:x'/>", b"</mismatched>", b"<?pi x?>"]
    if draw(st.booleans()):
        head += draw(st.sampled_from(dtds))
    starts = [i + 1 for i in range(len(rest)) if rest[i : i + 1] == b">" and rest[i + 1 : i + 2] not in (b"<", b"")]
    if starts:
        at = draw(st.sampled_from(starts))
        end = rest.find(b"<", at)
        rest = rest[:at] + draw(st.sampled_from(texts)) + rest[end:]
    return head + rest


@pytest.fixture(scope="module")
def bait():
    """A local HTTP server an XXE would fetch from: its hit count must stay zero."""
    hits: list[str] = []

    def app(environ, start_response):
        hits.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "application/xml-dtd")])
        return [b'<!ENTITY leak "leaked">']

    with LocalServer(app) as server:
        server.hits = hits
        yield server


@FUZZ
@given(data=st.data())
def test_arbitrary_bytes_never_hurt(targets, data):
    source, content_type = data.draw(endpoints)
    body = data.draw(st.binary(max_size=2048) | st.text(max_size=512).map(lambda t: t.encode("utf-8", "surrogatepass")))
    post(targets[data.draw(app_names)], data.draw(kinds), source, body, content_type)


@FUZZ
@given(data=st.data())
def test_hostile_json_documents_never_hurt(targets, data):
    source, content_type = data.draw(endpoints)
    body = data.draw(json_docs).encode("utf-8", "surrogatepass")
    post(targets[data.draw(app_names)], data.draw(kinds), source, body, content_type)


@FUZZ
@given(data=st.data())
def test_mutated_fixtures_never_hurt(targets, bait, data):
    source, content_type = data.draw(endpoints)
    strategy = {
        "json": mutated_json(source),
        "form": mutated_form(source),
        "xml": mutated_xml(source, bait.url),
    }[family(content_type)]
    post(targets[data.draw(app_names)], data.draw(kinds), source, data.draw(strategy), content_type)
    assert bait.hits == [], "an XML parser fetched an external entity or DTD"


HEADER_NAMES = [
    "X-Webhook-Secret", "Authorization", "X-HubSpot-Signature", "X-HubSpot-Signature-v3",
    "X-HubSpot-Request-Timestamp", "close-sig-hash", "close-sig-timestamp", "X-Amocrm-Requestid", "SOAPAction",
    "X-Forwarded-Proto", "X-Forwarded-Host", "Content-Encoding", "Host",
]
HEADER_VALUES = [
    "", " ", "0", "-1", "1e400", "nan", "9" * 16, "9" * 19, "9" * 5000, "253402300800000", "\xff\xfe", "zz" * 32,
    "Basic", "Basic !!!", "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
    "Basic " + base64.b64encode(b"x").decode(),
    "Basic " + base64.b64encode(b"user:" + b"p" * 4000).decode(), "Bearer ", "gzip", "deflate", "[::1", "a:99999",
    "sha256=" + "0" * 64, "v1=" + "a" * 64, SECRET + "\x00",
]
header_values = st.sampled_from(HEADER_VALUES) | st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40
)


@FUZZ
@given(data=st.data())
def test_hostile_headers_never_hurt(targets, data):
    source, content_type = data.draw(endpoints)
    headers = data.draw(st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, min_size=1, max_size=4))
    bodies = fixture_bodies(source, family(content_type)) or [b"{}"]
    body = data.draw(st.sampled_from(bodies))
    post(targets[data.draw(app_names)], "webhooks", source, body, content_type, key=data.draw(st.booleans()),
         headers=headers)


# XML: no DTD, no entity, no network.


@pytest.mark.parametrize(("source", "content_type"), XML_ENDPOINTS)
def test_xml_bombs_and_external_entities_are_refused_fast_and_fetch_nothing(shared, bait, source, content_type):
    bodies = [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "' + bait.url.encode() + b'/e">]><x>&e;</x>',
        b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "' + bait.url.encode() + b'/dtd"><x/>',
        HOSTILE["xml_billion_laughs"],
        HOSTILE["xml_quadratic"],
        HOSTILE["xml_xxe_file"],
        *[b for b in fixture_bodies(source, "xml") if b"<!DOCTYPE" in b],
    ]
    for body in bodies:
        response = post(shared, "webhooks", source, body, content_type)
        assert response.status_code == 400
        assert b"leaked" not in response.get_data() and b"root:" not in response.get_data()
    assert bait.hits == []


# Size, content type, method.


@pytest.mark.parametrize(("source", "content_type"), ENDPOINTS)
@pytest.mark.parametrize("key", [True, False], ids=["with-key", "without-key"])
def test_a_body_over_the_limit_is_413_before_anything_else(shared, source, content_type, key):
    for kind in KINDS:
        for body in (b"{" * (LIMIT + 1), b"\xff" * (LIMIT + 1)):  # unparseable, unauthenticated: 413 first
            response = post(shared, kind, source, body, content_type, key=key)
            assert response.status_code == 413
            assert response.get_json()["error"] == "request_entity_too_large"


def raw_post(url: str, path: str, body: bytes, content_type: str, *, chunked: bool) -> tuple[int, dict]:
    """POST over a real socket, with Content-Length or chunked without it."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        if chunked:
            chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
            conn.request("POST", path, body=chunks, headers={"Content-Type": content_type}, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}") if "json" in (
            response.getheader("Content-Type") or ""
        ) else {}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(shared):
    """The shared app on a real HTTP server (werkzeug's, which de-chunks like gunicorn does)."""
    with LocalServer(shared.client.application) as server:
        yield server


@pytest.mark.parametrize(("source", "content_type"), ENDPOINTS)
def test_a_chunked_body_over_the_limit_is_413_not_cut_and_parsed(shared, served, source, content_type):
    # Werkzeug stops reading a body without Content-Length at MAX_CONTENT_LENGTH and returns what it read,
    # without an error; parsed, that prefix could be a valid but partial batch. It must be a 413.
    bodies = fixture_bodies(source, family(content_type)) or [b'{"phone": "+79120004242"}']
    padded = bodies[0] + b" " * (LIMIT + 1 - len(bodies[0]))  # whitespace after the document: valid until cut
    before = shared.services.store.count_by_status()
    status, body = raw_post(served.url, f"/webhooks/{source}?key={SECRET}", padded, content_type, chunked=True)
    assert status == 413 and body["error"] == "request_entity_too_large"
    assert shared.services.store.count_by_status() == before


def test_a_chunked_body_under_the_limit_is_read_whole(shared, served):
    body = (FIXTURES / "generic" / "one_lead.json").read_bytes()
    status, answer = raw_post(served.url, f"/webhooks/generic?key={SECRET}", body, JSON, chunked=True)
    assert status == 202 and answer["leads"][0]["ref"] == "lead-1001"


def test_a_declared_length_over_the_limit_is_refused_without_reading_the_body(served):
    host, port = served.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.putrequest("POST", f"/webhooks/generic?key={SECRET}")
        conn.putheader("Content-Type", JSON)
        conn.putheader("Content-Length", str(10**9))  # a gigabyte announced, nothing sent
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"] == "request_entity_too_large"
    finally:
        conn.close()


WRONG_TYPES = ["text/plain", "application/octet-stream", "multipart/form-data; boundary=x", "application/javascript",
               "", *sorted({ct for _, ct in ENDPOINTS} | {JSON, FORM, "text/xml"})]


@pytest.mark.parametrize("source", SOURCE_NAMES)
def test_a_content_type_the_source_does_not_take_is_415(shared, source):
    taken = set(content_types(source))
    for wrong in WRONG_TYPES:
        if wrong.split(";")[0] in taken:
            continue
        body = (fixture_bodies(source, "json") + fixture_bodies(source, "form") + [b"{}"])[0]
        for kind in KINDS:
            response = post(shared, kind, source, body, wrong)
            assert response.status_code == 415, (wrong, response.get_data())
            assert response.get_json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize("source", SOURCE_NAMES)
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "HEAD"])
def test_methods_other_than_post_are_405(shared, source, method):
    for kind in KINDS:
        response = shared.client.open(f"/{kind}/{source}?key={SECRET}", method=method, data=b"{}")
        assert response.status_code == 405
        assert "POST" in response.headers["Allow"]
        if method != "HEAD":
            assert response.get_json()["error"] == "method_not_allowed"


def test_options_answers_the_allowed_methods(shared):
    # Flask answers OPTIONS itself (200, Allow: POST, OPTIONS): correct HTTP, and it reaches no view.
    response = shared.client.options(f"/webhooks/generic?key={SECRET}")
    assert response.status_code == 200 and "POST" in response.headers["Allow"]


def test_the_guarded_app_really_has_every_credential(guarded):
    # Without this, "guarded" could silently fall back to the shared key and fuzz nothing new.
    crm = guarded.services.settings.crm
    assert all(getattr(crm, item.name) for item in fields(CrmSettings))
