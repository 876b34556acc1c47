"""Checked-in test vectors: each valid one must pass, each invalid one raise its exact error.

The files are self-contained (keys, delegations and times are in them), so another
implementation can run them too. ``tests/vectors/generate.py`` writes them; the last test checks
that the checked-in files are what the generator produces today.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt import errors
from souverix_crdt.authority import (
    Authority,
    Delegation,
    PublicKey,
    Revocation,
    TrustAnchors,
    verify_chain,
)
from souverix_crdt.envelope import open_envelope
from souverix_crdt.errors import SouverixError
from souverix_crdt.hlc import Timestamp

from .vectors import generate

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())  # type: ignore[no-any-return]


def anchors_of(context: dict[str, Any]) -> TrustAnchors:
    roots = frozenset(PublicKey(bytes.fromhex(raw)) for raw in context["roots"])
    return TrustAnchors(context["fleet_id"], roots, context["quorum"])


def authority_of(context: dict[str, Any]) -> Authority:
    authority = Authority(anchors_of(context))
    # The context lists delegations in any order: the registry takes them parents first.
    delegations = [
        Delegation.decode(bytes.fromhex(data)) for data in context.get("delegations", ())
    ]
    _, refused = authority.add_delegations(delegations)
    assert refused == ()
    for data in context.get("revocations", ()):
        authority.add_revocation(Revocation.decode(bytes.fromhex(data)))
    return authority


def outcome(call: Any) -> str:
    try:
        call()
    except SouverixError as exc:
        return type(exc).__name__
    return "ok"


def cases(name: str) -> list[Any]:
    data = load(name)
    return [pytest.param(data["context"], vector, id=vector["name"]) for vector in data["vectors"]]


def test_expected_names_are_error_classes() -> None:
    for name in generate.FILES:
        for vector in load(name)["vectors"]:
            expected = vector["expected"]
            assert expected == "ok" or issubclass(getattr(errors, expected), SouverixError)


@pytest.mark.parametrize(("context", "vector"), cases("delegations.json"))
def test_delegation_vector(context: dict[str, Any], vector: dict[str, Any]) -> None:
    anchors = anchors_of(context)

    def run() -> None:
        chain = [Delegation.decode(bytes.fromhex(link)) for link in vector["chain"]]
        verify_chain(anchors, chain, at=Timestamp(*vector["at"]))

    assert outcome(run) == vector["expected"]


@pytest.mark.parametrize(("context", "vector"), cases("revocations.json"))
def test_revocation_vector(context: dict[str, Any], vector: dict[str, Any]) -> None:
    authority = authority_of(context)

    def run() -> None:
        authority.add_revocation(Revocation.decode(bytes.fromhex(vector["revocation"])))

    assert outcome(run) == vector["expected"]


@pytest.mark.parametrize(("context", "vector"), cases("envelopes.json"))
def test_envelope_vector(context: dict[str, Any], vector: dict[str, Any]) -> None:
    authority = authority_of(context)

    def run() -> None:
        open_envelope(
            bytes.fromhex(vector["envelope"]),
            authority,
            physical_now=context["physical_now"],
            max_offset=context["max_offset"],
        )

    assert outcome(run) == vector["expected"]


@pytest.mark.parametrize("name", sorted(generate.FILES))
def test_vectors_are_up_to_date_and_deterministic(name: str) -> None:
    expected = generate.render(generate.FILES[name])
    assert generate.render(generate.FILES[name]) == expected
    assert (VECTORS / name).read_text() == expected, (
        f"{name} is stale: run `python tests/vectors/generate.py` and review the diff"
    )
