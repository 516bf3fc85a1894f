"""The ``split`` stage: deterministic, stratified train / validation / test splits with no text crossing.

Records are grouped by :func:`~bertops.data.validate.normalise_text`, so identical texts always land in the
same split (a duplicate can never be trained on and tested on). Within each stratum (the label; for NER the
first entity type of the sentence, or ``none``) the groups are ordered by a keyed hash of ``(seed, text)``
and the first ones fill test, then validation, up to their fractions of the stratum's records; the rest is
train. The hash makes the split independent of input order and stable when rows are added: a text keeps its
split unless the seed changes. Corpus documents go to ``train`` or ``heldout`` the same way.

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
    """Group ``records`` by split (see :func:`assign_splits`); every split name is present, maybe empty."""
    names = assign_splits([key(r) for r in records], [stratum(r) for r in records], fractions, seed)
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in ("train", *fractions)}
    for rec, name in zip(records, names, strict=True):
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
        "corpus": split_records(
            list(read_jsonl(layout.corpus)),
            key=lambda r: normalise_text(" ".join(r["sentences"])),
            stratum=lambda r: "all",
            fractions={"heldout": sc.corpus_heldout_fraction},
            seed=sc.seed,
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
