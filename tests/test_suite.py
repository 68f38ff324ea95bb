"""The suite itself: property tests draw the same examples on every run (outside `make fuzz`)."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE") == "fuzz",
                    reason="`make fuzz` draws new examples on purpose")
def test_a_property_test_draws_the_same_examples_every_run():
    def draw() -> list[bytes]:
        drawn: list[bytes] = []

        @given(st.binary(min_size=8))
        def prop(b: bytes) -> None:
            drawn.append(b)

        prop()
        return drawn

    first = draw()
    assert first and first == draw()
