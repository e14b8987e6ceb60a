"""The report renders in a real browser (Debian's chromium, installed by scripts/setup-system.sh): every image loads.

Set SPF_EVAL_SCREENSHOT=/path/to/report.png to keep the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests._eval_helpers import evaluated

CHROMIUM = os.environ.get("SPF_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} missing: run scripts/setup-system.sh (apt chromium)")


def _chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _image_check(dom: str) -> dict[str, str]:
    m = re.search(r'<div id="spf-image-check"([^>]*)>', dom)
    assert m, "report has no #spf-image-check element"
    return dict(re.findall(r'(data-[a-z]+)="([^"]*)"', m.group(1)))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return evaluated(tmp_path_factory, 0.3)


def test_every_image_of_the_report_loads(result, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", result.report_path.as_uri())
    check = _image_check(dom)
    n_items = int(result.metrics["n_base_pairs"] + result.metrics["n_target_pairs"])
    assert check == {"data-ok": "true", "data-total": str(3 * n_items), "data-loaded": str(3 * n_items)}
    assert "Summary" in dom and "pollution" in dom


def test_screenshot_of_the_report(result, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", result.report_path.as_uri())
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert img.shape[:2] == (2400, 1280)
    assert img.std() > 10  # not a blank page
    keep = os.environ.get("SPF_EVAL_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep)


def test_a_missing_image_is_caught(result, tmp_path):
    """The check can fail: a report linking images by path, with one file removed, reports it."""
    from spf_lib.eval.evalset import EvalItem
    from spf_lib.eval.report import render_report

    out = tmp_path / "copy"
    shutil.copytree(result.output_dir, out)
    import json

    pairs = json.loads((out / "pairs.json").read_text())
    items = [EvalItem(v["kind"], int(k.split("_")[1]), v["prompt"], v["seed"]) for k, v in pairs.items()]
    paths = {kind: {it.key: f"images/{kind}/{it.key}.png" for it in items} for kind in ("original", "tuned", "diff")}
    (out / paths["tuned"][items[0].key]).unlink()
    html = render_report(out, title="t", metrics=result.metrics, unavailable=result.unavailable,
                         pollution_detail=result.pollution_detail, eval_set=result.eval_set, items=items,
                         pairs=pairs, paths=paths, embed=False)
    (out / "linked.html").write_text(html)
    check = _image_check(_chromium(tmp_path, "--dump-dom", (out / "linked.html").as_uri()))
    assert check["data-ok"] == "false"
    assert int(check["data-loaded"]) == int(check["data-total"]) - 1
