"""Keys of checks that passed before, kept in a small file per user, so that a run does not
pay for the same check again: DP3's check of a chain's parameters, the schema check of a
config. A key names everything the check's verdict depends on; a check that fails is never
remembered. Best effort: a file that cannot be read or written only means checking again."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


class RememberedKeys:
    """The last `kept` keys added to the JSON list at `path` (newest last)."""

    def __init__(self, path: Path, kept: int):
        self.path = path
        self.kept = kept

    def keys(self) -> list[str]:
        with contextlib.suppress(OSError, ValueError):
            keys = json.loads(self.path.read_text())
            if isinstance(keys, list):
                return [key for key in keys if isinstance(key, str)]
        return []

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def add(self, key: str) -> None:
        keys = [known for known in self.keys() if known != key][-(self.kept - 1) :] + [key]
        with contextlib.suppress(OSError):
            # Renamed into place: runs at once each see a whole list (one may lose a key).
            temporary = self.path.with_suffix(f".{os.getpid()}")
            temporary.write_text(json.dumps(keys))
            temporary.replace(self.path)
