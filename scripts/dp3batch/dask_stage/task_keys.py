"""How the DP3 tasks are named on the dask dashboard.

The dashboard groups tasks (progress bars, task-stream colours and hover) by
`distributed.utils.key_split(key)`: the key's first `-`-separated word, plus the following
words that are purely alphabetic. In a batch of up to `LABELLED_BATCH_LIMIT` MSs the first
word is `dp3 <name>`, with any `-` in the name written as a non-breaking hyphen (U+2011,
which looks the same) so that the whole name stays in it; the batch id and the MS's
position in the batch follow and keep the key unique.

A larger batch shows every task as `dp3`, one progress bar: the key is
`dp3-<index>-<batch>-<name>`, whose second word is a number, so key_split stops there. A
bar per MS would make the page useless with thousands of MSs, and dask keeps every label's
state (a task prefix and its metrics) for the scheduler's lifetime: an external scheduler
kept for many batches grew 8.5 KB per labelled MS ever run, 2 KB per unlabelled one.
"""

from __future__ import annotations

NON_BREAKING_HYPHEN = "\u2011"
LABELLED_BATCH_LIMIT = 64


def task_label(name: str) -> str:
    """What the dashboard shows for the task of one MS in a small batch: `dp3 <name>`."""
    return f"dp3 {name.replace('-', NON_BREAKING_HYPHEN)}"


class TaskKeys:
    """The dask key of each task of one batch: unique per task and batch."""

    def __init__(self, names: list[str], batch_id: str) -> None:
        self.batch_id = batch_id
        self.labelled = len(names) <= LABELLED_BATCH_LIMIT
        self._keys: dict[str, str] = {}
        for name in names:
            self.of(name)

    def of(self, name: str) -> str:
        """The key of the task `name`; a task added later (a join) gets the next index."""
        if name not in self._keys:
            index = len(self._keys)
            self._keys[name] = (
                f"{task_label(name)}-{self.batch_id}-{index}"
                if self.labelled
                else f"dp3-{index}-{self.batch_id}-{name}"
            )
        return self._keys[name]
