"""Generalisation: NCC, the learned matcher and the guarded one on every val folder, plus the coins.

    python benchmarks/bench_generalisation.py [--models DIR] [--matchers ncc learned guarded]
        [--folders dsb2018/val ...] [--max-images N] [--json out.json]

Each folder of ``../shared/data`` is run through ``instanno evaluate``'s one-shot protocol
(``training.evaluate.evaluate_oneshot``: one reference per image, the median-area instance not
touching the border; the default learned outliner; bbox AP from the polygons' bounds; box-only
folders get bbox metrics only), every matcher in the same run. The coins row is the Coins sample
with its preset box: coins found at the default score (0.3) out of the 24 of
``tests/fixtures/coins_boxes.json``, and polygons covering two coins. ``--models DIR`` points
``INSTANNO_MODELS`` at other weights (a folder with ``matcher.safetensors`` and / or
``contour.safetensors``; the repository's for the one it lacks). One torch thread: the CPU is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

FOLDERS = ["dsb2018/val", "crowdai-buildings/val", "airbus-aircraft/val", "usiigaci-phase/val"]


def coins_row(matcher: str) -> dict:
    """Coins found at the default score, of 24, and polygons covering two coins."""
    from napari_instanno.inference.annotator import DEFAULT_MIN_SCORE, Annotator
    from napari_instanno.samples import coins_sample
    from tests.test_guard import coins_found

    image, ref = coins_sample()
    ann = Annotator(matcher=matcher, device="cpu").set_image(image)
    inst = ann.find_similar(ref, score_threshold=DEFAULT_MIN_SCORE)
    found, double = coins_found(inst)
    return {"folder": "coins sample", "matcher": matcher, "coins_found": found,
            "two_coin_polygons": double, "path": getattr(ann.matcher, "last_method", matcher)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="folder of weights (INSTANNO_MODELS)")
    parser.add_argument("--matchers", nargs="+", default=["ncc", "learned", "guarded"])
    parser.add_argument("--folders", nargs="+", default=FOLDERS)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--views", type=int, default=None,
                        help="the most dihedral views per reference (inference.views; 1: off)")
    args = parser.parse_args(argv)
    if args.models:  # its weights, the repository's for any it lacks
        folder = Path(tempfile.mkdtemp(prefix="instanno-models-"))
        for name in ("matcher", "contour"):
            own = Path(args.models) / f"{name}.safetensors"
            repo = Path(__file__).resolve().parents[1] / "models" / f"{name}.safetensors"
            (folder / own.name).symlink_to((own if own.is_file() else repo).resolve())
        os.environ["INSTANNO_MODELS"] = str(folder)
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from napari_instanno.inference import views
    from napari_instanno.inference.guard import GuardedMatcher

    if args.views is not None:
        views.MOST_VIEWS = args.views
    from napari_instanno.training.datasets import shared_folder
    from napari_instanno.training.evaluate import evaluate_oneshot

    paths: list[str] = []  # the guard's path per reference, tallied per folder
    embed = GuardedMatcher.embed_reference

    def tallied(self, box):
        ref = embed(self, box)
        paths.append(ref.method)
        return ref

    GuardedMatcher.embed_reference = tallied
    rows = []
    for folder in args.folders:
        for m in args.matchers:
            paths.clear()
            res = evaluate_oneshot(shared_folder(folder), matcher=m, max_images=args.max_images,
                                   device="cpu")
            row = {"folder": folder, "matcher": m, "images": res["images"],
                   **{k: round(v, 3) for k, v in res.items() if k.startswith(("bbox", "segm"))}}
            if paths:
                row["guard_ncc_images"] = paths.count("ncc")
            rows.append(row)
            print(json.dumps(row), flush=True)
    for m in args.matchers:
        rows.append(coins_row(m))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
