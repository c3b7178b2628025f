"""Tiled inference at scale: throughput (MPix/s) and peak RSS on synthetic zarr images.

Each image (soft-edged discs on a noisy dark background, one per 64-pixel cell, the cell grid offset so that
objects straddle every tile seam and corner) is written chunk by chunk into a temporary zarr store,
never held in memory. Each run happens in a fresh subprocess so its peak RSS (getrusage) is its own.
On the smallest size the untiled Annotator runs too, and the two results are compared (matched
instances with mask IoU >= 0.95, no extras). Also: the backbone's stride-8 feature pass in MPix/s.

    nice -n 10 python benchmarks/bench_tiling.py --sizes 4096 16384
    python benchmarks/bench_tiling.py --sizes 4096 16384 --matcher learned --outliner learned \
        --with-ncc --no-untiled          # the learned models with library defaults, NCC alongside

"end to end" counts from the child process's start (imports, model loading, the warm-up, the
run), as ``instanno predict`` would; "run" only the tiled pass. ``--cluster N`` runs the tiles on
a local ``dask.distributed`` cluster of N single-threaded worker processes (peak RSS is then the
client's only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

T_START = time.perf_counter()  # the child's end-to-end time counts from here

CELL, CHUNK, RMIN, RMAX = 64, 1024, 6, 9
BACKGROUND, EDGE = 24, 0.8  # soft (band-limited) edges, as optics give: the learned matcher scores
# binary, aliased discs low (none above 0.5 here)
REF_CELL = (5, 5)


def cell_objects(iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Deterministic object of each cell: present, centre (y, x), radius, brightness."""
    seed = (iy.astype(np.uint64) * np.uint64(2654435761) + ix.astype(np.uint64) * np.uint64(40503)
            ) % np.uint64(2**32)
    u = [((seed * np.uint64(k) + np.uint64(12345)) % np.uint64(1_000_003)).astype(np.float64)
         / 1_000_003 for k in (69069, 1103515245, 22695477, 134775813, 214013)]
    jit = CELL / 2 - RMAX - 2
    present = (u[0] > 0.1) | ((iy == REF_CELL[0]) & (ix == REF_CELL[1]))
    cy = iy * CELL + (u[1] * 2 - 1) * jit  # cell i spans [i*CELL - CELL/2, i*CELL + CELL/2)
    cx = ix * CELL + (u[2] * 2 - 1) * jit
    radius = RMIN + u[3] * (RMAX - RMIN)
    bright = 150 + u[4] * 80
    return present, cy, cx, radius, bright


def make_image(path: Path, size: int) -> None:
    """Write a size x size uint8 zarr image chunk by chunk (chunks in parallel threads)."""
    import zarr

    z = zarr.create_array(str(path), shape=(size, size), chunks=(CHUNK, CHUNK), dtype="u1")

    def write(y0: int, x0: int) -> None:
        yy, xx = np.mgrid[y0:y0 + CHUNK, x0:x0 + CHUNK]
        iy, ix = (yy + CELL // 2) // CELL, (xx + CELL // 2) // CELL
        present, cy, cx, r, b = cell_objects(iy, ix)
        dist = np.sqrt((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2)
        disc = present * (b - BACKGROUND) / (1 + np.exp((dist - r) / EDGE))
        rng = np.random.default_rng(y0 * size + x0)
        chunk = BACKGROUND - 4 + rng.integers(0, 8, size=(CHUNK, CHUNK)) + disc
        z[y0:y0 + CHUNK, x0:x0 + CHUNK] = chunk.clip(0, 255).astype(np.uint8)

    starts = [(y0, x0) for y0 in range(0, size, CHUNK) for x0 in range(0, size, CHUNK)]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda yx: write(*yx), starts))


def ref_box() -> list[float]:
    present, cy, cx, r, _ = cell_objects(np.array(REF_CELL[0]), np.array(REF_CELL[1]))
    cy, cx, r = float(cy), float(cx), float(r)
    return [cx + 0.5 - r - 1, cy + 0.5 - r - 1, cx + 0.5 + r + 1, cy + 0.5 + r + 1]


