"""The ``split`` stage: deterministic, stratified train / validation / test splits with no text crossing.

Records are grouped by :func:`~bertops.data.validate.normalise_text`, so identical texts always land in the
same split (a duplicate can never be trained on and tested on). Within each stratum (the label; for NER the
first entity type of the sentence, or ``none``) the groups are ordered by a keyed hash of ``(seed, text)``
and the first ones fill test, then validation, up to their fractions of the stratum's records; the rest is
train. The hash makes the split independent of input order and stable when rows are added: a text keeps its
split unless the seed changes.

Corpus documents go to ``train`` or ``heldout`` the same way, but the held-out share is measured in text
(``split.corpus_heldout_unit``: characters by default, or words; ``documents`` counts documents as before):
a document goes to ``heldout`` only while that brings the held-out amount closer to its target, and a
document longer than the target is first cut into runs of whole sentences no longer than it, so a corpus of a
few long documents is still held out near ``split.corpus_heldout_fraction`` (a document held out in part is
written as its pieces, ``doc_id~1``, ``doc_id~2``...; runs that stay together are joined again). A result far
from the fraction (under half or over twice it) is logged as a warning.

Outputs (see :mod:`bertops.paths`): ``data/split/{classification,ner}/{train,validation,test}.jsonl`` and
``data/split/corpus/{train,heldout}.jsonl``; records keep their ingested fields and input order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig
from bertops.data.errors import DataError
from bertops.data.io import atomic_open, read_jsonl
from bertops.data.validate import normalise_text
from bertops.paths import SPLITS, DataLayout

log = logging.getLogger(__name__)

CORPUS_SPLITS = ("train", "heldout")


def _rank(seed: int, key: str) -> str:
    """A stable pseudo-random order key (Python's ``hash`` is salted per process; this is not)."""
    return hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).hexdigest()


def assign_splits(
    keys: list[str], strata: list[str], fractions: dict[str, float], seed: int, rest: str = "train"
) -> list[str]:
    """The split name of each record, given its group key and stratum.

    ``fractions`` maps split names (filled in order) to their share of each stratum's records; ``rest`` gets
    the remainder. Every record with the same key gets the same split.
    """
    groups: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # stratum -> key -> records
    for key, stratum in zip(keys, strata, strict=True):
        groups[stratum][key] += 1
    decided: dict[str, str] = {}
    for stratum in sorted(groups):
        members = groups[stratum]
        total = sum(members.values())
        # At least one record per non-zero fraction when the stratum can spare it (tiny data sets, tests).
        targets = {
            name: max(1, round(frac * total)) if frac > 0 and total > len(fractions) else round(frac * total)
            for name, frac in fractions.items()
        }
        filled = dict.fromkeys(fractions, 0)
        names = list(fractions)
        for key in sorted(members, key=lambda k: _rank(seed, k)):
            if key in decided:  # the same text under another stratum (NER: never for classification)
                continue
            target = next((n for n in names if filled[n] < targets[n]), rest)
            decided[key] = target
            if target != rest:
                filled[target] += members[key]
    return [decided[k] for k in keys]


def assign_by_size(keys: list[str], sizes: list[int], fraction: float, seed: int, name: str) -> list[str]:
    """``name`` or ``"train"`` per record, holding out about ``fraction`` of the total size.

    Groups (same key) are visited in hash order; each goes to ``name`` when that brings the held-out size
    closer to the target (``held + size / 2 <= target``), so one large group cannot overshoot it. When none
    fits, the first group is held out anyway (there are at least two): an empty held-out set measures nothing.
    """
    group_size: dict[str, int] = defaultdict(int)
    for key, size in zip(keys, sizes, strict=True):
        group_size[key] += size
    target = fraction * sum(group_size.values())
    held = 0
    decided: dict[str, str] = {}
    for key in sorted(group_size, key=lambda k: _rank(seed, k)):
        if fraction > 0 and held + group_size[key] / 2 <= target:
            decided[key] = name
            held += group_size[key]
        else:
            decided[key] = "train"
    if fraction > 0 and held == 0 and len(decided) > 1:  # at least one group, as assign_splits does
        decided[min(group_size, key=lambda k: _rank(seed, k))] = name
    return [decided[k] for k in keys]


def text_size(sentences: list[str], unit: str) -> int:
    """The size of some sentences in ``unit`` (characters or words)."""
    if unit == "words":
        return sum(len(s.split()) for s in sentences)
    return sum(len(s) for s in sentences)


def segment_documents(docs: list[dict[str, Any]], max_size: float, unit: str) -> list[list[dict[str, Any]]]:
    """Per document, its parts: the document itself, or, when it is larger than ``max_size``, runs of whole
    sentences of at most that size (a longer sentence stays whole), each a copy of the record."""
    out: list[list[dict[str, Any]]] = []
    for doc in docs:
        if text_size(doc["sentences"], unit) <= max_size:
            out.append([doc])
            continue
        runs: list[list[str]] = [[]]
        size = 0
        for sentence in doc["sentences"]:
            n = text_size([sentence], unit)
            if runs[-1] and size + n > max_size:
                runs.append([])
                size = 0
            runs[-1].append(sentence)
            size += n
        out.append([{**doc, "sentences": run} for run in runs])
    return out


