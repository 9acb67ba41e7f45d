"""The PHP bracket form parser: real amoCRM/Bitrix24 bodies, PHP's array rules, and what it refuses."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm2calls.errors import MalformedRequestError
from crm2calls.formdata import MAX_DEPTH, MAX_FIELDS, parse_php_form, php_list
from tests.conftest import FIXTURES


def test_a_real_shaped_amocrm_contact_body():
    form = parse_php_form((FIXTURES / "amocrm" / "contacts_add.form").read_bytes())
    assert form["account"] == {
        "subdomain": "etesttask",
        "id": "32427762",
        "_links": {"self": "https://etesttask.amocrm.ru"},
    }
    first, company = php_list(form["contacts"]["add"])
    assert first["name"] == "Анна Смирнова" and company["type"] == "company"
    phone = php_list(first["custom_fields"])[1]
    assert phone["code"] == "PHONE" and phone["name"] == "Телефон"
    # contacts[add][0][custom_fields][1][values][1][value]: seven levels deep
    assert form["contacts"]["add"]["0"]["custom_fields"]["1"]["values"]["1"]["value"] == "+7 343 212-34-56 доб. 12"
    assert [v["enum"] for v in php_list(phone["values"])] == ["718321", "718323"]


def test_several_entities_and_actions_in_one_body():
    form = parse_php_form((FIXTURES / "amocrm" / "mixed.form").read_bytes())
    assert set(form) == {"account", "leads", "contacts"}
    assert set(form["leads"]) == {"add", "update", "delete"}
    assert form["leads"]["add"]["0"]["name"] == "Заявка из квиза"
    assert form["contacts"]["add"]["0"]["custom_fields"]["0"]["values"]["0"]["value"] == "+7 912 345 67 89"


def test_a_bitrix24_event_body():
    form = parse_php_form((FIXTURES / "bitrix24" / "lead_add.form").read_bytes())
    assert form["event"] == "ONCRMLEADADD"
    assert form["data"] == {"FIELDS": {"ID": "1573"}}
    assert form["auth"]["client_endpoint"] == "https://example.bitrix24.ru/rest/"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", {}),
        (b"a", {"a": ""}),
        (b"a=", {"a": ""}),
        (b"&&a=1&", {"a": "1"}),
        (b"a=b=c", {"a": "b=c"}),
        (b"name=%D0%90%D0%BD%D0%BD%D0%B0+%D0%AF", {"name": "Анна Я"}),
        (b"p=%2B7+912", {"p": "+7 912"}),
        (b"a=1&a=2", {"a": "2"}),  # a repeated plain name: the last value wins, as in PHP
        (b"a[]=x&a[]=y", {"a": {"0": "x", "1": "y"}}),
        (b"a[5]=x&a[]=y", {"a": {"5": "x", "6": "y"}}),  # PHP appends after the largest integer key
        (b"a[x]=1&a[]=y", {"a": {"x": "1", "0": "y"}}),
        (b"a[07]=x&a[]=y", {"a": {"07": "x", "0": "y"}}),  # "07" is a string key in PHP, not 7
        (b"a[b][]=1&a[b][]=2&a[c][]=3", {"a": {"b": {"0": "1", "1": "2"}, "c": {"0": "3"}}}),
        (b"a=1&a[b]=2", {"a": {"b": "2"}}),  # indexing a scalar makes it an array, as in PHP
        (b"a[b]=2&a=1", {"a": "1"}),
        (b"a%5Bb%5D=1", {"a": {"b": "1"}}),  # encoded brackets are brackets
        (b"a[]=", {"a": {"0": ""}}),
        (b"a]b=1", {"a]b": "1"}),
    ],
)
def test_php_rules(body, expected):
    assert parse_php_form(body) == expected


def test_php_list_reads_an_array_in_index_order():
    assert php_list({"10": "c", "2": "b", "x": "z", "0": "a"}) == ["a", "b", "c", "z"]
    assert php_list(None) == []
    assert php_list("one") == ["one"]
    assert php_list(["kept"]) == ["kept"]


@pytest.mark.parametrize(
    "body",
    [
        b"a=%",
        b"a=%2",
        b"a=%zz",
        b"%ZZ=1",
        b"a=%D0",  # a lone UTF-8 lead byte
        b"a=%FF%FE",
        b"a=\xff",  # raw bytes that are not UTF-8
        b"a=%C3%28",
        b"a[=1",
        b"a[b=1",
        b"a[b]c=1",
        b"a[b][c=1",
        b"[b]=1",
        b"=1",
    ],
)
def test_malformed_bodies_are_refused(body):
    with pytest.raises(MalformedRequestError):
        parse_php_form(body)


def test_depth_is_bounded():
    name = "a" + "[x]" * MAX_DEPTH
    assert parse_php_form(f"{name}=1".encode())["a"]["x"]["x"]
    with pytest.raises(MalformedRequestError, match="deeper"):
        parse_php_form(f"{name}[x]=1".encode())


def test_the_number_of_fields_is_bounded():
    body = "&".join(f"a[{i}]=1" for i in range(MAX_FIELDS)).encode()
    assert len(parse_php_form(body)["a"]) == MAX_FIELDS
    with pytest.raises(MalformedRequestError, match="more than"):
        parse_php_form(body + b"&b=1")


def test_appends_up_to_the_field_cap_are_numbered_in_order():
    body = b"&".join(b"a[]=%d" % i for i in range(MAX_FIELDS))
    values = php_list(parse_php_form(body)["a"])
    assert values == [str(i) for i in range(MAX_FIELDS)]


def _encode(data: dict, prefix: str = "") -> list[tuple[str, str]]:
    """PHP's http_build_query, as amoCRM and Bitrix24 send it."""
    pairs = []
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else key
        pairs += _encode(value, name) if isinstance(value, dict) else [(name, value)]
    return pairs


_keys = st.text(st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), min_size=1, max_size=8)
_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_forms = st.recursive(_values, lambda children: st.dictionaries(_keys, children, min_size=1, max_size=4), max_leaves=20)


@given(st.dictionaries(_keys, _forms, min_size=1, max_size=4))
def test_round_trip_of_any_nested_form(data):
    body = "&".join(f"{quote(k, safe='')}={quote_plus(v)}" for k, v in _encode(data)).encode()
    assert parse_php_form(body) == data
