"""Capabilities, and which collection of a writer document each one unlocks."""

from __future__ import annotations

import enum
import types
from collections.abc import Iterable, Mapping
from typing import Final

from ._wire import (
    _malformed,
)

# --------------------------------------------------------------------------- capabilities


class Capability(enum.Enum):
    """What a delegation allows its subject to do."""

    MODIFY_POLICIES = "modify_policies"
    DEPLOY_VERSIONS = "deploy_versions"
    REPORT_STATUS = "report_status"
    OPERATE_ISOLATED = "operate_isolated"
    DELEGATE = "delegate"


#: Which capability a writer needs for its entries in each collection of its document to count.
COLLECTION_CAPABILITY: Final[Mapping[str, Capability]] = types.MappingProxyType(
    {
        "policies": Capability.MODIFY_POLICIES,
        "versions": Capability.DEPLOY_VERSIONS,
        "nodes": Capability.REPORT_STATUS,
        "meta": Capability.REPORT_STATUS,
    }
)


def allowed_collections(capabilities: Iterable[Capability]) -> frozenset[str]:
    """The collections whose entries count for a writer holding ``capabilities``."""
    held = frozenset(capabilities)
    return frozenset(name for name, needed in COLLECTION_CAPABILITY.items() if needed in held)


def _check_capabilities(value: object) -> frozenset[Capability]:
    if type(value) is not frozenset or not value:
        raise _malformed("capabilities must be a non-empty frozenset", "capabilities")
    if not all(isinstance(item, Capability) for item in value):
        raise _malformed("capabilities must be Capability members", "capabilities")
    return value
