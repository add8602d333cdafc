"""Reports, verdicts, exit codes and JSON, on real photos: the README example and the exit
statuses as a user runs the script, the rest in this process."""
from __future__ import annotations

import json
import re

import cv2

import hash_and_search as hs
from conftest import REPO, copy_photo, read_photo, run_tool, run_trees, write_image


def readme_block(after: str) -> str:
    """The fenced block that follows the line `after` in the README."""
    text = (REPO / "README.md").read_text()
    return re.search(re.escape(after) + r"\s*```[a-z]*\n(.*?)```", text, re.S).group(1)


def verdicts(result: hs.RunResult) -> dict[str, str]:
    return {folder.folder: folder.verdict.value for folder in result.folders}


def test_example_command_prints_what_the_readme_promises() -> None:
    command = readme_block("Run it on the example data:").strip().splitlines()[-1]
    assert command == "python hash_and_search.py --haystack haystack --needles needles"
    completed = run_tool("--haystack", "haystack", "--needles", "needles", cwd=REPO)
    assert completed.stdout == readme_block("It prints:")
    assert completed.returncode == 1


def test_example_folders_and_verdicts() -> None:
    result = run_trees(REPO / "haystack", REPO / "needles")
    assert {folder: verdict for folder, verdict in verdicts(result).items() if verdict != "in_haystack"} == {
        "camera/2021-05": "not_in_haystack", "phone-ben/DCIM": "not_in_haystack",
        "old scans/album 2": "partly_in_haystack"}
    assert "In the haystack: 6 folders, 11 images." in hs.render_text(result)
    assert result.exit_code == 1


