"""Pages as a person sees them: a copy of the page, with a script that looks at what the
browser drew and writes it into the page, rendered by headless Chromium (Debian's
`chromium`, which .ci/run installs), whose DOM after its scripts ran is read back."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

RESULT_ID = "dp3batch-test"
# The page's script calls this with what it found; it is written into the page for --dump-dom.
REPORT_FUNCTION = f"""
function reportToTest(found) {{
  var pre = document.createElement("pre");
  pre.id = "{RESULT_ID}";
  pre.textContent = JSON.stringify(found);
  document.body.appendChild(pre);
}}
"""


def chromium() -> str:
    """Chromium's path; in CI (CI=true) a missing Chromium fails the test, elsewhere skips."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Debian's chromium (.ci/run installs it)")
        pytest.skip("no chromium here (apt-get install chromium)")
    return found


def rendered(page: Path, script: str, width: int = 1400, height: int = 1000) -> dict:
    """What `script` (run in a copy of `page` after it loaded, ending with a call of
    `reportToTest(found)`) found in the page as Chromium drew it at width x height."""
    copy = page.resolve().with_name(f"{page.stem}.rendered-for-test.html")
    text = page.read_text()
    position = text.rfind("</body>")
    injected = f"<script>{REPORT_FUNCTION}\n{script}</script>"
    copy.write_text(text[:position] + injected + text[position:])
    with tempfile.TemporaryDirectory() as profile:
        completed = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                # Virtual time: the page's timers run to completion before the DOM is read.
                "--virtual-time-budget=20000",
                "--dump-dom",
                copy.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    match = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', completed.stdout, re.DOTALL)
    assert match, f"the page's test script reported nothing: {completed.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))
