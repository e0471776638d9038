// A small slippy map on the kit's own tiles (/tiles/z/x/y.png): drag, zoom, markers, tap to pick.
"use strict";
function SlippyMap(container, opts) {
  const info = opts.info || { center: [30.66, 104.06, 14], minzoom: 0, maxzoom: 18 };
  const SIZE = 256;
  let lat = info.center[0], lon = info.center[1], zoom = info.center[2];
  let markers = [];
  const tiles = new Map();
  const layer = KIT.el("div", { class: "layer" });
  const markLayer = KIT.el("div", { class: "layer" });
  const zin = KIT.el("button", { type: "button", "aria-label": "zoom in" }, "+");
  const zout = KIT.el("button", { type: "button", "aria-label": "zoom out" }, "−");
  container.append(layer, markLayer, KIT.el("div", { class: "zoom" }, zin, zout));

  function project(la, lo, z) {
    const n = SIZE * Math.pow(2, z);
    const s = Math.sin(Math.max(-85.0511, Math.min(85.0511, la)) * Math.PI / 180);
    return [(lo + 180) / 360 * n, (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * n];
  }
  function unproject(x, y, z) {
    const n = SIZE * Math.pow(2, z);
    const lo = x / n * 360 - 180;
    const la = Math.atan(Math.sinh(Math.PI * (1 - 2 * y / n))) * 180 / Math.PI;
    return [la, lo];
  }
  function origin() {
    const [cx, cy] = project(lat, lon, zoom);
    return [cx - container.clientWidth / 2, cy - container.clientHeight / 2];
  }

  function render() {
    const [ox, oy] = origin();
    const w = container.clientWidth, h = container.clientHeight, max = Math.pow(2, zoom);
    const want = new Set();
    for (let tx = Math.floor(ox / SIZE); tx <= Math.floor((ox + w) / SIZE); tx++) {
      for (let ty = Math.floor(oy / SIZE); ty <= Math.floor((oy + h) / SIZE); ty++) {
        if (tx < 0 || ty < 0 || tx >= max || ty >= max) continue;
        const key = zoom + "/" + tx + "/" + ty;
        want.add(key);
        let img = tiles.get(key);
        if (!img) {
          img = KIT.el("img", { class: "tile", alt: "", draggable: "false" });
          img.onerror = () => { img.style.visibility = "hidden"; };
          img.src = "/tiles/" + key + ".png";
          tiles.set(key, img);
          layer.append(img);
        }
        img.style.left = (tx * SIZE - ox) + "px";
        img.style.top = (ty * SIZE - oy) + "px";
      }
    }
    for (const [key, img] of tiles) if (!want.has(key)) { img.remove(); tiles.delete(key); }
    for (const m of markers) {
      const [x, y] = project(m.lat, m.lon, zoom);
      m.node.style.left = (x - ox) + "px";
      m.node.style.top = (y - oy) + "px";
    }
  }

  function setZoom(z) {
    zoom = Math.max(info.minzoom, Math.min(info.maxzoom, z));
    render();
  }
  zin.onclick = (e) => { e.stopPropagation(); setZoom(zoom + 1); };
  zout.onclick = (e) => { e.stopPropagation(); setZoom(zoom - 1); };
  container.addEventListener("wheel", (e) => { e.preventDefault(); setZoom(zoom + (e.deltaY < 0 ? 1 : -1)); }, { passive: false });

  let drag = null;
  container.addEventListener("pointerdown", (e) => {
    if (e.target.closest(".zoom") || e.target.closest(".marker")) return;
    drag = { x: e.clientX, y: e.clientY, moved: 0, start: project(lat, lon, zoom) };
    container.setPointerCapture(e.pointerId);
  });
  container.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    drag.moved = Math.max(drag.moved, Math.abs(dx) + Math.abs(dy));
    [lat, lon] = unproject(drag.start[0] - dx, drag.start[1] - dy, zoom);
    render();
  });
  container.addEventListener("pointerup", (e) => {
    if (!drag) return;
    const tap = drag.moved < 6;
    drag = null;
    if (tap && opts.onTap) {
      const r = container.getBoundingClientRect();
      const [ox, oy] = origin();
      const [la, lo] = unproject(ox + e.clientX - r.left, oy + e.clientY - r.top, zoom);
      opts.onTap(la, lo);
    }
  });
  container.addEventListener("dblclick", () => setZoom(zoom + 1));
  window.addEventListener("resize", render);

  function setMarkers(list) {
    markLayer.replaceChildren();
    markers = list.map((m) => {
      const node = KIT.el("div", { class: "marker " + m.cls, title: m.title || "", "data-id": m.id || "" },
        m.label ? KIT.el("span", { class: "label" }, m.label) : null);
      if (m.onClick) node.addEventListener("click", (e) => { e.stopPropagation(); m.onClick(); });
      markLayer.append(node);
      return { lat: m.lat, lon: m.lon, node };
    });
    render();
  }
  function setView(la, lo, z) {
    lat = la; lon = lo;
    if (z !== undefined) zoom = Math.max(info.minzoom, Math.min(info.maxzoom, z));
    render();
  }
  function bounds() { // [south, west, north, east] of what the map shows
    const [ox, oy] = origin();
    const [n, w] = unproject(ox, oy, zoom);
    const [s, e] = unproject(ox + container.clientWidth, oy + container.clientHeight, zoom);
    return [s, w, n, e];
  }
  render();
  return { setMarkers, setView, render, bounds, view: () => ({ lat, lon, zoom }) };
}
