"""The rule-based sentence splitter: abbreviations, initials, decimals, quotes, paragraphs."""

from __future__ import annotations

import pytest

from bertops.data.sentences import split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith went home. He slept.", ["Mr. Smith went home.", "He slept."]),
        (
            "Dr. Jones and Prof. Lee met Sen. Warren, D-Mass., today.",
            ["Dr. Jones and Prof. Lee met Sen. Warren, D-Mass., today."],
        ),
        ("The U.S. Army arrived. It rained.", ["The U.S. Army arrived.", "It rained."]),
        ("He moved to the U.S. He liked it.", ["He moved to the U.S.", "He liked it."]),
        ("Use tools, e.g. hammers. Then stop.", ["Use tools, e.g. hammers.", "Then stop."]),
        (
            "Pi is 3.14 and e is 2.718. Both are irrational.",
            ["Pi is 3.14 and e is 2.718.", "Both are irrational."],
        ),
        ("Version 2.1.3 shipped. Upgrade now!", ["Version 2.1.3 shipped.", "Upgrade now!"]),
        ('"He left." She said it twice.', ['"He left."', "She said it twice."]),
        ('"Stop!" he cried. Nobody did.', ['"Stop!" he cried.', "Nobody did."]),
        ("J. R. R. Tolkien wrote it. It sold.", ["J. R. R. Tolkien wrote it.", "It sold."]),
        ("It was item No. 5 on the list. Really?", ["It was item No. 5 on the list.", "Really?"]),
        ("Apple Inc. The company grew.", ["Apple Inc.", "The company grew."]),
        (
            "At the then-U.S. Embassy he grew up in-St. Louis. Fine.",
            ["At the then-U.S. Embassy he grew up in-St. Louis.", "Fine."],
        ),
        ("Wait... What happened? Nothing!", ["Wait...", "What happened?", "Nothing!"]),
        ("(See above.) Next point.", ["(See above.)", "Next point."]),
        ("First paragraph without a stop\n\nSecond one", ["First paragraph without a stop", "Second one"]),
        ("  spaced   out\ttext.  ", ["spaced out text."]),
        ("", []),
        ("He paused. ... Then he spoke. .", ["He paused.", "Then he spoke."]),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_min_chars_drops_short_fragments() -> None:
    assert split_sentences("Ok. This one stays.", min_chars=5) == ["This one stays."]


def test_lines_within_a_paragraph_are_joined() -> None:
    assert split_sentences("A sentence that\nwraps a line. Next.") == [
        "A sentence that wraps a line.",
        "Next.",
    ]
