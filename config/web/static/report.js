// The report form: position from the phone, the kit or the map; photos from the camera; then
// the delivery state of each report filed from this phone.
"use strict";
(() => {
  const { t, el } = KIT;
  const form = document.getElementById("report-form");
  const msg = document.getElementById("form-msg");
  const posMsg = document.getElementById("pos-msg");
  const maxPhotos = Number(form.dataset.maxPhotos), maxMb = Number(form.dataset.maxMb);
  const photosInput = document.getElementById("photos");
  const lat = document.getElementById("lat"), lon = document.getElementById("lon");
  const source = document.getElementById("position_source"), accuracy = document.getElementById("accuracy");
  let picker = null;

  function setPosition(la, lo, how, acc) {
    lat.value = la.toFixed(6);
    lon.value = lo.toFixed(6);
    source.value = how;
    accuracy.value = acc === undefined ? "" : String(Math.round(acc));
    posMsg.textContent = "";
    if (picker) picker.setMarkers([{ lat: la, lon: lo, cls: "pick", id: "pick" }]);
  }
  lat.oninput = lon.oninput = () => { source.value = "typed"; };

  document.getElementById("pos-phone").onclick = () => {
    if (!navigator.geolocation || !window.isSecureContext) { posMsg.textContent = t("no_geo"); return; }
    navigator.geolocation.getCurrentPosition(
      (p) => setPosition(p.coords.latitude, p.coords.longitude, "phone", p.coords.accuracy),
      () => { posMsg.textContent = t("no_geo"); },
      { enableHighAccuracy: true, timeout: 15000 });
  };
  document.getElementById("pos-kit").onclick = async () => {
    try {
      const s = await (await fetch("/api/status", { cache: "no-store" })).json();
      if (s.position) setPosition(s.position.lat, s.position.lon, "kit");
      else posMsg.textContent = t("kit_no_fix");
    } catch (e) { posMsg.textContent = t("network_error"); }
  };
  document.getElementById("pos-map").onclick = () => {
    const box = document.getElementById("pick-map");
    box.hidden = false;
    if (!picker) picker = SlippyMap(box, { info: KIT.data("tileinfo"), onTap: (la, lo) => setPosition(la, lo, "map") });
    picker.render();
    posMsg.textContent = t("tap_map");
  };

  function checkPhotos() {
    const files = photosInput ? Array.from(photosInput.files) : [];
    if (files.length > maxPhotos) return t("too_many_photos", { n: maxPhotos });
    for (const f of files) {
      if (f.size > maxMb * 1024 * 1024) return t("photo_too_big", { n: maxMb, name: f.name });
      if (f.type && !f.type.startsWith("image/")) return t("not_image", { name: f.name });
    }
    return null;
  }
  if (photosInput) {
    photosInput.onchange = () => {
      const box = document.getElementById("previews");
      box.replaceChildren();
      const problem = checkPhotos();
      msg.textContent = problem || "";
      msg.className = problem ? "msg error" : "msg";
      for (const f of Array.from(photosInput.files)) {
        if (f.type.startsWith("image/")) box.append(el("img", { src: URL.createObjectURL(f), alt: f.name }));
      }
    };
  }

  const mine = JSON.parse(localStorage.getItem("kit-reports") || "[]");
  const list = document.getElementById("my-reports");
  function drawMine() {
    list.replaceChildren(...mine.slice(0, 20).map((r) => el("li", { "data-seq": String(r.seq) },
      el("strong", {}, "#" + r.seq), " " + r.kind + " · ",
      el("span", { class: "state" }, t("state_" + (r.state || "unknown"))),
      r.pending ? " · " + t("photos_pending", { n: r.pending }) : null)));
  }
  async function poll() {
    for (const r of mine.slice(0, 20)) {
      if (r.state === "ACKNOWLEDGED" || r.state === "EVICTABLE") continue;
      try {
        const res = await fetch("/api/reports/" + r.seq, { cache: "no-store" });
        if (res.ok) r.state = (await res.json()).state || r.state;
      } catch (e) { /* offline for a moment: next round */ }
    }
    localStorage.setItem("kit-reports", JSON.stringify(mine.slice(0, 50)));
    drawMine();
  }
  drawMine();
  setInterval(poll, 3000);

  form.onsubmit = async (e) => {
    e.preventDefault();
    const problem = checkPhotos();
    if (problem) { msg.textContent = problem; msg.className = "msg error"; return; }
    const button = document.getElementById("submit");
    button.disabled = true;
    msg.textContent = t("sending");
    msg.className = "msg";
    try {
      const res = await fetch("/api/reports", {
        method: "POST", body: new FormData(form), headers: { "X-CSRF-Token": KIT.csrf() } });
      const answer = await res.json().catch(() => ({ zh: res.statusText, en: res.statusText }));
      if (!res.ok) {
        msg.textContent = KIT.lang === "zh" ? answer.zh : answer.en;
        msg.className = "msg error";
        return;
      }
      msg.textContent = t("accepted", { seq: answer.seq });
      msg.className = "msg ok";
      mine.unshift({ seq: answer.seq, kind: answer.kind, state: answer.state, pending: answer.photos_pending });
      localStorage.setItem("kit-reports", JSON.stringify(mine.slice(0, 50)));
      drawMine();
      form.reset();
      if (photosInput) document.getElementById("previews").replaceChildren();
    } catch (err) {
      msg.textContent = t("network_error");
      msg.className = "msg error";
    } finally {
      button.disabled = false;
    }
  };
})();
