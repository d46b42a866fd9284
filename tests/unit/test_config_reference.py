"""The configuration reference is rendered from the schema: every key must say what it does."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from idgateway.config import reference as config_reference
from idgateway.config.auth import (
    AUTHORIZE_FIELDS,
    FORWARD_AUTH_FIELDS,
    HEADER_OPTION_FIELDS,
    OIDC_FIELDS,
    PROVIDER_FIELDS,
    REDIS_FIELDS,
    SESSION_FIELDS,
)
from idgateway.config.load import (
    ADMIN_FIELDS,
    CERTIFICATE_FIELDS,
    HSTS_FIELDS,
    LISTENER_FIELDS,
    LOGGING_FIELDS,
    PATH_FIELDS,
    PATH_RULES_FIELDS,
    RELOAD_FIELDS,
    ROUTE_FIELDS,
    TLS_FIELDS,
    TOP_FIELDS,
)
from idgateway.config.schema import Field, boolean, mapping

EVERY_SPEC = {
    "TOP_FIELDS": TOP_FIELDS,
    "LISTENER_FIELDS": LISTENER_FIELDS,
    "TLS_FIELDS": TLS_FIELDS,
    "CERTIFICATE_FIELDS": CERTIFICATE_FIELDS,
    "ROUTE_FIELDS": ROUTE_FIELDS,
    "PATH_FIELDS": PATH_FIELDS,
    "PATH_RULES_FIELDS": PATH_RULES_FIELDS,
    "HSTS_FIELDS": HSTS_FIELDS,
    "LOGGING_FIELDS": LOGGING_FIELDS,
    "RELOAD_FIELDS": RELOAD_FIELDS,
    "ADMIN_FIELDS": ADMIN_FIELDS,
    "PROVIDER_FIELDS": PROVIDER_FIELDS,
    "OIDC_FIELDS": OIDC_FIELDS,
    "SESSION_FIELDS": SESSION_FIELDS,
    "REDIS_FIELDS": REDIS_FIELDS,
    "HEADER_OPTION_FIELDS": HEADER_OPTION_FIELDS,
    "AUTHORIZE_FIELDS": AUTHORIZE_FIELDS,
    "FORWARD_AUTH_FIELDS": FORWARD_AUTH_FIELDS,
}


def test_every_key_has_a_description() -> None:
    keys = config_reference.every_key()
    undocumented = [key for key, field in keys if not field.description.strip()]
    assert undocumented == []


def test_a_nested_key_without_a_description_is_found() -> None:
    """The walk reaches keys nested in mappings and lists, so the check above is not vacuous."""
    inner = (Field("quiet", boolean, description="Say less."), Field("secret_knob", boolean))
    top = (Field("outer", mapping(inner, "a mapping", lambda _, f: f.values), fields=inner),)
    undocumented = [key for key, field in config_reference.every_key(top) if not field.description]
    assert undocumented == ["outer"] + ["outer.secret_knob"]


def test_a_nested_mapping_that_does_not_name_its_keys_is_found() -> None:
    unnamed = Field("tls", mapping(TLS_FIELDS, "a mapping", lambda _, f: f.values))
    assert _field_tuples_in_closure(unnamed) == [TLS_FIELDS] and unnamed.fields == ()


@pytest.mark.parametrize("name", sorted(EVERY_SPEC))
def test_every_spec_is_reachable_from_the_top(name: str) -> None:
    """A spec nobody names in a Field's ``fields`` would be missing from the reference."""
    reached = {id(field) for _, field in config_reference.every_key()}
    assert [f.name for f in EVERY_SPEC[name] if id(f) not in reached] == []


def _field_tuples_in_closure(field: Field) -> list[tuple[Field, ...]]:
    """Field tuples a converter built by mapping()/section()/list_of() closes over."""
    found: list[tuple[Field, ...]] = []
    pending = [field.convert]
    while pending:
        function = pending.pop()
        for cell in getattr(function, "__closure__", None) or ():
            value = cell.cell_contents
            if isinstance(value, tuple) and value and all(isinstance(v, Field) for v in value):
                found.append(value)
            elif inspect.isfunction(value):
                pending.append(value)
    return found


@pytest.mark.parametrize("key", [key for key, _ in config_reference.every_key()])
def test_a_field_that_reads_nested_keys_names_them(key: str) -> None:
    field = dict(config_reference.every_key())[key]
    for spec in _field_tuples_in_closure(field):
        assert field.fields is spec, f"{key}: add fields=... naming its nested keys"


def test_the_reference_shows_every_key_and_section() -> None:
    text = config_reference.render()
    for block in config_reference.blocks():
        assert f"\n{block.title}\n{'-' * len(block.title)}\n" in f"\n{text}"
        assert f".. _{block.label}:" in text
        for field in block.fields:
            assert f"\n``{field.name}`` (" in text
    # A spec reached twice (a path's authorize, the route's) gets one section.
    titles = [block.title for block in config_reference.blocks()]
    assert len(titles) == len(set(titles))


def test_the_docs_page_has_the_marker_and_no_hand_written_keys() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "configuration.rst"
    text = page.read_text()
    assert text.count(".. idgateway-config-reference\n") == 1
    # The hand-written part holds the general rules, not a second copy of the keys.
    assert "``upstream_pool_size`` (" not in text and "``client_id`` (" not in text
