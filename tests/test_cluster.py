"""``instanno predict ZARR --scheduler tcp://HOST:PORT`` on a real cluster: a ``dask scheduler``
and ``dask worker`` processes on loopback, started and stopped by the test, find the same
instances as the local threads."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_instanno.cli import main

pytestmark = pytest.mark.slow
distributed = pytest.importorskip("distributed")
DASK = shutil.which("dask")
START_S = 90  # the cluster must be up within this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path):
    """The address of a scheduler with two single-threaded worker processes on 127.0.0.1."""
    if DASK is None:
        pytest.fail("the dask command is missing (pip install 'dask[distributed]')")
    address = f"tcp://127.0.0.1:{_free_port()}"
    log = tmp_path / "cluster.log"
    procs: list[subprocess.Popen] = []
    with open(log, "w") as out:
        try:
            procs.append(subprocess.Popen(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                 "--no-dashboard"], stdout=out, stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen(
                [DASK, "worker", address, "--nworkers", "2", "--nthreads", "1", "--host",
                 "127.0.0.1", "--no-dashboard", "--memory-limit", "0"],
                stdout=out, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + START_S
            while True:
                try:
                    with distributed.Client(address, timeout="5s") as client:
                        client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
                    break
                except (OSError, TimeoutError):
                    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                        pytest.fail(f"the cluster did not start:\n{log.read_text()[-3000:]}")
                    time.sleep(1)
            yield address
        finally:
            _stop(procs)


def _discs(path: Path) -> Path:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:384, :384]
    img = rng.integers(10, 30, (384, 384)).astype(np.float64)
    for cy in range(24, 384, 48):
        for cx in range(24, 384, 48):
            y, x = cy + rng.integers(-6, 7), cx + rng.integers(-6, 7)
            img[(yy - y) ** 2 + (xx - x) ** 2 <= 8 ** 2] = 200
    arr = zarr.create_array(str(path), shape=img.shape, chunks=(128, 128), dtype="u1")
    arr[:] = img.astype(np.uint8)
    return path


def _predict(image: Path, out: Path, *extra: str) -> list[dict]:
    ref = ["--ref-box", "14", "14", "20", "20"]  # around the first disc (x, y, w, h)
    assert main(["predict", str(image), *ref, "--out", str(out), "--matcher", "ncc",
                 "--outliner", "otsu", "--device", "cpu", "--tile-size", "128", *extra]) == 0
    return sorted(json.loads(out.read_text())["annotations"], key=lambda a: a["bbox"])


def test_predict_on_a_real_cluster_finds_what_local_threads_find(cluster, tmp_path):
    image = _discs(tmp_path / "discs.zarr")
    local = _predict(image, tmp_path / "local.json")
    remote = _predict(image, tmp_path / "cluster.json", "--scheduler", cluster)
    assert len(local) >= 60  # 64 discs
    assert len(remote) == len(local)
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-6)
        np.testing.assert_allclose(a["score"], b["score"], atol=1e-6)
        assert a["segmentation"] == b["segmentation"]
