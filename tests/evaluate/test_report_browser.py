"""The report as a reader sees it: report.html rendered by headless Chromium (issue 17).

Skipped where Chromium is not installed (``.ci/run`` installs the Debian package ``chromium``).
A copy of the page gets a script that, once every image has loaded or failed, writes what it
measured into the page; Chromium's ``--dump-dom`` prints the page after its scripts ran.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import evaluate, make_table

from genmeasures.evaluate import report as rp

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

#: The first screen of a laptop.
WIDTH, HEIGHT = 1280, 800

PROBE = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const board = [...document.querySelectorAll("caption")]
    .find((c) => c.textContent.startsWith("Measures ranked by"));
  const rows = board ? board.closest("table").querySelectorAll("tbody tr") : [];
  const result = {
    images: images.length,
    broken: images.filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.alt),
    boardTop: board ? board.closest("table").getBoundingClientRect().top : null,
    firstRowBottom: rows.length ? rows[0].getBoundingClientRect().bottom : null,
    findingsTop: document.querySelector(".findings").getBoundingClientRect().top,
    screen: window.innerHeight,
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>
"""


@pytest.mark.skipif(BROWSER is None, reason="Chromium is not installed")
def test_the_first_screen_shows_the_findings_and_the_ranked_measures(tmp_path: Path) -> None:
    measures = ["m1", "m2", "m3"]
    folder = tmp_path / "report"
    rp.write_report(evaluate(make_table(measures), measures), folder, title="browser")
    page = (folder / "report.html").read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = subprocess.run(
        [
            str(BROWSER),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--window-size={WIDTH},{HEIGHT}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run: {done.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] == 2 + 3 + len(measures)  # scores, population, trends, scatters
    assert result["broken"] == []
    assert 0 <= result["findingsTop"] < result["boardTop"] < result["screen"]
    assert result["firstRowBottom"] <= result["screen"], "the best measure is on the first screen"
