// flenwheel web app: small progressive behaviour over server-rendered pages. Every action calls the JSON API
// with the session cookie and the page's CSRF token (X-CSRF-Token); no build step, no dependencies.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";

function toast(text, isError) {
  const box = document.getElementById("toast");
  if (!box) return;
  box.textContent = text;
  box.className = isError ? "show error" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.className = ""; }, isError ? 8000 : 3000);
}

async function api(method, url, body) {
  const options = { method, headers: { "X-CSRF-Token": CSRF, Accept: "application/json" } };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  if (response.status === 401) {
    location.href = "/signin?why=expired&next=" + encodeURIComponent(location.pathname + location.search);
    throw new Error("Your session has expired: sign in again.");
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const detail = data && data.detail ? data.detail : response.status + " " + response.statusText;
    const error = new Error(detail);
    error.data = data;
    throw error;
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value; else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// ---- jobs: live progress over the API's Server-Sent Events ----------------------------------------------

const FINISHED = new Set(["succeeded", "failed", "cancelled", "interrupted"]);

function jobItem(job) {
  const li = el("li", { class: "job", "data-job": job.id, "data-status": job.status });
  li.append(el("span", { class: "jid", text: "#" + job.id }), " ", el("strong", { text: job.kind }), " ",
    el("span", { class: "status " + job.status, "data-role": "status", text: job.status }), " ",
    el("progress", { max: 1, value: 0, "data-role": "bar", "aria-label": "progress of job " + job.id }), " ",
    el("span", { "data-role": "count" }), " ", el("span", { class: "msg", "data-role": "message" }), " ",
    el("button", { type: "button", "data-action": "cancel", text: "Cancel" }), " ",
    el("button", { type: "button", "data-action": "retry", text: "Retry", hidden: true }),
    el("p", { class: "error", "data-role": "error", hidden: true }));
  return li;
}

function showJob(li, data) {
  const part = (role) => li.querySelector(`[data-role="${role}"]`);
  li.dataset.status = data.status;
  part("status").textContent = data.status;
  part("status").className = "status " + data.status;
  const bar = part("bar");
  if (data.progress_total > 0) {
    bar.max = data.progress_total;
    bar.value = data.progress_done;
    part("count").textContent = data.progress_done + "/" + data.progress_total;
  } else {
    bar.removeAttribute("value"); // indeterminate: the total is not known yet (never "0/0")
    part("count").textContent = data.status === "queued" ? "waiting" : FINISHED.has(data.status) ? "" : "starting…";
    if (FINISHED.has(data.status)) { bar.max = 1; bar.value = data.status === "succeeded" ? 1 : 0; }
  }
  part("message").textContent = data.message || "";
  const error = part("error");
  error.hidden = !data.error;
  error.textContent = data.error || "";
  li.querySelector('[data-action="cancel"]').hidden = FINISHED.has(data.status);
  li.querySelector('[data-action="retry"]').hidden = !["failed", "cancelled", "interrupted"].includes(data.status);
}

function followJob(li, onEvent) {
  const id = li.dataset.job;
  const source = new EventSource(`/jobs/${id}/events`);
  const handle = (event) => {
    const data = JSON.parse(event.data);
    showJob(li, data);
    if (onEvent) onEvent(data);
    if (FINISHED.has(data.status)) source.close();
  };
  source.addEventListener("progress", handle);
  source.addEventListener("status", handle);
  source.onerror = () => { if (FINISHED.has(li.dataset.status)) source.close(); };
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const li = button.closest("[data-job]");
  if (!li) return;
  try {
    const job = await api("POST", `/jobs/${li.dataset.job}/${button.dataset.action}`);
    showJob(li, job);
    if (button.dataset.action === "retry") followJob(li);
    toast(`Job ${job.id}: ${job.status}`);
  } catch (error) { toast(error.message, true); }
});

function followPageJobs() {
  document.querySelectorAll("li[data-job]").forEach((li) => {
    if (!FINISHED.has(li.dataset.status)) followJob(li);
  });
}

// ---- job forms: a form's fields become the job's payload -----------------------------------------------

function payloadOf(form) {
  const payload = {};
  for (const field of form.elements) {
    if (!field.name || field.disabled) continue;
    let value;
    if (field.type === "checkbox") value = field.checked;
    else {
      value = field.value.trim();
      if (value === "") continue;
      if (field.type === "number" || field.dataset.type === "int") value = Number(value);
      else if (field.dataset.type === "list") {
        value = value.split(",").map((v) => v.trim()).filter(Boolean);
        if (field.dataset.item === "number") value = value.map(Number);
        const words = (field.dataset.keywords || "").split(",");
        if (value.length === 1 && words.includes(value[0])) value = value[0]; // prompts: "quick", or a list
      }
    }
    const path = field.name.split(".");
    let target = payload;
    for (const key of path.slice(0, -1)) target = target[key] = target[key] || {};
    target[path[path.length - 1]] = value;
  }
  const extra = [...form.querySelectorAll("[data-compose]")].map((f) => f.value.trim()).filter(Boolean);
  if (extra.length && payload.prompt) payload.prompt = [payload.prompt, ...extra].join(", ");
  return payload;
}

async function submitJobForm(form) {
  const list = form.closest("section, li, main").querySelector(".job-list") || document.querySelector(".job-list");
  form.querySelector(".error")?.remove();
  let job;
  try {
    job = await api("POST", "/jobs", {
      kind: form.dataset.kind, character_id: Number(form.dataset.character), payload: payloadOf(form),
    });
  } catch (error) {
    form.append(el("p", { class: "error", role: "alert", text: error.message }));
    return;
  }
  const li = jobItem(job);
  list.prepend(li);
  showJob(li, job);
  const seen = new Set();
  followJob(li, async (data) => {
    if (form.dataset.done === "results") await showResults(job, seen);
    if (form.dataset.stream) await streamImages(job, document.querySelector(form.dataset.stream), seen);
    if (data.status === "succeeded" && form.dataset.done === "reload") location.reload();
  });
}

async function showResults(job, seen) {
  const grid = document.getElementById("results");
  if (!grid) return;
  const page = await api("GET", `/characters/${job.character_id}/assets?job_id=${job.id}&limit=50`);
  grid.querySelector(".empty")?.remove();
  for (const asset of page.items) {
    if (seen.has(asset.id)) continue;
    seen.add(asset.id);
    const tile = el("article", { class: "tile", tabindex: 0, "data-id": asset.id, "aria-label": "image " + asset.id },
      el("img", { src: `/assets/${asset.id}/thumb`, alt: (asset.prompt || "generated image") + " (" + asset.id + ")",
        width: 256, height: 256 }),
      el("div", { class: "meta" }, el("span", { class: "kind", text: asset.kind + " · " + (asset.provider || "") }),
        el("p", { class: "reason", text: asset.prompt || "" })));
    grid.prepend(tile);
  }
}

async function streamImages(job, box, seen) {
  // The images a job has made so far, as each lands (the wizard's base images and profile set).
  if (!box) return;
  const page = await api("GET", `/characters/${job.character_id}/assets?job_id=${job.id}&limit=50`);
  for (const asset of page.items) {
    if (seen.has(asset.id)) continue;
    seen.add(asset.id);
    const a = asset.attributes || {};
    box.append(el("figure", { class: "landed" },
      el("img", { src: `/assets/${asset.id}/thumb`, alt: `${a.stage || asset.kind} image ${asset.id}`, width: 128, height: 128 }),
      el("figcaption", { text: a.position || (a.slot !== undefined ? "slot " + a.slot : "") })));
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form.job-form");
  if (!form) return;
  event.preventDefault();
  submitJobForm(form);
});

// ---- checkpoints and the wizard's picks ----------------------------------------------------------------

document.addEventListener("click", async (event) => {
  const activate = event.target.closest("button.activate");
  const pick = event.target.closest("button.pick-base");
  const anchor = event.target.closest("button.pick-anchor");
  try {
    if (activate) {
      const strength = document.getElementById(activate.dataset.strengthFrom)?.value;
      const mode = await api("POST", `/characters/${activate.dataset.character}/activate`,
        { checkpoint_id: Number(activate.dataset.checkpoint), strength: strength ? Number(strength) : null });
      toast(mode.reason);
      setTimeout(() => location.reload(), 600);
    } else if (anchor) {
      await api("POST", `/characters/${anchor.dataset.character}/anchors/pick`,
        { anchor: anchor.dataset.anchor, asset_id: Number(anchor.dataset.asset) });
      location.reload();
    } else if (pick) {
      await api("POST", `/characters/${pick.dataset.character}/pick-base`, { asset_id: Number(pick.dataset.asset) });
      location.reload();
    }
  } catch (error) { toast(error.message, true); }
});

// ---- photos: upload ----------------------------------------------------------------------------------------

async function refreshGrid() {
  const response = await fetch(location.href, { headers: { Accept: "text/html" } });
  const doc = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const id of ["grid", "count", "coverage"]) {
    const fresh = doc.getElementById(id);
    if (fresh) document.getElementById(id).replaceWith(fresh);
  }
  setUpGrid();
  document.body.dataset.gridVersion = String(Number(document.body.dataset.gridVersion || 0) + 1);
}

