"""The one error type of the data pipeline: it says *where* the data is wrong.

Every check that rejects input raises :class:`DataError` with the file, the row (or line) and the field, so a
user can open the file and fix it::

    DataError("label 'neutral' is not one of ['negative', 'positive']",
              file="data/raw/reviews.csv", row=17, field="label")
    # -> data/raw/reviews.csv, row 17, field 'label': label 'neutral' is not one of [...]
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. ``str(err)`` starts with the location: file, row (1-based) and field where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.row = row
        self.field = field
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        where = [
            part
            for part in (
                self.file,
                f"row {self.row}" if self.row is not None else None,
                f"field {self.field!r}" if self.field is not None else None,
            )
            if part
        ]
        text = f"{', '.join(where)}: {self.message}" if where else self.message
        return f"{text} ({self.hint})" if self.hint else text