def child(args: argparse.Namespace) -> None:
    """One measured run (tiled or untiled) in this process; prints a JSON line."""
    import torch
    import zarr

    from napari_instanno.inference import baselines
    from napari_instanno.inference.annotator import Annotator
    from napari_instanno.inference.sources import as_source
    from napari_instanno.inference.tiling import find_similar_tiled
    from napari_instanno.io.table import TableWriter, count_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    baselines.MAX_DETECTIONS = 10**7  # the untiled baseline must not be capped at 2000
    arr = zarr.open_array(args.image, mode="r")
    ann = Annotator(matcher=args.matcher, outliner=args.outliner, device=args.device,
                    precision=args.precision)  # inference.precision (float32: no int8 layers)
    vr = as_source(arr).value_range()
    warm = np.asarray(arr[:512, :512])  # first-use imports and allocations stay out of the timing
    find_similar_tiled(ann, warm, ref_box(), tile_size=256, value_range=vr)
    scheduler = None
    if args.cluster:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.cluster, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        scheduler = Client(cluster)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.mode == "tiled":
        find_similar_tiled(ann, arr, ref_box(), tile_size=args.tile_size, value_range=vr,
                           table=args.table, collect=False, workers=args.workers,
                           score_threshold=args.score_threshold, batch_size=args.batch_size,
                           scheduler=scheduler)
        n = count_rows(args.table)
    else:
        ann.set_image(arr[:], value_range=vr)
        inst = ann.find_similar(ref_box(), score_threshold=args.score_threshold)
        writer = TableWriter(args.table)
        writer.write(inst)
        writer.close()
        n = len(inst)
    end = time.perf_counter()
    seconds, cpu = end - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu": cpu, "objects": n, "peak_mb": peak,
                      "end_to_end": end - T_START, "threads": torch.get_num_threads()}))


def run_child(image: Path, table: Path, mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--image", str(image), "--table", str(table),
           "--tile-size", str(args.tile_size), "--matcher", args.matcher, "--outliner",
           args.outliner, "--device", args.device, "--score-threshold", str(args.score_threshold),
           *(["--threads", str(args.threads)] if args.threads else []),
           *(["--workers", str(args.workers)] if args.workers else []),
           *(["--cluster", str(args.cluster)] if args.cluster else []),
           *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
           "--precision", args.precision]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(table_a: Path, table_b: Path, size: int) -> tuple[int, int, int, float]:
    """(matched, extras in a, missing from a, min IoU of matched) with greedy box matching."""
    from napari_instanno.geometry import box_iou, polygon_to_mask
    from napari_instanno.io.table import read_table

    a, b = read_table(table_a), read_table(table_b)
    used = np.zeros(len(b), bool)
    ious = []
    order = np.argsort(a.boxes[:, 1] * size + a.boxes[:, 0])
    bx = b.boxes
    for i in order:
        near = np.flatnonzero((np.abs(bx[:, 0] - a.boxes[i, 0]) < 32)
                              & (np.abs(bx[:, 1] - a.boxes[i, 1]) < 32) & ~used)
        if not len(near):
            continue
        j = near[box_iou(a.boxes[i:i + 1], bx[near])[0].argmax()]
        x0, y0 = np.floor(np.minimum(a.boxes[i, :2], bx[j, :2])).astype(int) - 2
        shape = (60, 60)
        ma = polygon_to_mask(a.polygons[i] - [y0, x0], shape)
        mb = polygon_to_mask(b.polygons[j] - [y0, x0], shape)
        iou = (ma & mb).sum() / max((ma | mb).sum(), 1)
        if iou >= 0.5:
            used[j] = True
            ious.append(iou)
    matched = len(ious)
    return matched, len(a) - matched, len(b) - matched, float(min(ious) if ious else 0)


