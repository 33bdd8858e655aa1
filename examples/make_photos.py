"""The support and query images of the README's `fewsight predict` examples, extracted from the data.

    python examples/make_photos.py [--data DIR] [--out DIR]

writes into --out (default: the current folder)

    angelic/support/char01/0965_01.png, 0965_02.png   Omniglot's Angelic characters 1-3 (from
    angelic/support/char02/0966_01.png, 0966_02.png   images_evaluation.zip, unseen by the bundled
    angelic/support/char03/0967_01.png, 0967_02.png   omniglot model): drawings 01 and 02 support,
    angelic/query/0965_05.png, 0966_05.png, 0967_05.png   drawing 05 the query
    photos/support/{king_crab,dalmatian,nematode}/    the miniImageNet sample's test photos of three
    photos/query/crab1-5.jpg, dog1-5.jpg, nematode1-5.jpg   classes: the first five of each by file
                                                      name support, the other five the queries

--data is the folder holding omniglot/images_evaluation.zip and miniimagenet-sample/ (default:
$FEWSIGHT_DATA, else ../shared/data). Omniglot's drawings are MIT-licensed (github.com/brendenlake/omniglot).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
from pathlib import Path

ANGELIC = {"char01": "0965", "char02": "0966", "char03": "0967"}  # class name: the drawings' prefix
SUPPORT_DRAWINGS, QUERY_DRAWING = ("01", "02"), "05"
MINI = {  # class name: its WordNet id in test.csv, the queries' file names
    "king_crab": ("n01981276", "crab"),
    "dalmatian": ("n02110341", "dog"),
    "nematode": ("n01930112", "nematode"),
}


def angelic(data: Path, out: Path) -> list[Path]:
    """Drawings 01 and 02 of Angelic characters 1-3 as support, drawing 05 of each as query."""
    written = []
    with zipfile.ZipFile(data / "omniglot" / "images_evaluation.zip") as archive:
        for number, (name, prefix) in enumerate(ANGELIC.items(), start=1):
            folder = f"images_evaluation/Angelic/character{number:02d}"
            for drawing in SUPPORT_DRAWINGS:
                written.append(out / "angelic" / "support" / name / f"{prefix}_{drawing}.png")
                _write(written[-1], archive.read(f"{folder}/{prefix}_{drawing}.png"))
            written.append(out / "angelic" / "query" / f"{prefix}_{QUERY_DRAWING}.png")
            _write(written[-1], archive.read(f"{folder}/{prefix}_{QUERY_DRAWING}.png"))
    return written


def photos(data: Path, out: Path) -> list[Path]:
    """The miniImageNet sample's test photos of three classes: the first five of each (by file name)
    as support, the other five as queries, named crab1.jpg ... nematode5.jpg."""
    sample = data / "miniimagenet-sample"
    rows = [line.split(",") for line in (sample / "test.csv").read_text().splitlines()[1:]]
    written = []
    for name, (wnid, short) in MINI.items():
        files = sorted(file for file, label in rows if label == wnid)
        for file in files[:5]:
            written.append(out / "photos" / "support" / name / file)
            _write(written[-1], (sample / "images" / file).read_bytes())
        for number, file in enumerate(files[5:10], start=1):
            written.append(out / "photos" / "query" / f"{short}{number}.jpg")
            _write(written[-1], (sample / "images" / file).read_bytes())
    return written


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("FEWSIGHT_DATA") or "../shared/data"
    parser.add_argument("--data", type=Path, default=Path(default), help=f"data folder (default: {default})")
    parser.add_argument("--out", type=Path, default=Path("."), help="where angelic/ and photos/ go")
    args = parser.parse_args(argv)
    for part, make, needs in (
        ("angelic", angelic, "omniglot/images_evaluation.zip"),
        ("photos", photos, "miniimagenet-sample/test.csv"),
    ):
        if not (args.data / needs).is_file():
            print(f"skipped {part}/: no {args.data / needs} (--data names the data folder)", file=sys.stderr)
            continue
        shutil.rmtree(args.out / part, ignore_errors=True)
        written = make(args.data, args.out)
        print(f"wrote {len(written)} images to {args.out / part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