def test_folders_are_named_by_their_path_from_the_needles_root(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    copy_photo(0, needles / "phone-a" / "DCIM" / "x.jpg")
    copy_photo(1, needles / "phone-b" / "DCIM" / "y.jpg")
    copy_photo(0, needles / "top.jpg")
    assert verdicts(run_trees(haystack, needles)) == {
        ".": "in_haystack", "phone-a/DCIM": "in_haystack", "phone-b/DCIM": "not_in_haystack"}


def test_a_folder_is_in_the_haystack_only_when_every_image_in_it_matched() -> None:
    def needle(rel: str, status: hs.NeedleStatus, kind: hs.Kind = hs.Kind.PHOTO) -> hs.NeedleResult:
        return hs.NeedleResult(rel, kind, status)
    found = hs.folder_verdicts([
        needle("all/a.jpg", hs.NeedleStatus.MATCHED), needle("all/b.jpg", hs.NeedleStatus.MATCHED),
        needle("all/b.xmp", hs.NeedleStatus.NOT_COMPARED, hs.Kind.SIDECAR),
        needle("some/a.jpg", hs.NeedleStatus.MATCHED), needle("some/b.jpg", hs.NeedleStatus.LOW_DETAIL),
        needle("none/a.jpg", hs.NeedleStatus.MISSING), needle("none/b.mov", hs.NeedleStatus.MISSING, hs.Kind.VIDEO),
        needle("top.jpg", hs.NeedleStatus.UNREADABLE), needle("docs/a.pdf", hs.NeedleStatus.NOT_COMPARED, hs.Kind.OTHER)])
    assert [(f.folder, f.verdict.value, f.compared, f.matched, f.not_compared) for f in found] == [
        (".", "not_in_haystack", 1, 0, 0),
        ("all", "in_haystack", 2, 2, 1),
        ("docs", "nothing_compared", 0, 0, 1),
        ("none", "not_in_haystack", 2, 0, 0),
        ("some", "partly_in_haystack", 2, 1, 0)]


def test_exit_status_is_0_when_every_needle_matched(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "2019" / "a.jpg")
    write_image(needles / "backup" / "a.png", cv2.imread(str(haystack / "2019" / "a.jpg")))
    completed = run_tool("-a", haystack, "-n", needles)
    assert completed.returncode == 0
    assert completed.stdout == ("In the haystack (1 folder):\n  backup  1 of 1 image matched\n"
                                "Every needle folder is in the haystack: 1 folder, 1 image.\n")


def test_partly_imported_folder_is_listed_with_counts(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    copy_photo(0, needles / "trip" / "a.jpg")
    copy_photo(1, needles / "trip" / "b.jpg")
    copy_photo(2, needles / "trip" / "c.jpg")
    result = run_trees(haystack, needles)
    assert result.exit_code == 1
    text = hs.render_text(result, list_missing=True)
    assert "Partly in the haystack (1 folder):\n  trip  1 of 3 images matched\n" in text
    listed = text.split("matched\n", 1)[1].splitlines()[:2]
    assert [line.strip() for line in listed] == ["b.jpg", "c.jpg"]
    assert "b.jpg" not in hs.render_text(result)  # listed only when asked


def test_json_holds_the_whole_result(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "lib" / "a.jpg")
    copy_photo(0, needles / "old" / "a copy.jpg")
    copy_photo(1, needles / "old" / "new.jpg")
    (needles / "old" / "broken.jpg").write_bytes(b"not a jpeg")
    result = run_trees(haystack, needles)
    document = json.loads(hs.render_json(result))
    assert document["tool"]["name"] == "hash_and_search" and document["tool"]["version"]
    assert document["settings"]["hash_size"] == 8
    assert document["folders"] == [{"folder": "old", "verdict": "partly_in_haystack", "compared": 3,
                                    "matched": 1, "not_compared": 0,
                                    "by_kind": {"photo": {"matched": 1, "missing": 1, "unreadable": 1}}}]
    needles_by_path = {n["path"]: n for n in document["needles"]}
    assert needles_by_path["old/a copy.jpg"]["match"] == {
        "path": "lib/a.jpg", "method": "byte_identical", "distance": 0, "orientation": "as is", "similarity": None}
    assert re.fullmatch(r"[0-9a-f]{16}", needles_by_path["old/a copy.jpg"]["hash"])
    assert needles_by_path["old/new.jpg"]["status"] == "missing" and needles_by_path["old/new.jpg"]["match"] is None
    assert needles_by_path["old/broken.jpg"]["status"] == "unreadable"
    assert document["unreadable"] == [{"tree": "needles", "path": "old/broken.jpg",
                                       "reason": needles_by_path["old/broken.jpg"]["reason"]}]
    assert document["totals"]["needle_files"] == 3 and document["totals"]["needles_matched"] == 1
    assert result.exit_code == 1


def test_summary_on_stderr_counts_images(trees) -> None:
    haystack, needles = trees
    for name in ("a.jpg", "same-as-a.jpg"):
        copy_photo(0, haystack / name)
    copy_photo(1, needles / "b.jpg")
    completed = run_tool("-a", haystack, "-n", needles)
    assert "haystack: 2 images hashed, 0 unreadable, in " in completed.stderr
    assert "needles: 1 image hashed" in completed.stderr
    assert run_tool("-a", haystack, "-n", needles, "--quiet").stderr == ""


def test_low_detail_needles_are_not_evidence_of_import(trees) -> None:
    haystack, needles = trees
    black = read_photo(0) * 0
    write_image(haystack / "lens cap.jpg", black)
    write_image(needles / "night" / "black.png", black)
    result = run_trees(haystack, needles)
    [needle] = result.results
    assert needle.status == "low_detail" and needle.match is None
    assert result.exit_code == 1


def test_options_become_settings(tmp_path, private_cache) -> None:
    assert hs.parse_args(["-a", "lib", "-n", "old"])[1] == hs.Settings(
        cache=private_cache / "hash_and_search" / "fingerprints.sqlite3")
    assert hs.parse_args(["-a", "lib", "-n", "old", "--hash-size", "16", "-d", "6", "--rotations", "-j", "1",
                          "--cache", str(tmp_path / "c"), "--prune-cache"])[1] == hs.Settings(
        hash_size=16, distance=6, rotations=True, jobs=1, cache=tmp_path / "c", prune_cache=True)
    assert hs.parse_args(["-a", "lib", "-n", "old", "--no-cache"])[1].cache is None


def test_list_missing_and_verbose_reach_the_report(trees, cli) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    (haystack / "broken.png").write_bytes(b"junk")
    copy_photo(1, needles / "trip" / "b.jpg")
    completed = cli("-a", haystack, "-n", needles, "--no-cache", "--list-missing", "--verbose")
    assert completed.returncode == 1
    assert completed.stdout.splitlines()[1:3] == ["  trip  0 of 1 image matched", "      b.jpg"]
    assert "  unreadable: broken.png: " in completed.stderr


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


def test_jobs_beyond_the_cores_is_a_usage_error(trees) -> None:
    cores = hs.default_jobs()
    completed = run_tool("-a", trees[0], "-n", trees[1], "--jobs", str(cores + 1))
    assert completed.returncode == 2 and f"--jobs must be from 1 to {cores}, the cores" in completed.stderr
