"""--html: the page is escaped, self-contained and complete, and in a real browser (headless Chromium)
every unmatched image shows with its thumbnail."""
from __future__ import annotations

import html
import os
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

import hash_and_search as hs
import media
from browser import LOAD_ALL_IMAGES_JS, Chromium, find_chromium
from conftest import copy_photo, read_photo, write_image
from test_trust import burst

# CI sets this (.ci/run), so that a runner without Chromium fails instead of skipping the browser test.
REQUIRE_BROWSER = os.environ.get("HASH_AND_SEARCH_REQUIRE_BROWSER") == "1"

# Names that must reach the page as text, never as markup, and stay readable. No "/": that would
# make a folder.
HOSTILE_NAMES = (
    "<script>alert(1)<\\script>.jpg",
    '<img src=x onerror="alert(2)">.jpg',
    "Tom & Jerry \"quoted\" 'single'.jpg",
    "tab\there, new\nline, escape \x1b[31m.jpg",
    os.fsdecode(b"bad bytes \xff\xfe in name.jpg"),  # not UTF-8: kept as lone surrogates
    "rtl \u202egpj.jpg",  # shown reversed, as "gpj.jpg" backwards, if the bidi override were kept
    "café 日本語 😀.jpg",
    "--> ]]> <!-- <title> &amp; &#60;.jpg",
)
HOSTILE_FOLDER = '<i>folder<\\i> & "q" \u202e\x07'
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "code", "nav",
             "strong", "a", "span", "main", "section", "table", "thead", "tbody", "tr", "th", "td", "ul", "li",
             "figure", "figcaption", "img", "div", "footer"}


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def build_trees(root: Path) -> tuple[Path, Path]:
    """A library and a backup like the example data, with what the page must show: photos not
    found (one a HEIC), a burst shot that is only similar to a library photo, a near match (a
    gamma-edited half-size copy), a video, unreadable files in both trees, a sidecar, and
    hostile names in the roots, a folder and its files."""
    haystack, needles = root / "library <b>&amp;", root / "backup \"'\u202e\x1b"
    copy_photo(0, haystack / "2018" / "beach" / "IMG_1022.jpg")
    copy_photo(0, needles / "phone-anna" / "DCIM" / "IMG_1022.jpg")  # byte copy: matched, not shown
    first, second = burst(read_photo(1, max_side=800), 0.04)
    write_image(haystack / "burst" / "IMG_1.png", first)
    write_image(needles / "card" / "IMG_2.png", second)  # the next shot: similar, never matched
    letter = read_photo(3, max_side=600)
    write_image(haystack / "scans" / "letter.jpg", letter)
    edited = np.clip(255 * (letter / 255.0) ** 0.7, 0, 255).astype(np.uint8)
    write_image(needles / "scans" / "letter.jpg", cv2.resize(edited, None, fx=0.5, fy=0.5,
                                                              interpolation=cv2.INTER_AREA),
                cv2.IMWRITE_JPEG_QUALITY, 60)  # matched a few bits apart: a near match
    put(needles / "scans" / "torn.jpg", b"\xff\xd8 not really a JPEG")
    put(needles / "scans" / "letter.xmp", b"<x:xmpmeta/>")  # a sidecar: counted, never shown
    put(haystack / "2018" / "beach" / "IMG_1024.jpg", b"damaged")
    put(needles / "camera" / "2021-05" / "flower.heic", media.make_heic(read_photo(5, max_side=300)))
    put(needles / "camera" / "2021-05" / "MVI_0042.mov", media.make_video(read_photo(6, max_side=200), ".mov"))
    for i, name in enumerate(HOSTILE_NAMES):
        write_image(needles / HOSTILE_FOLDER / name, read_photo((2, 4, 7)[i % 3], max_side=300))
    put(needles / HOSTILE_FOLDER / "<b>broken<\\b> \x1b.jpg", b"")
    return haystack, needles


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[hs.RunResult, dict[hs.ThumbnailKey, bytes]]:
    haystack, needles = build_trees(tmp_path_factory.mktemp("trees"))
    result = hs.run(haystack, needles, hs.Settings(distance=16))  # wide enough to find the burst neighbour
    return result, hs.make_thumbnails(result)


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, as a browser's parser would see them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def shown(text: str) -> str:
    """What the page shows of a name: its escapes, as text."""
    return html.unescape(hs.shown_text(text))


def shown_needles(result: hs.RunResult) -> list[hs.NeedleResult]:
    """The needles the page must show: each one not matched (and compared), and each near match."""
    return [needle for needle in result.results if needle.status != hs.NeedleStatus.NOT_COMPARED and (
        needle.status != hs.NeedleStatus.MATCHED or needle.match.distance > 0)]


