"""Rebuild docs/report.png, the README's screenshot of the HTML report of the example data.

    python tools/report_screenshot.py

A maintainer's tool, never run by the tests. It runs, from the repository,
`python hash_and_search.py -a haystack -n needles --html FILE` and takes the first screen
(1280 x 900) of FILE in headless Chromium, with the tests' driver (tests/browser.py).
"""
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from browser import LOAD_ALL_IMAGES_JS, Chromium, find_chromium  # noqa: E402

if __name__ == "__main__":
    executable = find_chromium()
    if executable is None:
        sys.exit("Chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        subprocess.run([sys.executable, "hash_and_search.py", "-a", "haystack", "-n", "needles", "--no-cache",
                        "--quiet", "--html", str(page)], cwd=REPO, stdout=subprocess.DEVNULL, check=False)
        with Chromium(executable, width=1280, height=900) as browser:
            browser.open(page)
            browser.evaluate(LOAD_ALL_IMAGES_JS)
            print(browser.screenshot(REPO / "docs" / "report.png"))
