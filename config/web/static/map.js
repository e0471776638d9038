// The team map: the kit, team members and reports (with their photos) on the offline tiles.
"use strict";
(() => {
  const { t, el, ago } = KIT;
  const info = KIT.data("tileinfo");
  const popup = document.getElementById("popup");
  document.getElementById("map-name").textContent = info.name || "";
  const map = SlippyMap(document.getElementById("map"), { info });
  let centred = false;

  function show(...children) {
    popup.replaceChildren(el("button", { type: "button", class: "close" }, "×"), ...children);
    popup.querySelector(".close").onclick = () => { popup.hidden = true; };
    popup.hidden = false;
  }

  async function refresh() {
    let d;
    try {
      d = await (await fetch("/api/map", { cache: "no-store" })).json();
    } catch (e) {
      return;
    }
    const marks = [];
    if (d.kit) {
      marks.push({ lat: d.kit.lat, lon: d.kit.lon, cls: "kit", label: t("kit"), id: "kit",
        onClick: () => show(el("h2", {}, d.kit.name), el("p", {}, d.kit.lat.toFixed(5) + ", " + d.kit.lon.toFixed(5))) });
    }
    for (const m of d.team) {
      marks.push({ lat: m.lat, lon: m.lon, cls: "member", label: m.short || m.name, id: "member-" + m.node, title: m.name,
        onClick: () => show(el("h2", {}, m.name + " (" + m.node + ")"),
          el("p", {}, m.lat.toFixed(5) + ", " + m.lon.toFixed(5) + " · " + ago(m.age_s)),
          el("p", {}, t("battery") + " " + (m.battery_pct ?? "–") + " % · " + t("snr") + " " + (m.snr ?? "–"))) });
    }
    for (const r of d.reports) {
      marks.push({ lat: r.lat, lon: r.lon, cls: "report", id: "report-" + r.seq, title: "#" + r.seq,
        onClick: () => show(el("h2", {}, t("report") + " #" + r.seq + " · " + r.kind),
          el("p", {}, r.text || ""), r.count !== null ? el("p", {}, "× " + r.count) : null,
          el("div", {}, ...r.photos.map((src) => el("img", { src, alt: "" })))) });
    }
    map.setMarkers(marks);
    if (!centred && d.kit) { map.setView(d.kit.lat, d.kit.lon); centred = true; }
  }
  refresh();
  setInterval(refresh, 5000);
})();