def test_names_are_shown_as_text() -> None:
    assert hs.shown_text('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
    assert hs.shown_text(os.fsdecode(b"bad \xff byte")) == "bad \\xff byte"
    assert hs.shown_text("tab\tnew\nline\x1b\x7f\x85") == "tab\\x09new\\x0aline\\x1b\\x7f\\x85"
    assert hs.shown_text("rtl \u202egpj.exe \u2066x\u2069") == "rtl \\u202egpj.exe \\u2066x\\u2069"
    assert hs.shown_text("café 日本語 😀") == "café 日本語 😀"


def test_the_run_has_what_the_page_must_show(made) -> None:
    result, _ = made
    statuses = {needle.rel: needle.status for needle in result.results}
    assert statuses["card/IMG_2.png"] == hs.NeedleStatus.SIMILAR
    assert statuses["camera/2021-05/flower.heic"] == statuses["camera/2021-05/MVI_0042.mov"] == "missing"
    assert statuses["scans/torn.jpg"] == hs.NeedleStatus.UNREADABLE
    near = {needle.rel for needle in result.results if needle.match and needle.match.distance > 0}
    assert near == {"scans/letter.jpg"}
    assert [problem.rel for problem in result.haystack.unreadable] == ["2018/beach/IMG_1024.jpg"]


def test_hostile_names_add_no_markup_and_stay_utf8(made) -> None:
    result, thumbnails = made
    page = hs.render_html(result, thumbnails)
    page.encode("utf-8")  # strict: no lone surrogate is left
    tags = Tags(page).tags
    assert {tag for tag, _ in tags} <= PAGE_TAGS
    assert not [attrs for _, attrs in tags if any(name.startswith("on") for name in attrs)]
    titles = {attrs["title"] for _, attrs in tags if "title" in attrs}
    for name in HOSTILE_NAMES:
        assert shown(f"{HOSTILE_FOLDER}/{name}") in titles
    text = html.unescape(page)
    for raw in ("\u202e", "\x1b", "\x07", "\t", "\udcff"):
        assert raw not in text
    assert shown(str(result.needles_root)) in text and shown(str(result.haystack_root)) in text
    assert "\\u202e" in text and "\\xff\\xfe" in text and "\\x1b" in text  # shown as escapes


def test_page_loads_nothing_from_outside(made) -> None:
    page = hs.render_html(*made)
    tags = Tags(page).tags
    for tag, attrs in tags:
        assert (attrs.get("src") or "data:image/jpeg;base64,").startswith("data:image/jpeg;base64,"), tag
        assert (attrs.get("href") or "#").startswith("#"), tag
    assert "url(" not in page and "@import" not in page and "<script" not in page.lower()
    policies = [attrs["content"] for tag, attrs in tags if tag == "meta"
                and (attrs.get("http-equiv") or "").lower() == "content-security-policy"]
    assert policies == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]


def test_every_folder_and_unmatched_file_is_named(made) -> None:
    result, thumbnails = made
    text = html.unescape(hs.render_html(result, thumbnails))
    for folder in result.folders:
        assert shown(folder.folder) in text
    for needle in shown_needles(result):
        assert shown(needle.rel) in text  # in a title, or the unreadable table
    for tree in (result.haystack, result.needles):
        for problem in tree.unreadable:
            assert shown(problem.rel) in text and shown(problem.reason) in text
    assert "letter.xmp" not in text  # a sidecar is counted, not shown


def test_thumbnails_are_made_only_for_images_shown(made) -> None:
    result, thumbnails = made
    hostile = {("needles", f"{HOSTILE_FOLDER}/{name}") for name in HOSTILE_NAMES}
    assert hs.images_to_show(result) == hostile | {
        ("needles", "camera/2021-05/flower.heic"),  # decoded by pillow-heif, as for hashing
        ("needles", "card/IMG_2.png"), ("haystack", "burst/IMG_1.png"),
        ("needles", "scans/letter.jpg"), ("haystack", "scans/letter.jpg"),
    }  # not the video, the unreadable files, the sidecar, nor the exact match
    assert thumbnails.keys() == hs.images_to_show(result)