async function upload(files) {
  const zone = document.getElementById("dropzone");
  const results = document.getElementById("upload-results");
  if (!files.length) return;
  results.replaceChildren(el("li", { text: `Uploading ${files.length} file${files.length === 1 ? "" : "s"}…` }));
  const body = new FormData();
  for (const file of files) body.append("files", file, file.name);
  body.append("reference", document.getElementById("as-reference")?.checked ? "true" : "false");
  let report;
  try {
    report = await api("POST", `/characters/${zone.dataset.character}/assets`, body);
  } catch (error) {
    results.replaceChildren(el("li", { class: "error", role: "alert", text: error.message }));
    return;
  }
  results.replaceChildren(...report.results.map((r) =>
    el("li", { class: "upload " + r.status, text: `${r.filename}: ${r.status}${r.detail ? " — " + r.detail : ""}` })));
  results.prepend(el("li", { text: `${report.added} added, ${report.duplicates} duplicate, ${report.rejected} rejected` }));
  await refreshGrid();
}

function setUpUpload() {
  const zone = document.getElementById("dropzone");
  if (!zone) return;
  const input = document.getElementById("files");
  input.addEventListener("change", () => upload([...input.files]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    upload([...e.dataTransfer.files]);
  });
}

// ---- photos: keyboard review, provenance, compare ----------------------------------------------------------

