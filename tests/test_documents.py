"""Connection documents: what is valid, what is malformed, nothing coerced."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from etl.api.documents import parse_connection
from etl.errors import MalformedDocumentError

CID = "32c4139a-e4aa-4c6c-b357-3ae9022dbf1b"
EXAMPLE: dict[str, Any] = {  # Smartcar's documented example, verbatim
    "data": {
        "id": CID,
        "type": "connection",
        "attributes": {
            "permissions": ["read_vehicle_info", "read_odometer"],
            "vehicle": {"make": "Tesla", "model": "Model S", "year": 2020, "mode": "live", "powertrainType": "BEV"},
        },
        "relationships": {
            "vehicle": {
                "data": {"id": "a6a425d6-c661-4b21-af7a-d6b75f80f3b0", "type": "vehicle"},
                "links": {"related": "https://api.example.com/vehicles/a6a425d6-c661-4b21-af7a-d6b75f80f3b0"},
            },
            "user": {"data": {"id": "1e258add-fb21-4293-b9ab-cf8a61f7a880", "type": "user"}},
        },
        "meta": {"createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-02T00:00:00Z"},
        "links": {"self": "https://api.example.com/connections/32c4139a-e4aa-4c6c-b357-3ae9022dbf1b"},
    }
}


def doc(change: Any = None) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE)
    if change:
        change(body["data"])
    return body


def test_documented_example_parses() -> None:
    record = parse_connection(doc(), expected_id=CID, path="/p")
    assert record.permissions == {"read_vehicle_info", "read_odometer"}
    assert record.user_id == "1e258add-fb21-4293-b9ab-cf8a61f7a880"
    assert record.vehicle_id == "a6a425d6-c661-4b21-af7a-d6b75f80f3b0"
    assert (record.vehicle.make, record.vehicle.year, record.vehicle.powertrain_type) == ("Tesla", 2020, "BEV")
    assert record.source_updated_at == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)


def test_upper_case_ids_are_canonicalised() -> None:
    def upper(d: dict[str, Any]) -> None:
        d["id"] = d["id"].upper()
        d["relationships"]["user"]["data"]["id"] = d["relationships"]["user"]["data"]["id"].upper()

    record = parse_connection(doc(upper), expected_id=CID, path="/p")
    assert record.connection_id == CID and record.user_id == "1e258add-fb21-4293-b9ab-cf8a61f7a880"


@pytest.mark.parametrize("change", [
    lambda d: d["attributes"].pop("vehicle"),
    lambda d: d["attributes"].update(vehicle=None),
    lambda d: d["attributes"]["vehicle"].update(year=None, make=None),
    lambda d: d.pop("meta"),
    lambda d: d.update(extra={"anything": [1, 2]}),
    lambda d: d["attributes"].update(newField="ignored"),
])
def test_missing_vehicle_attributes_and_unknown_fields_are_accepted(change: Any) -> None:
    assert parse_connection(doc(change), expected_id=CID, path="/p").connection_id == CID


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.update(id="32c4139a-e4aa-4c6c-b357-3ae9022dbf1c"), "not the id that was asked for"),
    (lambda d: d.update(id=42), "data.id is not a UUID"),
    (lambda d: d.update(type="vehicle"), "data.type"),
    (lambda d: d["attributes"].pop("permissions"), "permissions is missing"),
    (lambda d: d["attributes"].update(permissions="read_odometer"), "not an array"),
    (lambda d: d["attributes"].update(permissions=["read_vin", 3]), "holds a value that is int, expected a string"),
    (lambda d: d["attributes"].update(permissions=["read_vin", ""]), "is not a permission name: ''"),
    (lambda d: d["relationships"].pop("user"), "relationships.user is missing"),
    (lambda d: d["relationships"]["vehicle"]["data"].update(id="abc"), "vehicle.data.id is not a UUID"),
    (lambda d: d["relationships"]["user"].update(data=None), "user.data is not an object"),
])
def test_malformed_documents_name_the_problem(change: Any, problem: str) -> None:
    with pytest.raises(MalformedDocumentError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        parse_connection(doc(change), expected_id=CID, path="/p")


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d["attributes"]["vehicle"].update(year="2020"), "vehicle.year", "is '2020', expected a whole number"),
    (lambda d: d["attributes"]["vehicle"].update(year=2020.0), "vehicle.year", "is 2020.0"),
    (lambda d: d["attributes"]["vehicle"].update(year=True), "vehicle.year", "is True"),
    (lambda d: d["attributes"]["vehicle"].update(make=7), "vehicle.make", "is int, expected a string"),
    (lambda d: d["attributes"].update(vehicle=[]), "vehicle", "is not an object"),
    (lambda d: d["meta"].update(updatedAt="yesterday"), "meta.updatedAt", "not an ISO-8601 time"),
    (lambda d: d["meta"].update(updatedAt="2024-01-02T00:00:00"), "meta.updatedAt", "no time zone"),
])
def test_a_bad_descriptive_field_is_null_and_named_but_the_permissions_count(
    change: Any, field: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    record = parse_connection(doc(change), expected_id=CID, path="/p")
    assert record.nulled == (f"data.attributes.{field}" if "vehicle" in field else f"data.{field}",)
    assert record.permissions == {"read_vehicle_info", "read_odometer"}
    assert CID in caplog.text and problem in caplog.text and "stored as NULL" in caplog.text


@pytest.mark.parametrize("body", [[], "text", {"errors": []}, {"data": None}, {"data": []}])
def test_bodies_without_a_resource_are_malformed(body: Any) -> None:
    with pytest.raises(MalformedDocumentError):
        parse_connection(body, expected_id=CID, path="/p")
