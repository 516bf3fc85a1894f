"""Sentence splitting of the corpus, in any language: English rules of our own, sentencex for the rest.

BERT's pretraining recipe needs documents as sentences (next-sentence prediction pairs them).
:func:`split_sentences` takes the corpus' language (``ingest.corpus.language``):

- ``en``: the English rules below (tuned on the news corpus; the tests pin them);
- any other code: `sentencex <https://github.com/wikimedia/sentencex>`_ (Wikimedia, rule-based, ~300
  languages with fallbacks, no model download), which knows each language's terminators (Chinese and
  Japanese ``。！？``, Hindi ``।``, Arabic ``؟``...) and abbreviations (German ``z. B.``, ordinals such as
  ``am 3. Mai``). An unknown code falls back along sentencex's language chains to its generic rules.

NLTK's Punkt needs a model download, which this project may not do, so the English rules are written out::

    >>> split_sentences('Mr. Smith paid $3.14 in the U.S. on Monday. "He left." She said so.')
    ['Mr. Smith paid $3.14 in the U.S. on Monday.', '"He left."', 'She said so.']

A candidate boundary is sentence-final punctuation (``. ! ? …``), optionally followed by closing quotes or
brackets, then whitespace. It is rejected when

- the next word starts in lower case (``"Stop!" he said``, ``e.g. the``);
- the word before a period is a title (``Mr.``, ``Dr.``, ``Sen.``): titles never end a sentence;
- the word before a period is another known abbreviation (``etc.``, ``Inc.``, ``Jan.``), an initialism
  (``U.S.``, ``e.g.``) or a single-letter initial (``J. Smith``) and the next word is not a common sentence
  opener (``The``, ``He``, ``But``...): ``the U.S. Army`` stays one sentence, ``the U.S. He left`` is two;
- ``No.`` is followed by a number (``No. 5``).

Decimals and version numbers (``3.14``, ``v2.1``) never look like boundaries: no whitespace follows the period.
Blank lines (paragraph breaks) always end a sentence.
"""

from __future__ import annotations

import re


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Titles come before a name: a period after them never ends a sentence.
TITLES = _words(
    "mr mrs ms messrs mme mlle dr prof rev hon fr gen gov sen rep lt col capt cpt sgt cmdr adm maj "
    "pres supt insp st mt ft atty sens reps"
)
# Other abbreviations: a period after them ends a sentence only before a common sentence opener.
ABBREVIATIONS = _words(
    "etc vs v cf viz approx inc ltd co corp llc plc bros jr sr esq dept univ assn est ext fig figs "
    "vol vols pp ch sec art ave blvd rd hwy jan feb mar apr jun jul aug sep sept oct nov dec mon tue "
    "tues wed thu thur thurs fri sat sun al ca min max misc govt intl natl op no nos"
)
# Words that commonly open an English sentence: after an ambiguous abbreviation they signal a boundary.
SENTENCE_OPENERS = _words(
    "the a an he she it they we i you this that these those there here his her its their our my your "
    "but and or so yet in on at for if when while as after before since although though because what "
    "who why how where which one some many most all each every both neither not however meanwhile "
    "also then now still thus instead later earlier today yesterday tomorrow mr mrs ms dr"
)

ENGLISH = "en"
_BOUNDARY = re.compile(r"""([.!?…]+)(["'”’»)\]]*)(\s+)""")
_PARAGRAPH = re.compile(r"\n\s*\n")
_INITIALISM = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")  # "U.S" / "e.g" (the final period is the boundary)
_WORD_BEFORE = re.compile(r"""[\w.&'-]+$""")
_FIRST_WORD = re.compile(r"""[\s"'“‘(\[«]*([\w'’-]+)""")


def _is_boundary(text: str, start: int, end: int, punct: str) -> bool:
    """Whether the punctuation at ``text[start:end]`` followed by whitespace ends a sentence."""
    following = _FIRST_WORD.match(text, end)
    next_word = following.group(1) if following else ""
    if next_word[:1].islower():
        return False
    if punct != ".":
        return True
    before = _WORD_BEFORE.search(text, max(0, start - 64), start)  # a window: scanning from 0 is quadratic
    # "then-U.S." / "in-St.": the abbreviation is what follows the last hyphen.
    word = before.group(0).rsplit("-", 1)[-1].lstrip("'&") if before else ""
    key = word.lower()
    if key in TITLES:
        return False
    if key in ("no", "nos") and next_word[:1].isdigit():
        return False
    ambiguous = (
        key in ABBREVIATIONS
        or bool(_INITIALISM.match(word))
        or (len(word) == 1 and word.isalpha() and word.isupper())
    )
    if ambiguous:
        return next_word.lower() in SENTENCE_OPENERS
    return True


def _split_paragraph(text: str) -> list[str]:
    sentences: list[str] = []
    begin = 0
    for m in _BOUNDARY.finditer(text):
        punct = m.group(1)
        if _is_boundary(text, m.start(1), m.end(), "." if set(punct) == {"."} and len(punct) == 1 else punct):
            sentences.append(text[begin : m.end(2)])
            begin = m.end()
    sentences.append(text[begin:])
    return sentences


def _segment(paragraph: str, language: str) -> list[str]:
    if language == ENGLISH:
        return _split_paragraph(paragraph)
    import sentencex  # compiled extension; imported on first use

    return list(sentencex.segment(language, paragraph))


def split_sentences(text: str, min_chars: int = 1, language: str = "en") -> list[str]:
    """Split ``text`` into sentences, whitespace-normalised.

    Blank lines always end a sentence. Sentences shorter than ``min_chars`` and fragments without a letter
    or digit (a stray ``...``) are dropped.
    """
    out: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        for sentence in _segment(paragraph.strip(), language):
            sentence = " ".join(sentence.split())
            if len(sentence) >= min_chars and any(c.isalnum() for c in sentence):  # no bare "..." or "."
                out.append(sentence)
    return out