def _rejoin(parts: list[dict[str, Any]], names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Adjacent parts of one document that went to the same split become one record again (their sentences
    really follow each other); a document left in several pieces gets ids ``doc_id~1``, ``doc_id~2``..."""
    runs: list[tuple[str, list[str]]] = []
    for part, name in zip(parts, names, strict=True):
        if runs and runs[-1][0] == name:
            runs[-1][1].extend(part["sentences"])
        else:
            runs.append((name, list(part["sentences"])))
    doc = parts[0]
    if len(runs) == 1:
        return [(runs[0][0], {**doc, "sentences": runs[0][1]})]
    return [
        (n, {**doc, "doc_id": f"{doc['doc_id']}~{k}", "sentences": s}) for k, (n, s) in enumerate(runs, 1)
    ]


def split_corpus(
    docs: list[dict[str, Any]], fraction: float, unit: str, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "heldout": [...]}`` of the corpus, about ``fraction`` of its text held out (see the
    module docstring); logs a warning when the held-out share is under half or over twice ``fraction``."""
    key = lambda r: normalise_text(" ".join(r["sentences"]))  # noqa: E731
    if unit == "documents":
        return split_records(
            docs, key=key, stratum=lambda r: "all", fractions={"heldout": fraction}, seed=seed
        )
    total = sum(text_size(d["sentences"], unit) for d in docs)
    per_doc = segment_documents(docs, max(1.0, fraction * total), unit)
    parts = [p for doc_parts in per_doc for p in doc_parts]
    sizes = [text_size(p["sentences"], unit) for p in parts]
    names = iter(assign_by_size([key(p) for p in parts], sizes, fraction, seed, "heldout"))
    out: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    for doc_parts in per_doc:
        for name, record in _rejoin(doc_parts, [next(names) for _ in doc_parts]):
            out[name].append(record)
    held = sum(text_size(d["sentences"], unit) for d in out["heldout"])
    share = held / total if total else 0.0
    if fraction > 0 and not fraction / 2 <= share <= 2 * fraction:
        log.warning(
            "split: %.2f%% of the corpus %s is held out, far from split.corpus_heldout_fraction=%g "
            "(%d of %d parts); the corpus has too few or too uneven sentences to do better",
            100 * share,
            unit,
            fraction,
            len(out["heldout"]),
            len(parts),
        )
    return out


def _ner_stratum(rec: dict[str, Any]) -> str:
    return next((t[2:] for t in rec["tags"] if t.startswith("B-")), "none")


def split_records(
    records: list[dict[str, Any]],
    *,
    key: Callable[[dict[str, Any]], str],
    stratum: Callable[[dict[str, Any]], str],
    fractions: dict[str, float],
    seed: int,
) -> dict[str, list[dict[str, Any]]]:
    """Group ``records`` by split (see :func:`assign_splits`); every split name is present, maybe empty.

    A record with a ``split`` field (feedback, pinned to ``train`` by ingest) goes there and takes no part in
    the assignment, so the other records' splits, the test split above all, are what they were without it.
    """
    free = [r for r in records if "split" not in r]
    names = iter(assign_splits([key(r) for r in free], [stratum(r) for r in free], fractions, seed))
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in ("train", *fractions)}
    for rec in records:
        name = rec.get("split") or next(names)
        if name not in out:
            raise DataError(f"record pinned to an unknown split {name!r}", file=rec.get("source"),
                            row=rec.get("row"), field="split")  # fmt: skip
        out[name].append(rec)
    return out


def _write_all(files: dict[Path, Iterable[dict[str, Any]]]) -> None:
    """Write every file; they are renamed into place only when all were written."""
    with contextlib.ExitStack() as stack:
        for path, recs in files.items():
            fh = stack.enter_context(atomic_open(path))
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


def run_split(cfg: BertopsConfig, layout: DataLayout | None = None) -> dict[str, dict[str, int]]:
    """Split the ingested classification, NER and corpus files; returns the record counts per split."""
    layout = layout or DataLayout(Path(cfg.project.data_dir))
    sc = cfg.split
    fractions = {"test": sc.test_fraction, "validation": sc.validation_fraction}
    tasks = {
        "classification": split_records(
            list(read_jsonl(layout.classification)),
            key=lambda r: normalise_text(r["text"]),
            stratum=lambda r: r["label"],
            fractions=fractions,
            seed=sc.seed,
        ),
        "ner": split_records(
            list(read_jsonl(layout.ner)),
            key=lambda r: normalise_text(" ".join(r["tokens"])),
            stratum=_ner_stratum,
            fractions=fractions,
            seed=sc.seed,
        ),
        "corpus": split_corpus(
            list(read_jsonl(layout.corpus)), sc.corpus_heldout_fraction, sc.corpus_heldout_unit, sc.seed
        ),
    }
    files: dict[Path, list[dict[str, Any]]] = {}
    for task, parts in tasks.items():
        for name in CORPUS_SPLITS if task == "corpus" else SPLITS:
            files[layout.split_file(task, name)] = parts[name]
    _write_all(files)
    counts = {task: {name: len(recs) for name, recs in parts.items()} for task, parts in tasks.items()}
    log.info("split: %s", counts)
    return counts
