"""Property: however the engine splits an answer, no part of a blocked phrase is ever released, and
masking gives the same text as masking the whole answer at once."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.steps.guard import OutputBlocked, OutputFilter
from rails.base import Stage
from rails.builtin.detect import pii_rail
from rails.builtin.limits import DenyRail
from rails.pipeline import Configured, RailPipeline

PHRASE = "project nightingale"
TEXT = "Our roadmap for next year covers many things, and the secret one is " + PHRASE + " which ships in May."
MASKABLE = "Write to jane.doe@example.org or call +44 20 7946 0958, or write to ops@example.com today, thanks."


def splits(text: str):
    return st.lists(st.integers(min_value=1, max_value=len(text) - 1), max_size=12).map(
        lambda cuts: [text[a:b] for a, b in zip([0, *sorted(set(cuts))], [*sorted(set(cuts)), len(text)], strict=True)]
    )


async def feed_all(output: OutputFilter, pieces: list[str]) -> tuple[str, bool]:
    released = ""
    try:
        for piece in pieces:
            released += await output.feed(piece)
        released += await output.flush()
    except OutputBlocked:
        return released, True
    return released, False


@settings(max_examples=200, deadline=None)
@given(pieces=splits(TEXT), window=st.integers(1, 40))
def test_no_part_of_a_blocked_phrase_is_released(pieces, window):
    pipeline = RailPipeline([Configured(DenyRail("deny", Stage.OUTPUT, keywords=[PHRASE]))])
    released, blocked = asyncio.run(feed_all(OutputFilter(pipeline, window=window, overlap=len(PHRASE)), pieces))
    assert blocked
    assert TEXT.startswith(released) and len(released) <= TEXT.index(PHRASE)


@settings(max_examples=200, deadline=None)
@given(pieces=splits(MASKABLE), window=st.integers(1, 40))
def test_streamed_masking_equals_masking_the_whole(pieces, window):
    pipeline = RailPipeline([Configured(pii_rail("pii", Stage.OUTPUT))])
    whole = asyncio.run(pipeline.run(Stage.OUTPUT, MASKABLE)).content
    released, blocked = asyncio.run(feed_all(OutputFilter(pipeline, window=window, overlap=32), pieces))
    assert not blocked and released == whole
    assert "@" not in released


@pytest.mark.parametrize("window", [1, 8, 1000])
async def test_clean_text_passes_unchanged(window):
    pipeline = RailPipeline([Configured(DenyRail("deny", Stage.OUTPUT, keywords=[PHRASE]))])
    pieces = ["Nothing ", "to see ", "here, ", "just a ", "plain answer."]
    assert await feed_all(OutputFilter(pipeline, window=window, overlap=20), pieces) == ("".join(pieces), False)
