"""``forge agent --log-cap`` / ``FORGE_LOG_CAP``: a size, at least 1 MiB."""

from __future__ import annotations

import pytest

from forge.cli.daemons import parse_log_cap
from forge.errors import Invalid


@pytest.mark.parametrize(("value", "want"), [("64M", 64 << 20), ("1G", 1 << 30), ("1048576", 1 << 20)],
                         ids=["mebibytes", "gibibytes", "bytes"])
def test_log_cap_parses_sizes(value: str, want: int) -> None:
    """Sizes in the manifest's units become bytes."""
    assert parse_log_cap(value) == want


@pytest.mark.parametrize("value", ["", "lots", "512K", "-1M"], ids=["empty", "word", "below-minimum", "negative"])
def test_log_cap_refuses_what_is_not_a_size_or_too_small(value: str) -> None:
    """Anything else is refused with a message naming the option."""
    with pytest.raises(Invalid, match="--log-cap"):
        parse_log_cap(value)
