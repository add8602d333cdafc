"""The script as a user runs it: reports, verdicts, exit codes and JSON, on real photos."""
from __future__ import annotations

import json
import re

import cv2

from conftest import REPO, copy_photo, folders_in_report, read_photo, run_tool, write_image


def readme_block(after: str) -> str:
    """The fenced block that follows the line `after` in the README."""
    text = (REPO / "README.md").read_text()
    return re.search(re.escape(after) + r"\s*```[a-z]*\n(.*?)```", text, re.S).group(1)


def test_example_command_prints_what_the_readme_promises() -> None:
    command = readme_block("Run it on the example data:").strip().splitlines()[-1]
    assert command == "python hash_and_search.py --haystack haystack --needles needles"
    completed = run_tool("--haystack", "haystack", "--needles", "needles", cwd=REPO)
    assert completed.stdout == readme_block("It prints:")
    assert completed.returncode == 1


def test_example_folders_and_verdicts() -> None:
    completed = run_tool("-a", "haystack", "-n", "needles", cwd=REPO)
    assert folders_in_report(completed.stdout) == {
        "camera/2021-05": "not", "phone-ben/DCIM": "not", "old scans/album 2": "partly"}
    assert "In the haystack: 6 folders, 11 images." in completed.stdout


def test_folders_are_named_by_their_path_from_the_needles_root(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    copy_photo(0, needles / "phone-a" / "DCIM" / "x.jpg")
    copy_photo(1, needles / "phone-b" / "DCIM" / "y.jpg")
    copy_photo(0, needles / "top.jpg")
    completed = run_tool("-a", haystack, "-n", needles, "--json")
    verdicts = {f["folder"]: f["verdict"] for f in json.loads(completed.stdout)["folders"]}
    assert verdicts == {".": "in_haystack", "phone-a/DCIM": "in_haystack", "phone-b/DCIM": "not_in_haystack"}


def test_exit_status_is_0_when_every_needle_matched(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "2019" / "a.jpg")
    write_image(needles / "backup" / "a.png", cv2.imread(str(haystack / "2019" / "a.jpg")))
    completed = run_tool("-a", haystack, "-n", needles)
    assert completed.returncode == 0
    assert completed.stdout == "Every needle folder is in the haystack: 1 folder, 1 image.\n"


def test_partly_imported_folder_is_listed_with_counts(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    copy_photo(0, needles / "trip" / "a.jpg")
    copy_photo(1, needles / "trip" / "b.jpg")
    copy_photo(2, needles / "trip" / "c.jpg")
    completed = run_tool("-a", haystack, "-n", needles, "--list-missing")
    assert completed.returncode == 1
    assert "Partly in the haystack (1 folder):\n  trip  1 of 3 images matched\n" in completed.stdout
    listed = completed.stdout.split("matched\n", 1)[1].splitlines()[:2]
    assert [line.strip() for line in listed] == ["b.jpg", "c.jpg"]


def test_json_holds_the_whole_result(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "lib" / "a.jpg")
    copy_photo(0, needles / "old" / "a copy.jpg")
    copy_photo(1, needles / "old" / "new.jpg")
    (needles / "old" / "broken.jpg").write_bytes(b"not a jpeg")
    completed = run_tool("-a", haystack, "-n", needles, "--json")
    document = json.loads(completed.stdout)
    assert document["tool"]["name"] == "hash_and_search" and document["tool"]["version"]
    assert document["settings"]["hash_size"] == 8
    assert document["folders"] == [{"folder": "old", "verdict": "partly_in_haystack", "images": 3,
                                    "matched": 1, "unmatched": {"missing": 1, "unreadable": 1}}]
    needles_by_path = {n["path"]: n for n in document["needles"]}
    assert needles_by_path["old/a copy.jpg"]["match"] == {
        "path": "lib/a.jpg", "distance": 0, "orientation": "as is", "similarity": None}
    assert re.fullmatch(r"[0-9a-f]{16}", needles_by_path["old/a copy.jpg"]["hash"])
    assert needles_by_path["old/new.jpg"]["status"] == "missing" and needles_by_path["old/new.jpg"]["match"] is None
    assert needles_by_path["old/broken.jpg"]["status"] == "unreadable"
    assert document["unreadable"] == [{"tree": "needles", "path": "old/broken.jpg",
                                       "reason": needles_by_path["old/broken.jpg"]["reason"]}]
    assert document["totals"]["needle_images"] == 3 and document["totals"]["needles_matched"] == 1
    assert completed.returncode == 1


def test_summary_on_stderr_counts_images(trees) -> None:
    haystack, needles = trees
    for name in ("a.jpg", "same-as-a.jpg"):
        copy_photo(0, haystack / name)
    copy_photo(1, needles / "b.jpg")
    completed = run_tool("-a", haystack, "-n", needles)
    assert "haystack: 2 images hashed, 0 unreadable, 0 unsupported" in completed.stderr
    assert "needles: 1 image hashed" in completed.stderr
    assert run_tool("-a", haystack, "-n", needles, "--quiet").stderr == ""


def test_low_detail_needles_are_not_evidence_of_import(trees) -> None:
    haystack, needles = trees
    black = read_photo(0) * 0
    write_image(haystack / "lens cap.jpg", black)
    write_image(needles / "night" / "black.png", black)
    completed = run_tool("-a", haystack, "-n", needles, "--json")
    needle = json.loads(completed.stdout)["needles"][0]
    assert needle["status"] == "low_detail" and needle["match"] is None
    assert completed.returncode == 1


def test_usage_errors_exit_2(trees) -> None:
    haystack, needles = trees
    assert run_tool("-a", haystack).returncode == 2
    assert run_tool("-a", haystack, "-n", needles, "--hash-size", "1").returncode == 2


def test_help_documents_the_exit_status() -> None:
    completed = run_tool("--help")
    assert completed.returncode == 0
    assert "exit status: 0" in " ".join(completed.stdout.split())


def test_ci_runs_the_readme_test_command() -> None:
    command = readme_block("## Run the tests").strip()
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
