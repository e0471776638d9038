"""Make the small sample tile package (a labelled grid around 30.66N 104.06E) with OpenCV.

There is no internet on the kit, nor here: the sample is drawn, not downloaded.
``python -m config.web.sampletiles OUT.mbtiles`` rewrites it.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path

import cv2
import numpy as np

from config.web.tiles import lat_lon_to_tile, tile_to_lat_lon

CENTRE = (30.66, 104.06)
HALF_DEG = 0.012  # about 2.6 km across
ZOOMS = range(12, 17)
SIZE = 256


def _river_points(z: int, x0: int, y0: int) -> np.ndarray:
    """A river crossing the area (a made-up curve), in this tile's pixels."""
    pts = []
    for i in range(41):
        lon = CENTRE[1] - 0.03 + i * 0.0015
        lat = CENTRE[0] + 0.004 * math.sin(i / 5.0) - 0.003
        x, y = lat_lon_to_tile(lat, lon, z)
        pts.append(((x - x0) * SIZE, (y - y0) * SIZE))
    return np.array(pts, np.int32).reshape(-1, 1, 2)


def draw(z: int, x: int, y: int) -> bytes:
    img = np.full((SIZE, SIZE, 3), (232, 240, 236), np.uint8)  # pale green-grey (BGR)
    # Roads: a grid every 0.004°, lined up across tiles.
    lat_top, lon_left = tile_to_lat_lon(x, y, z)
    lat_bottom, lon_right = tile_to_lat_lon(x + 1, y + 1, z)
    step = 0.004
    width = max(1, z - 12)
    lon = math.floor(lon_left / step) * step
    while lon <= lon_right:
        px = int((lat_lon_to_tile(CENTRE[0], lon, z)[0] - x) * SIZE)
        cv2.line(img, (px, 0), (px, SIZE), (255, 255, 255), width + 1)
        lon += step
    lat = math.floor(lat_bottom / step) * step
    while lat <= lat_top:
        py = int((lat_lon_to_tile(lat, CENTRE[1], z)[1] - y) * SIZE)
        cv2.line(img, (0, py), (SIZE, py), (255, 255, 255), width + 1)
        lat += step
    cv2.polylines(img, [_river_points(z, x, y)], False, (214, 170, 120), width * 3)
    cv2.rectangle(img, (0, 0), (SIZE - 1, SIZE - 1), (190, 200, 195), 1)
    label = f"{lat_top:.3f}N {lon_left:.3f}E"
    cv2.putText(img, label, (6, 16), cv2.FONT_HERSHEY_PLAIN, 0.9, (90, 90, 90), 1)
    cv2.putText(img, f"z{z} {x}/{y}", (6, 32), cv2.FONT_HERSHEY_PLAIN, 0.9, (90, 90, 90), 1)
    cv2.putText(img, "SAMPLE", (6, SIZE - 8), cv2.FONT_HERSHEY_PLAIN, 0.9, (150, 150, 150), 1)
    ok, png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


def build(out: Path) -> int:
    """Write the sample package to ``out``; the number of tiles."""
    out.unlink(missing_ok=True)
    db = sqlite3.connect(out)
    try:
        db.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
        db.execute(
            "CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, "
            "tile_data BLOB, PRIMARY KEY (zoom_level, tile_column, tile_row))"
        )
        s, n = CENTRE[0] - HALF_DEG, CENTRE[0] + HALF_DEG
        w, e = CENTRE[1] - HALF_DEG, CENTRE[1] + HALF_DEG
        meta = {
            "name": "示例区域 / sample area",
            "format": "png",
            "minzoom": str(ZOOMS[0]),
            "maxzoom": str(ZOOMS[-1]),
            "bounds": f"{w},{s},{e},{n}",
            "center": f"{CENTRE[1]},{CENTRE[0]},14",
            "sample": "1",
        }
        db.executemany("INSERT INTO metadata VALUES (?, ?)", meta.items())
        count = 0
        for z in ZOOMS:
            x0, y0 = (int(v) for v in lat_lon_to_tile(n, w, z))
            x1, y1 = (int(v) for v in lat_lon_to_tile(s, e, z))
            for x in range(x0, x1 + 1):
                for y in range(y0, y1 + 1):
                    db.execute(
                        "INSERT INTO tiles VALUES (?, ?, ?, ?)", (z, x, 2**z - 1 - y, draw(z, x, y))
                    )
                    count += 1
        db.commit()
        db.execute("VACUUM")
    finally:
        db.close()
    return count


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("sample.mbtiles")
    print(f"{build(target)} tiles → {target} ({target.stat().st_size // 1024} KB)")