const undoStack = [];
const LABEL_KEYS = { g: "good", c: "needs_correction", r: "reject" };

function tiles() { return [...document.querySelectorAll("#grid .tile, #results .tile")]; }

function showLabel(tile, asset) {
  tile.dataset.label = asset.label || "";
  const label = tile.querySelector('[data-role="label"]');
  if (label) {
    label.textContent = (asset.label || "unlabelled").replace("_", " ");
    label.className = "label " + (asset.label || "none");
  }
  const reason = tile.querySelector('[data-role="reason"]');
  if (reason) reason.textContent = asset.label_reason || "";
}

function askReason(label) {
  const dialog = document.getElementById("reason-dialog");
  const input = document.getElementById("reason-input");
  document.getElementById("reason-label").textContent = label.replace("_", " ");
  input.value = "";
  dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    const done = (value) => { dialog.close(); cleanup(); resolve(value); };
    const onSubmit = (e) => { e.preventDefault(); if (input.value.trim()) done(input.value.trim()); };
    const onCancel = () => done(null);
    const form = document.getElementById("reason-form");
    const cancel = document.getElementById("reason-cancel");
    function cleanup() {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
    }
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
  });
}

async function label(tile, value) {
  const selected = tiles().filter((t) => t.classList.contains("selected"));
  const targets = selected.length ? selected : [tile];
  let reason = "";
  if (value !== "good") {
    reason = await askReason(value);
    tile.focus();
    if (!reason) return;
  }
  for (const target of targets) {
    try {
      await api("POST", `/assets/${target.dataset.id}/reviews`, { label: value, reason });
      const asset = await api("GET", `/assets/${target.dataset.id}`);
      showLabel(target, asset);
      undoStack.push(target.dataset.id);
      target.classList.remove("selected");
    } catch (error) { toast(error.message, true); return; }
  }
  toast(`${targets.length === 1 ? "Labelled" : targets.length + " labelled"} ${value.replace("_", " ")} (u to undo)`);
}

async function undo() {
  const id = undoStack.pop();
  if (!id) { toast("Nothing to undo"); return; }
  try {
    const asset = await api("DELETE", `/assets/${id}/reviews/latest`);
    const tile = tiles().find((t) => t.dataset.id === id);
    if (tile) { showLabel(tile, asset); tile.focus(); }
    toast(`Undone: image ${id} is ${asset.label ? asset.label.replace("_", " ") : "unlabelled"} again`);
  } catch (error) { toast(error.message, true); }
}

function row(dl, term, value) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
  dl.append(el("dt", { text: term }),
    el("dd", { text: typeof value === "object" ? JSON.stringify(value) : String(value) }));
}

