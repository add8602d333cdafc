"""What a folder of videos costs when no video's size meets a haystack file's: a stat each.

    python benchmarks/video_benchmark.py [--gigabytes 4] [--videos 40]

Makes a haystack of the committed test photos and a needles folder of sparse "videos" (holes
take no disk, but any read of them would cost their full size) with sizes no haystack file
has, then prints the commands to time side by side: the same run with and without the
videos. With sizes that meet nothing, no video is read: the run must cost about the same.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=4.0)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--keep", type=Path, help="make the trees here and keep them")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="video-bench-"))
    haystack, photos_only, with_videos = base / "haystack", base / "needles-photos", base / "needles-videos"
    for folder in (haystack, photos_only, with_videos / "photos", with_videos / "clips"):
        folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted((REPO / "tests" / "photos").glob("*.jpg")):
        shutil.copy(photo, haystack / photo.name)
        shutil.copy(photo, photos_only / photo.name)
        shutil.copy(photo, with_videos / "photos" / photo.name)
    taken = {path.stat().st_size for path in haystack.iterdir()}
    size = int(args.gigabytes * 2**30 / args.videos)
    for i in range(args.videos):
        while size in taken:
            size += 1
        taken.add(size)
        with open(with_videos / "clips" / f"clip{i:03}.mov", "wb") as video:
            video.truncate(size)  # sparse: no disk used, but reading it would cost `size` bytes
    script = REPO / "hash_and_search.py"
    print(f"trees in {base}: {args.videos} videos, {args.gigabytes:g} GB in all (sparse)")
    for needles in (photos_only, with_videos):
        print(f"python {script} -a {haystack} -n {needles} --no-cache -q --json")


if __name__ == "__main__":
    main()
