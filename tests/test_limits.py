"""The one Limits value: documented defaults, validated overrides."""

from __future__ import annotations

import pytest

from souverix_crdt.limits import DEFAULT_LIMITS, Limits


def test_defaults_are_positive_and_named() -> None:
    names = Limits.field_names()
    assert "pending_bytes_per_source" in names
    assert "handshake_timeout" in names
    for name in names:
        assert getattr(DEFAULT_LIMITS, name) > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_frame", 0),
        ("max_frame", -1),
        ("max_frame", 1.5),
        ("idle_timeout", 0),
        ("idle_timeout", "5s"),
    ],
)
def test_bad_overrides_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DEFAULT_LIMITS.evolve(**{field: value})  # type: ignore[arg-type]


def test_evolve_keeps_the_rest() -> None:
    tighter = DEFAULT_LIMITS.evolve(max_frame=1024)
    assert tighter.max_frame == 1024
    assert tighter.idle_timeout == DEFAULT_LIMITS.idle_timeout
