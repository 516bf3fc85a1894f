"""A steady stream of plain HTTP requests (no client retries) to a served model, for the live-transition tests.

    with RequestStream(url, callers=12, texts=lambda i: f"a fine film {i}", pause_s=0.05) as stream:
        ...  # shadow, canary steps, the alias move
    assert not stream.failures
    stream.versions_by_caller()  # caller -> the versions that answered it

Each request carries ``X-Bertops-Caller`` (``caller-<i % callers>``). Every transport error and non-200 answer is
kept in ``failures``; every answer's ``(caller, version)`` in ``answers``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import httpx


class RequestStream:
    """Requests from ``callers`` callers in ``threads`` threads until the ``with`` block ends.

    ``fail_word_every``: once a version other than ``"1"`` has answered, every n-th text carries the word a
    failing test candidate refuses (``boom``)."""

    def __init__(
        self,
        url: str,
        texts: Callable[[int], str],
        callers: int = 40,
        threads: int = 3,
        pause_s: float = 0.0,
        fail_word_every: int | None = None,
    ) -> None:
        self.url, self.failures, self.answers = url, [], []  # answers: (caller, version)
        self._texts, self._callers, self._pause = texts, callers, pause_s
        self._stop = threading.Event()
        self._n = itertools.count()
        self._fail_every = fail_word_every
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> RequestStream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def versions_by_caller(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for caller, version in list(self.answers):
            out.setdefault(caller, set()).add(version)
        return out

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                i = next(self._n)
                caller, text = f"caller-{i % self._callers}", self._texts(i)
                candidate_answered = any(v != "1" for _, v in self.answers[-50:])
                if self._fail_every and i % self._fail_every == 0 and candidate_answered:
                    text += " boom"
                try:
                    r = client.post(f"{self.url}/predict", json={"texts": [text]},
                                    headers={"X-Bertops-Caller": caller})  # fmt: skip
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    self.answers.append((caller, r.json()["version"]))
                if self._pause:
                    time.sleep(self._pause)
