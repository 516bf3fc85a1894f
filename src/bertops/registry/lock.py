"""A promotion lock held in the MLflow registry itself, so it works for every process that can reach it.

MLflow has no compare-and-set on aliases. It does have one atomic, exclusive operation: creating a registered
model whose name already exists fails (a unique key in the backing database, SQLite or PostgreSQL, behind the
server or embedded). The lock for model ``NAME`` is therefore the registered model ``NAME.promotion-lock``:

- acquire = ``create_registered_model(lock_name, tags={owner, expires_at})``; exactly one concurrent caller
  succeeds, the others see ``RESOURCE_ALREADY_EXISTS`` and poll until ``timeout_s``;
- release = delete it, only when its ``owner`` tag is still ours;
- a holder that died leaves a lock that expires after ``ttl_s``; a waiter that finds an expired lock deletes it
  after re-reading that it is still the same lock (owner token), then competes for a fresh create. The
  re-read-then-delete has a small window; it matters only after a crash, and the champion re-check inside
  :func:`bertops.registry.promote.promote` still refuses a stale move.

    with PromotionLock(client, "bert-sentiment", timeout_s=60):
        ...  # read the champion alias, move it

The lock model shows in the MLflow UI's model list while held, with a description saying what it is.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from types import TracebackType
from typing import TYPE_CHECKING

from bertops.registry.errors import PromotionConflict

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)
LOCK_SUFFIX = ".promotion-lock"


def lock_name(model_name: str) -> str:
    return f"{model_name}{LOCK_SUFFIX}"


class PromotionLock:
    """An exclusive, expiring lock on promotions of one registered model (context manager)."""

    def __init__(
        self,
        client: MlflowClient,
        model_name: str,
        timeout_s: float = 120.0,
        ttl_s: float = 300.0,
        poll_s: float = 0.2,
    ) -> None:
        self.client = client
        self.name = lock_name(model_name)
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.held = False

    def _try_create(self) -> bool:
        from mlflow.exceptions import MlflowException

        expires = time.time() + self.ttl_s
        try:
            self.client.create_registered_model(
                self.name,
                tags={"owner": self.owner, "expires_at": f"{expires:.3f}"},
                description=f"bertops promotion lock, held by {self.owner}; deleted when the promotion ends.",
            )
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        return True

    def _current(self) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_registered_model(self.name).tags)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _break_if_expired(self) -> None:
        tags = self._current()
        if tags is None or float(tags.get("expires_at", "inf")) > time.time():
            return
        again = self._current()
        if again is not None and again.get("owner") == tags.get("owner"):
            logger.warning("breaking the expired promotion lock %s held by %s", self.name, tags.get("owner"))
            self._delete()

    def _delete(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self._try_create():
                # Written, now verified: the lock must carry our owner token.
                tags = self._current()
                if tags is not None and tags.get("owner") == self.owner:
                    self.held = True
                    logger.debug("acquired %s as %s", self.name, self.owner)
                    return
            self._break_if_expired()
            if time.monotonic() > deadline:
                holder = (self._current() or {}).get("owner", "unknown")
                raise PromotionConflict(
                    f"could not acquire the promotion lock {self.name!r} within {self.timeout_s}s "
                    f"(held by {holder}); another promotion is running. If its process died, the lock expires "
                    f"after {self.ttl_s}s"
                )
            time.sleep(self.poll_s)

    def release(self) -> None:
        if not self.held:
            return
        tags = self._current()
        if tags is not None and tags.get("owner") == self.owner:
            self._delete()
        else:
            logger.warning(
                "promotion lock %s was no longer ours at release (expired and taken over?)", self.name
            )
        self.held = False

    def __enter__(self) -> PromotionLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
