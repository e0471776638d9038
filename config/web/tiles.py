"""Offline map tiles from an MBTiles file (SQLite; rows in TMS order) in the data folder."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

SAMPLE = Path(__file__).with_name("sample.mbtiles")
MAX_ZOOM = 22


def lat_lon_to_tile(lat: float, lon: float, zoom: int) -> tuple[float, float]:
    """Web Mercator tile coordinates (fractional x, y; XYZ, y down) of a position."""
    n = 2**zoom
    x = (lon + 180.0) / 360.0 * n
    rad = math.radians(max(-85.05112878, min(85.05112878, lat)))
    y = (1.0 - math.asinh(math.tan(rad)) / math.pi) / 2.0 * n
    return x, y


def tile_to_lat_lon(x: float, y: float, zoom: int) -> tuple[float, float]:
    n = 2**zoom
    lon = x / n * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))
    return lat, lon


class TileSource:
    """Reads tiles from one MBTiles file, read-only; one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self.metadata = self._read_metadata()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._local.db = db
        return db

    def _read_metadata(self) -> dict[str, str]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return {str(k): str(v) for k, v in db.execute("SELECT name, value FROM metadata")}
        finally:
            db.close()

    def tile(self, z: int, x: int, y: int) -> bytes | None:
        """The tile at XYZ ``z/x/y``, or None where the package has none."""
        if not 0 <= z <= MAX_ZOOM or not 0 <= x < 2**z or not 0 <= y < 2**z:
            return None
        row = (
            self._db()
            .execute(
                "SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?",
                (z, x, 2**z - 1 - y),
            )
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def info(self) -> dict[str, object]:
        """What the map page needs: name, bounds, centre and zoom range, with defaults."""
        md = self.metadata
        try:
            bounds = [float(v) for v in md.get("bounds", "").split(",")]
        except ValueError:
            bounds = []
        try:
            lon, lat, zoom = (float(v) for v in md.get("center", "").split(","))
        except ValueError:
            if len(bounds) == 4:
                lon, lat, zoom = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, 14
            else:
                lon, lat, zoom = 104.06, 30.66, 14
        return {
            "name": md.get("name", self.path.stem),
            "format": md.get("format", "png"),
            "minzoom": int(md.get("minzoom", "0")),
            "maxzoom": int(md.get("maxzoom", str(MAX_ZOOM))),
            "center": [lat, lon, int(zoom)],
            "bounds": bounds if len(bounds) == 4 else None,
            "sample": md.get("sample") == "1",
        }

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