def feature_pass(threads: int, device: str, size: int = 1024, reps: int = 4
                 ) -> dict[str, tuple[float, float]]:
    """(wall MPix/s, MPix per CPU-second) of Backbone(strides=(8,)) on size x size RGB tiles, as
    trained (eager, BatchNorm separate) and as inference runs it (``optimize_for_inference``)."""
    import torch

    from napari_instanno.models.backbone import Backbone

    torch.set_num_threads(threads)
    x = torch.rand(1, 3, size, size, device=device)
    out = {}
    with torch.inference_mode():
        for name in ("as trained", "inference layout"):
            f = Backbone(strides=(8,)).eval().to(device)
            if name == "inference layout":
                f.optimize_for_inference()
            f(x)
            f(x)
            if device == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                f(x)
            if device == "cuda":
                torch.cuda.synchronize()
            mpix = reps * size * size / 1e6
            out[name] = (mpix / (time.perf_counter() - t0), mpix / (time.process_time() - c0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--matcher", default="ncc")
    p.add_argument("--outliner", default="otsu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--workers", type=int, default=None,
                   help="tiles in parallel (dask threads; default: tiling.default_workers)")
    p.add_argument("--cluster", type=int, default=None,
                   help="run the tiles on a local cluster of this many worker processes")
    p.add_argument("--with-ncc", action="store_true",
                   help="also run ncc + otsu on each size (the baseline of the ratios)")
    p.add_argument("--no-untiled", action="store_true", help="skip the untiled comparison")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per batched pass (default: 8 on a GPU, 1 on the CPU)")
    p.add_argument("--precision", default="auto",
                   help="learned models: auto | float32 | bfloat16 | float16 (inference.precision)")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="both runs; NCC's own cut-off (0.2) lets noise peaks flip with FFT rounding")
    p.add_argument("--workdir", default=None, help="where the zarr images go (default: a tmpdir)")
    p.add_argument("--feature-pass-only", action="store_true", help="only the feature pass")
    p.add_argument("--child", choices=["tiled", "untiled"], help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)

    for name, (wall, cpu) in feature_pass(args.threads or 2, args.device).items():
        print(f"feature pass (MobileNetV2 to stride 8, 1024^2, {args.threads or 2} threads, "
              f"{args.device}, {name}): {wall:.2f} MPix/s wall, {cpu:.2f} MPix per CPU-second",
              flush=True)
    if args.feature_pass_only:
        return None
    ncc = argparse.Namespace(**{**vars(args), "matcher": "ncc", "outliner": "otsu"})
    label = f"{args.matcher}+{args.outliner}"
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = []
        for size in sorted(args.sizes):
            image = Path(tmp) / f"img{size}.zarr"
            t0 = time.perf_counter()
            make_image(image, size)
            gen = time.perf_counter() - t0
            if args.with_ncc and args.matcher != "ncc":
                base = run_child(image, Path(tmp) / f"ncc{size}.parquet", "tiled", ncc)
                print(_line(size, "ncc+otsu", base), flush=True)
            res = run_child(image, Path(tmp) / f"tiled{size}.parquet", "tiled", args)
            rows.append((size, res))
            print(_line(size, label, res) + f"  (image written in {gen:.0f} s)", flush=True)
            if args.with_ncc and args.matcher != "ncc":
                print(f"{size:>6}^2 {label} / ncc+otsu: time x{res['seconds'] / base['seconds']:.2f} "
                      f"run, x{res['end_to_end'] / base['end_to_end']:.2f} end to end; peak RSS "
                      f"x{res['peak_mb'] / base['peak_mb']:.2f}", flush=True)
            if size == min(args.sizes) and not args.no_untiled:
                un = run_child(image, Path(tmp) / "untiled.parquet", "untiled", args)
                print(_line(size, "untiled", un), flush=True)
                m, extra, missing, low = compare(Path(tmp) / f"tiled{size}.parquet",
                                                 Path(tmp) / "untiled.parquet", size)
                ok = extra == 0 and missing == 0 and low >= 0.95
                print(f"{size:>6}^2 tiled vs untiled: {m} matched, {extra} extra, {missing} "
                      f"missing, min IoU {low:.3f} -> {'AGREE' if ok else 'DISAGREE'}", flush=True)
            shutil_rm(image)
        base_size, base = rows[0]
        for size, res in rows[1:]:
            t_ratio = (res["seconds"] / base["seconds"]) / ((size / base_size) ** 2)
            c_ratio = (res["cpu"] / base["cpu"]) / ((size / base_size) ** 2)
            print(f"{size}^2 vs {base_size}^2: time per pixel x{t_ratio:.2f} wall, "
                  f"x{c_ratio:.2f} CPU, "
                  f"peak RSS x{res['peak_mb'] / base['peak_mb']:.2f}")


def _line(size: int, mode: str, r: dict) -> str:
    mpix = size * size / 1e6
    return (f"{size:>6}^2 {mode:<8}: {r['objects']:>7} objects {r['seconds']:8.1f} s "
            f"{mpix / r['seconds']:6.2f} MPix/s ({mpix / r['cpu']:5.2f} per CPU-s), end to end "
            f"{r.get('end_to_end', r['seconds']):7.1f} s {mpix / r.get('end_to_end', r['seconds']):5.2f}"
            f" MPix/s, peak RSS {r['peak_mb']:6.0f} MB ({r.get('threads', '?')} torch threads)")


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
