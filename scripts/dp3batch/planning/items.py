"""Planning's pass over the inputs: every MS as its work items (one per spectral window of an
MS of several), each with its pending reason, in one pass over every core."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dp3batch.books.layout import check_output_names
from dp3batch.books.records import RecordStore
from dp3batch.config.errors import ConfigError
from dp3batch.inputs.discovery import WorkItem, check_output_not_link, output_name, window_items
from dp3batch.inputs.windows import WINDOW_SUFFIX, Windows, known_windows, outputs_by_name
from dp3batch.planning.parallel import map_over_cores

Answer = TypeVar("Answer")


def per_window_items(
    items: list[WorkItem],
    output_dir: Path,
    store: RecordStore,
    then: Callable[[WorkItem], Answer],
) -> list[tuple[WorkItem, Answer]]:
    """Every MS as its window items (for steps that select no `msin.band` themselves), each
    with `then(item)`, asked in the same pass while the item's completion record is still in
    memory (planning's pending reason: one pass over 10,000 MSs, not two). A name two items
    would share is refused. Opens the MSs whose windows no completion record knows (see
    windows)."""
    existing = outputs_by_name(output_dir, {ms.name for ms in items})

    def items_of(ms: WorkItem) -> tuple[Windows | None, list[Answer]]:
        # The windows and the answers go back, not the items: they are made again from
        # the windows (cheaper than sending 10,000 paths back).
        windows = known_windows(ms.input, existing.get(ms.name, []), store)
        return windows, [then(item) for item in _items_of(ms, windows)]

    answered: list[tuple[WorkItem, Answer]] = []
    owners: dict[str, WorkItem] = {}
    found = map_over_cores(items_of, items)
    for ms, (windows, answers) in zip(items, found, strict=True):
        for item, answer in zip(_items_of(ms, windows), answers, strict=True):
            if item.name in owners:
                raise ConfigError(_collision_message(owners[item.name], item))
            owners[item.name] = item
            if item.output != ms.output:
                check_output_not_link(item)
                check_output_names(output_dir, [item.output.name])
            answered.append((item, answer))
    return answered


def _items_of(ms: WorkItem, windows: Windows | None) -> list[WorkItem]:
    return [ms] if windows is None else window_items(ms, windows)


def _collision_message(first: WorkItem, second: WorkItem) -> str:
    def described(item: WorkItem) -> str:
        if item.name == output_name(item.input):
            return str(item.input)
        return f"{item.input} (spectral window {item.band})"

    return (
        f"inputs: {described(first)} and {described(second)} would both be written to "
        f"{second.name}.ms (an MS of several spectral windows gives one output per window, "
        f"NAME{WINDOW_SUFFIX}<band>.ms); rename one, or process them in separate output "
        "directories"
    )


def check_selected_band(
    items: list[WorkItem], band: int, output_dir: Path, store: RecordStore
) -> None:
    """Steps that choose a window (`msin.band`): every MS must have rows of it (DP3 would
    stop with "Band k not found"). Cheap on a rerun: the records know the windows."""
    existing = outputs_by_name(output_dir, {ms.name for ms in items})
    for ms in items:
        windows = known_windows(ms.input, existing.get(ms.name, []), store)
        if windows is not None and band not in windows.bands:
            bands = ", ".join(str(known) for known in windows.bands) or "none"
            raise ConfigError(
                f"steps: MsIn band {band} selects no data of {ms.input}: its rows are of "
                f"band(s) {bands} (DATA_DESC_ID); choose one of those, or leave `band` out "
                "to process every window"
            )
