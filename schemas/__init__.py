"""JSON Schemas of the topic contracts (one file per topic payload), shipped as package data."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema
import orjson

__all__ = ["RECORDING_VERSIONS", "SCHEMA_VERSION", "load", "validator"]

SCHEMA_VERSION = 5
"""Version every event carries; bumped (and noted in the CHANGELOG) on any contract change."""
RECORDING_VERSIONS = (1, 2, 3, 4, 5)
"""Recording events the worker accepts: versions 2, 3 and 4 only added optional fields to 1;
5 changed only the final event (its analytics' tones)."""


@cache
def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (recording, partial, final or failed) as a dict."""
    data: dict[str, Any] = orjson.loads(
        files(__name__).joinpath(f"{name}.schema.json").read_bytes()
    )
    return data


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """A reusable validator for schema ``name`` that also checks ``format`` keywords."""
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)
