"""Where finished tiles' results live during a tiled run: memory, or a resumable folder.

A checkpoint folder holds ``manifest.json`` (what run it belongs to) and one ``tiles/NNNNNN.npz``
per finished tile, written atomically as soon as the tile is done, so an interrupted run resumes
without redoing them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..io.atomic import read_json, write_json_atomic

VERSION = 1


@dataclass
class TileResult:
    """One tile's kept detections, in image coordinates.

    ``polygons`` is None while they wait on disk (``TileStore.polygons`` reads them).
    ``touched`` counts polygons that reached a window edge inside the image (maybe cut).
    ``outlined``: False where the polygon is a stand-in (``stand_ins``); None: all outlined.
    """

    index: int
    boxes: np.ndarray
    scores: np.ndarray
    polygons: list[np.ndarray] | None
    touched: int = 0
    outlined: np.ndarray | None = None


class TileStore:
    """Finished tiles kept in memory (``folder`` None) or in a checkpoint folder."""

    def __init__(self, folder: str | Path | None, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[int, list[np.ndarray]] = {}
        if self.folder is None:
            return
        manifest = self.folder / "manifest.json"
        wanted = {"version": VERSION, "run": _canonical(fingerprint)}
        if manifest.exists():
            found = read_json(manifest, "checkpoint manifest")
            if found != wanted:
                diff = sorted(k for k in wanted["run"] if found.get("run", {}).get(k)
                              != wanted["run"][k])
                raise InstannoError(
                    f"checkpoint {self.folder} belongs to another run (differs in "
                    f"{', '.join(diff) or 'version'}); delete it or choose another folder"
                )
        else:
            try:
                (self.folder / "tiles").mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise InstannoError(f"cannot create checkpoint {self.folder}: {err.strerror}"
                                    ) from err
            write_json_atomic(manifest, wanted)
        (self.folder / "tiles").mkdir(exist_ok=True)

    def _path(self, index: int) -> Path:
        return self.folder / "tiles" / f"{index:06d}.npz"

    def finished(self) -> list[TileResult]:
        """Results of the tiles already in the checkpoint (polygons left on disk)."""
        if self.folder is None:
            return []
        out = []
        for p in sorted((self.folder / "tiles").glob("*.npz")):
            try:
                with np.load(p) as z:
                    out.append(TileResult(int(p.stem), z["boxes"], z["scores"], None,
                                          int(z["touched"]),
                                          z["outlined"] if "outlined" in z.files else None))
            except (OSError, ValueError, KeyError):
                p.unlink(missing_ok=True)  # a torn file from a crash: redo that tile
        return out

    def save(self, result: TileResult) -> TileResult:
        """Keep ``result``; in a folder, polygons go to disk and the returned copy drops them."""
        if self.folder is None:
            self._memory[result.index] = result.polygons
            return result
        polys = result.polygons or []
        lengths = np.array([len(p) for p in polys], dtype=np.int64)
        coords = np.concatenate(polys) if polys else np.zeros((0, 2))
        path = self._path(result.index)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, boxes=result.boxes, scores=result.scores, lengths=lengths,
                         coords=coords, touched=np.int64(result.touched),
                         **({} if result.outlined is None else {"outlined": result.outlined}))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return TileResult(result.index, result.boxes, result.scores, None, result.touched,
                          result.outlined)

    def polygons(self, index: int) -> list[np.ndarray]:
        """The polygons of a finished tile."""
        if self.folder is None:
            return self._memory[index]
        with np.load(self._path(index)) as z:
            lengths, coords = z["lengths"], z["coords"]
        return np.split(coords, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _canonical(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as it reads back from JSON (tuples to lists, floats rounded)."""
    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return round(float(v), 6)
        if isinstance(v, np.integer):
            return int(v)
        return v

    return json.loads(json.dumps({k: plain(v) for k, v in data.items()}))