async function provenance(tile) {
  const panel = document.getElementById("provenance");
  if (!panel) return;
  let asset;
  try { asset = await api("GET", `/assets/${tile.dataset.id}`); } catch (error) { toast(error.message, true); return; }
  const dl = el("dl");
  row(dl, "image", `${asset.id} · ${asset.kind} · ${asset.width}×${asset.height} ${asset.format}`);
  row(dl, "file", asset.source_name);
  row(dl, "label", asset.label ? asset.label + (asset.label_reason ? " — " + asset.label_reason : "") : "unlabelled");
  row(dl, "caption", asset.caption);
  row(dl, "prompt", asset.prompt);
  row(dl, "negative", asset.negative);
  row(dl, "seed", asset.seed);
  row(dl, "engine", asset.provider);
  row(dl, "model", asset.model);
  // A LoRA by its file name and strength (never a folder on the server).
  row(dl, "LoRAs", (asset.loras || []).map((l) => `${String(l.name || l.path || "").split(/[\\/]/).pop()} @ ${l.strength}`).join(", "));
  row(dl, "strength (denoise)", asset.denoise);
  row(dl, "parents", asset.parents);
  row(dl, "children", asset.children);
  row(dl, "cost", asset.cost_usd ? "$" + asset.cost_usd.toFixed(4) : "$0");
  row(dl, "NSFW score", asset.nsfw_score);
  row(dl, "job", asset.job_id);
  if (asset.analysis) {
    row(dl, "angle · shot · expression", [asset.analysis.angle, asset.analysis.shot, asset.analysis.expression].map((v) => v || "—").join(" · "));
    const q = asset.analysis.quality || {};
    row(dl, "quality", ["sharpness", "brightness", "clipped_dark", "clipped_bright"]
      .filter((k) => typeof q[k] === "number").map((k) => `${k.replace("_", " ")} ${q[k].toFixed(2)}`).join(" · "));
    row(dl, "faces", (asset.analysis.faces || []).length);
  }
  const a = asset.attributes || {};
  row(dl, "pipeline", ["stage", "mode", "anchor", "position", "slot", "identity", "picked"]
    .filter((k) => a[k] !== undefined && a[k] !== null).map((k) => `${k}: ${a[k]}`).join(" · "));
  row(dl, "added", asset.created_at);
  const body = document.getElementById("prov-body");
  body.replaceChildren(el("a", { href: asset.image_url, target: "_blank", rel: "noopener", text: "Open the full-size image" }), dl);
  panel.hidden = false;
}

function compare() {
  const chosen = tiles().filter((t) => t.classList.contains("selected")).slice(-2);
  const box = document.getElementById("compare");
  if (!box) return;
  if (chosen.length < 2) { box.hidden = true; return; }
  document.getElementById("cmp-body").replaceChildren(...chosen.map((t) =>
    el("figure", {}, el("img", { src: `/assets/${t.dataset.id}/image`, alt: "image " + t.dataset.id }),
      el("figcaption", { text: "image " + t.dataset.id + " · " + (t.dataset.label || "unlabelled") }))));
  box.hidden = false;
}

function columns(list) {
  if (list.length < 2) return 1;
  const top = list[0].offsetTop;
  const index = list.findIndex((t) => t.offsetTop !== top);
  return index === -1 ? list.length : index;
}

function onGridKey(event) {
  const tile = event.target.closest(".tile");
  if (!tile || event.ctrlKey && event.key !== "z" || event.metaKey || event.altKey) return;
  const list = tiles();
  const index = list.indexOf(tile);
  const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(list), ArrowUp: -columns(list) };
  if (event.key in moves) {
    event.preventDefault();
    const next = list[Math.max(0, Math.min(list.length - 1, index + moves[event.key]))];
    next.focus();
    next.scrollIntoView({ block: "nearest" });
  } else if (event.key in LABEL_KEYS) {
    event.preventDefault();
    label(tile, LABEL_KEYS[event.key]);
  } else if (event.key === "u" || (event.ctrlKey && event.key === "z")) {
    event.preventDefault();
    undo();
  } else if (event.key === "Enter" || event.key === "i") {
    event.preventDefault();
    provenance(tile);
  } else if (event.key === "x" || event.key === " ") {
    event.preventDefault();
    tile.classList.toggle("selected");
    tile.setAttribute("aria-selected", tile.classList.contains("selected"));
    compare();
  }
}

function setUpGrid() {
  for (const id of ["grid", "results"]) {
    const grid = document.getElementById(id);
    if (!grid || grid.dataset.ready) continue;
    grid.dataset.ready = "1";
    grid.addEventListener("keydown", onGridKey);
    grid.addEventListener("click", (e) => {
      const t = e.target.closest(".tile");
      if (t) { t.focus(); provenance(t); openEditor(t); }
    });
  }
}

// ---- studio: edit with a painted mask, upscale ----------------------------------------------------------

const editor = { asset: null, mask: null, painted: false };

