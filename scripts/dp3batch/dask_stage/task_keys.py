"""How the DP3 tasks are named on the dask dashboard.

The dashboard groups tasks (progress bars, task-stream colours and hover) by
`distributed.utils.key_split(key)`: the key's first `-`-separated word, plus the following
words that are purely alphabetic. A key `dp3-<name>-<batch>` therefore showed every task as
`dp3`. Here the first word is `dp3 <name>`, with any `-` in the name written as a
non-breaking hyphen (U+2011, which looks the same) so that the whole name stays in it; the
batch id and the MS's position in the batch follow and keep the key unique.
"""

from __future__ import annotations

NON_BREAKING_HYPHEN = "\u2011"


def task_label(name: str) -> str:
    """What the dashboard shows for the task of one MS: `dp3 <name>`."""
    return f"dp3 {name.replace('-', NON_BREAKING_HYPHEN)}"


def task_keys(names: list[str], batch_id: str) -> dict[str, str]:
    """The dask key of each MS's task: unique per MS and batch, shown as `dp3 <name>`."""
    return {name: f"{task_label(name)}-{batch_id}-{index}" for index, name in enumerate(names)}