@pytest.mark.parametrize("shape", [(3000, 4000, 3), (4000, 3000, 3), (100, 80, 3)])
def test_a_thumbnail_is_a_small_jpeg(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = hs.make_thumbnail(pixels)
    thumbnail = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert data.startswith(b"\xff\xd8") and max(thumbnail.shape[:2]) == min(max(shape[:2]), hs.THUMBNAIL_MAX_SIDE)
    assert abs(thumbnail.shape[1] / thumbnail.shape[0] - shape[1] / shape[0]) < 0.02


def test_a_file_gone_since_the_run_leaves_an_empty_box(made, tmp_path: Path) -> None:
    result, _ = made
    moved = hs.RunResult(**{**{f.name: getattr(result, f.name) for f in hs.dataclasses.fields(result)},
                            "needles_root": tmp_path / "gone"})
    thumbnails = hs.make_thumbnails(moved)
    assert set(thumbnails) == {key for key in hs.images_to_show(result) if key[0] == "haystack"}
    assert '<div class="thumb none" aria-hidden="true">no preview</div>' in hs.render_html(moved, thumbnails)


def test_the_command_line_writes_the_page(cli, trees, tmp_path: Path) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    copy_photo(1, needles / "new" / "b.jpg")
    page = tmp_path / "report.html"
    done = cli("-a", haystack, "-n", needles, "--html", page, "--no-cache")
    assert done.returncode == 1 and "Not in the haystack (1 folder)" in done.stdout
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and 'title="new/b.jpg"' in text
    assert text.count('<img class="thumb" src="data:image/jpeg;base64,') == 1


@pytest.mark.parametrize("inside", ["haystack", "needles"])
def test_a_page_inside_a_folder_read_is_refused_before_the_run(cli, trees, inside: str) -> None:
    haystack, needles = trees
    copy_photo(0, needles / "a.jpg")
    page = (haystack if inside == "haystack" else needles) / "report.html"
    done = cli("-a", haystack, "-n", needles, "--html", page, "--no-cache")
    assert done.returncode == 2 and done.stdout == ""
    assert f"--html {page} is inside --{inside}, which is never written to" in done.stderr
    assert not page.exists()


def test_a_page_that_cannot_be_written_is_an_error(cli, trees, tmp_path: Path) -> None:
    haystack, needles = trees
    copy_photo(0, needles / "a.jpg")
    page = tmp_path / "no such folder" / "report.html"
    done = cli("-a", haystack, "-n", needles, "--html", page, "--no-cache")
    assert done.returncode == 2 and "Not in the haystack" in done.stdout
    assert f"--html {page}: no such file or directory" in done.stderr


# --- in a browser ---

@pytest.fixture(scope="module")
def chromium():
    executable = find_chromium()
    if executable is None:
        reason = "Chromium not found (Debian: apt-get install chromium): the HTML report was not opened in a browser"
        if REQUIRE_BROWSER:
            pytest.fail(reason + ", and HASH_AND_SEARCH_REQUIRE_BROWSER=1 requires it")
        pytest.skip(reason)
    with Chromium(executable, width=1280, height=900) as browser:
        yield browser


# What the page shows, read from the rendered DOM: each tile or pair with its names (the full
# paths, from the title attributes) and how many pixels wide each of its thumbnails decoded.
SHOWN_JS = """
[...document.querySelectorAll('li.tile, li.pair')].map(item => ({
  status: item.dataset.status,
  names: [...item.querySelectorAll('.name')].map(name => name.title),
  widths: [...item.querySelectorAll('img')].map(img => img.naturalWidth),
  placeholders: [...item.querySelectorAll('.thumb.none')].map(box => box.textContent),
}))
"""
PAGE_FACTS_JS = """
({scripts: document.scripts.length,
  handlers: [...document.querySelectorAll('*')]
    .filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
  background: getComputedStyle(document.body).backgroundColor,
  stickyTop: getComputedStyle(document.querySelector('nav.summary')).position,
  folders: [...document.querySelectorAll('table.folders td.folder')].map(td => td.textContent),
  unreadable: [...document.querySelectorAll('#unreadable td.folder')].map(td => td.textContent)})
"""


def test_every_unmatched_image_is_shown_in_the_browser(chromium: Chromium, made, tmp_path: Path) -> None:
    result, thumbnails = made
    page = tmp_path / "report.html"
    page.write_text(hs.render_html(result, thumbnails), encoding="utf-8")
    chromium.open(page)

    loaded = chromium.evaluate(LOAD_ALL_IMAGES_JS)
    assert loaded["images"] == len(thumbnails)  # one <img> per thumbnail: no name added one
    assert loaded["lazy"] == loaded["images"]  # every one deferred until near the screen
    items = {item["names"][0]: item for item in chromium.evaluate(SHOWN_JS)}
    needles = shown_needles(result)
    assert len(items) == len(needles)
    for needle in needles:
        item = items[shown(needle.rel)]
        assert item["status"] == needle.status.value
        other = needle.similar or (needle.match if needle.status == hs.NeedleStatus.MATCHED else None)
        if other is not None:  # similar or near: the library image beside it
            assert item["names"][1] == shown(other.path)
        if needle.kind in hs.HASHED_KINDS and needle.status != hs.NeedleStatus.UNREADABLE:
            assert item["widths"] and all(width > 0 for width in item["widths"]), item  # a loaded thumbnail
        else:
            assert item["placeholders"] == ["unreadable" if needle.status == "unreadable" else "video"], item
    facts = chromium.evaluate(PAGE_FACTS_JS)
    assert facts["scripts"] == 0 and facts["handlers"] == 0
    assert facts["stickyTop"] == "sticky"
    assert sorted(facts["folders"]) == sorted(shown(folder.folder) for folder in result.folders)
    assert sorted(facts["unreadable"]) == sorted(shown(problem.rel) for tree in (result.haystack, result.needles)
                                                 for problem in tree.unreadable)
    assert all(url.startswith(("file:", "data:")) for url in chromium.requested_urls())
    assert not [entry for entry in chromium.log_entries() if entry.startswith("error")]

    screenshot = chromium.screenshot(tmp_path / "report.png", full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    light = facts["background"]
    chromium.open(page, dark=True)
    assert chromium.evaluate(PAGE_FACTS_JS)["background"] != light  # prefers-color-scheme: dark is honoured