function openEditor(tile) {
  const box = document.getElementById("editor");
  if (!box) return;
  editor.asset = Number(tile.dataset.id);
  editor.painted = false;
  document.getElementById("edit-id").textContent = "#" + editor.asset;
  const canvas = document.getElementById("paint");
  const image = new Image();
  image.onload = () => {
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    canvas.style.width = Math.max(256, Math.min(512, image.naturalWidth)) + "px";
    canvas.getContext("2d").drawImage(image, 0, 0);
    editor.image = image;
    editor.mask = document.createElement("canvas"); // white = redraw, black = keep
    editor.mask.width = image.naturalWidth;
    editor.mask.height = image.naturalHeight;
    const m = editor.mask.getContext("2d");
    m.fillStyle = "#000";
    m.fillRect(0, 0, image.naturalWidth, image.naturalHeight);
  };
  image.src = `/assets/${editor.asset}/image`;
  box.hidden = false;
}

function setUpEditor() {
  const canvas = document.getElementById("paint");
  if (!canvas) return;
  let down = false;
  const paint = (event) => {
    if (!down || !editor.mask) return;
    const rect = canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) * canvas.width / rect.width;
    const y = (event.clientY - rect.top) * canvas.height / rect.height;
    const r = Number(document.getElementById("brush").value) * canvas.width / rect.width / 2;
    const view = canvas.getContext("2d");
    view.fillStyle = "rgba(255, 40, 40, 0.5)";
    view.beginPath(); view.arc(x, y, r, 0, 2 * Math.PI); view.fill();
    const mask = editor.mask.getContext("2d");
    mask.fillStyle = "#fff";
    mask.beginPath(); mask.arc(x, y, r, 0, 2 * Math.PI); mask.fill();
    editor.painted = true;
  };
  canvas.addEventListener("pointerdown", (e) => { down = true; canvas.setPointerCapture(e.pointerId); paint(e); });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => { down = false; });
  document.getElementById("clear-mask").addEventListener("click", () => {
    const tile = document.querySelector(`.tile[data-id="${editor.asset}"]`);
    if (tile) openEditor(tile);
  });
  const run = async (kind, payload) => {
    const character = Number(document.getElementById("editor").dataset.character);
    let job;
    try {
      job = await api("POST", "/jobs", { kind, character_id: character, payload });
    } catch (error) { toast(error.message, true); return; }
    const li = jobItem(job);
    document.getElementById("edit-jobs").prepend(li);
    showJob(li, job);
    const seen = new Set();
    followJob(li, () => showResults(job, seen));
  };
  document.getElementById("edit-go").addEventListener("click", () => {
    const prompt = document.getElementById("e-prompt").value.trim();
    if (!prompt) { toast("Say what to draw in the edit prompt", true); return; }
    const payload = { asset_id: editor.asset, prompt, steps: Number(document.getElementById("e-steps").value || 20) };
    const strength = document.getElementById("e-strength").value;
    if (strength) payload.strength = Number(strength);
    if (editor.painted) payload.mask_png = editor.mask.toDataURL("image/png");
    run("studio_edit", payload);
  });
  document.querySelectorAll("button.upscale").forEach((button) => button.addEventListener("click", () =>
    run("studio_upscale", { asset_id: editor.asset, factor: Number(button.dataset.factor) })));
}

function setUpCurate() {
  const button = document.getElementById("curate");
  if (!button) return;
  button.addEventListener("click", async () => {
    let job;
    try {
      job = await api("POST", "/jobs", { kind: "curate", character_id: Number(button.dataset.character) });
    } catch (error) { toast(error.message, true); return; }
    const li = jobItem(job);
    document.getElementById("curate-progress").replaceChildren(li);
    showJob(li, job);
    followJob(li, (data) => { if (data.status === "succeeded") refreshGrid(); });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpUpload();
  setUpGrid();
  setUpCurate();
  setUpEditor();
  followPageJobs();
});

// ---- runs: the loss curve and step of a training run update live while it trains -------------------------

function followRuns() {
  for (const card of document.querySelectorAll("section.run[data-live]")) {
    const tick = async () => {
      let run;
      try { run = await api("GET", card.dataset.live); } catch (error) { return; }
      card.querySelector(".run-step").textContent = `${run.step}/${run.total_steps || "?"}`;
      card.querySelector(".status").textContent = run.status;
      const svg = card.querySelector("figure.loss svg");
      const caption = card.querySelector("figure.loss figcaption");
      if (run.curve) {
        svg.querySelector("polyline").setAttribute("points", run.curve);
        svg.hidden = false;
        caption.textContent = `Loss: first ${run.first.toFixed(4)}, last ${run.last.toFixed(4)} (${run.points} steps logged)`;
      }
      if (run.status === "pending" || run.status === "running") setTimeout(tick, 2000);
    };
    tick();
  }
}
document.addEventListener("DOMContentLoaded", followRuns);
