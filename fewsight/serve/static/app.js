// The page: plain JavaScript over the JSON API (see /openapi.json). No build step.
"use strict";

const $ = (selector) => document.querySelector(selector);
// class name -> <img> of each image the server holds for it, kept so that a render fetches only new ones
const thumbnails = new Map();
let model = null;

// ---- talking to the server -------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body?.error || `${response.status} ${response.statusText}`);
  return body;
}

function filesForm(files) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  return form;
}

// The error banner is fixed to the bottom of the window, so that it shows wherever the page is scrolled.
function showError(error) {
  $("#error-text").textContent = error ? error.message : "";
  $("#error").hidden = !error;
}

// Every status shown, kept for anyone (or any test) who wants to read what happened.
window.statusLog = [];

function setStatus(text, busy = false) {
  if (text) window.statusLog.push(text);
  $("#status").textContent = text;
  $("#status").classList.toggle("busy", busy);
}

// Runs an action, showing its error (or clearing the last one).
async function attempt(action) {
  showError(null);
  try {
    await action();
  } catch (error) {
    setStatus("");
    showError(error);
  }
}

// ---- classes and support images --------------------------------------------------------------

function renderClasses(state) {
  const list = $("#classes");
  list.replaceChildren();
  for (const { name, images } of state.classes) {
    const card = document.createElement("div");
    card.className = "class";
    card.dataset.class = name;
    const title = document.createElement("h3");
    title.textContent = `${name} (${images})`;
    if (!model.fixed_classes) {
      const remove = document.createElement("button");
      remove.textContent = "✕";
      remove.title = `remove ${name}`;
      remove.onclick = () => attempt(() => removeClass(name));
      title.append(remove);
    }
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    thumbs.append(...heldImages(name, images));
    card.append(title, thumbs);
    if (!model.fixed_classes) card.append(dropZone(`Add images to ${name}`, (files) => addImages(name, files)));
    list.append(card);
  }
  const names = new Set(state.classes.map(({ name }) => name));
  for (const name of thumbnails.keys()) if (!names.has(name)) thumbnails.delete(name);
  const select = $("#camera-class");
  select.replaceChildren(...state.classes.map(({ name }) => new Option(name, name)));
}

// The images the server holds for a class, as the model sees them; the ones already shown are kept.
function heldImages(name, count) {
  let held = thumbnails.get(name) || [];
  if (held.length > count) held = []; // fewer than shown: the class was made again
  const base = `/api/classes/${encodeURIComponent(name)}/images`;
  const stamp = Date.now(); // a class made again under a name must not show the old images from the cache
  for (let index = held.length; index < count; index++) {
    held.push(Object.assign(new Image(), { src: `${base}/${index}?t=${stamp}`, alt: `${name} ${index + 1}` }));
  }
  thumbnails.set(name, held);
  return held;
}

async function refreshClasses() {
  renderClasses(await api("/api/classes"));
}

// Any change of classes makes the predictions on screen stale: they were made among other classes.
function classesChanged(state) {
  renderClasses(state);
  markStale();
}

async function addClass(name) {
  classesChanged(await api("/api/classes", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  }));
}

async function removeClass(name) {
  classesChanged(await api(`/api/classes/${encodeURIComponent(name)}`, { method: "DELETE" }));
}

async function addImages(name, files) {
  setStatus(`Adding ${files.length} image(s) to ${name}…`, true);
  const state = await api(`/api/classes/${encodeURIComponent(name)}/images`, {
    method: "POST",
    body: filesForm(files),
  });
  classesChanged(state);
  setStatus("");
}

// A label that takes files by click or by drag and drop.
function dropZone(text, onFiles) {
  const zone = document.createElement("label");
  zone.className = "drop";
  const input = Object.assign(document.createElement("input"), { type: "file", accept: "image/*", multiple: true });
  zone.append(input, Object.assign(document.createElement("span"), { textContent: text }));
  wireDrop(zone, input, onFiles);
  return zone;
}

function wireDrop(zone, input, onFiles) {
  const take = (files) => files.length && attempt(() => onFiles([...files]));
  input.addEventListener("change", () => {
    take(input.files);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    take(event.dataTransfer.files);
  });
}

// ---- predicting ------------------------------------------------------------------------------

// The MAML family adapts by gradient steps, which takes a moment: show it, with the time so far.
async function adaptWithProgress() {
  const state = await api("/api/classes");
  if (state.adapted || model.family !== "maml") return;
  const images = state.classes.reduce((sum, c) => sum + c.images, 0);
  const start = performance.now();
  const message = () =>
    `Adapting ${model.algorithm} to ${state.classes.length} classes: ${model.adapt_steps} gradient ` +
    `steps on ${images} images… ${((performance.now() - start) / 1000).toFixed(1)} s`;
  setStatus(message(), true);
  const timer = setInterval(() => ($("#status").textContent = message()), 100);
  try {
    const adapted = await api("/api/adapt", { method: "POST" });
    setStatus(`Adapted in ${adapted.seconds.toFixed(2)} s`);
  } finally {
    clearInterval(timer);
  }
}

async function predict(files) {
  clearPredictions(); // whatever happens next, the old results are not the answer to these images
  await adaptWithProgress();
  setStatus(`Classifying ${files.length} image(s)…`, true);
  renderPredictions(await api("/api/predict", { method: "POST", body: filesForm(files) }));
  setStatus(`${files.length} image(s) classified`);
}

function clearPredictions() {
  $("#results tbody").replaceChildren();
  $("#results").hidden = true;
  markStale(false);
}

// Results made among other classes than the current ones stay visible, marked as such.
function markStale(stale = true) {
  const shown = !$("#results").hidden;
  $("#results").classList.toggle("stale", stale && shown);
  $("#stale").hidden = !(stale && shown);
}

// The predictions the server holds (the last ones), with the query images as the model saw them.
function renderPredictions(result) {
  const rows = $("#results tbody");
  rows.replaceChildren();
  const stamp = Date.now();
  result.predictions.forEach((prediction, index) => {
    const row = rows.insertRow();
    row.insertCell().append(Object.assign(new Image(), { src: `/api/predictions/${index}?t=${stamp}` }));
    row.insertCell().textContent = prediction.file;
    const predicted = row.insertCell();
    predicted.className = "predicted";
    predicted.textContent = prediction.predicted;
    row.insertCell().append(...probabilityBars(result.classes, prediction.probabilities));
  });
  $("#results").hidden = result.predictions.length === 0;
  $("#download-csv").disabled = result.predictions.length === 0;
  markStale(!result.current);
}

// The five most probable classes as small bars.
function probabilityBars(classes, probabilities) {
  const ranked = classes.map((name, i) => [name, probabilities[i]]).sort((a, b) => b[1] - a[1]);
  return ranked.slice(0, 5).map(([name, p]) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    const label = Object.assign(document.createElement("span"), { textContent: name, title: name });
    const fill = document.createElement("i");
    fill.style.width = `${Math.round(p * 120)}px`;
    bar.append(label, fill, `${(p * 100).toFixed(1)}%`);
    return bar;
  });
}

// ---- downloads -------------------------------------------------------------------------------

async function download(path, filename) {
  const response = await fetch(path);
  if (!response.ok) throw new Error((await response.json()).error);
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(await response.blob()),
    download: filename,
  });
  link.click();
}

// ---- webcam (optional) -----------------------------------------------------------------------

async function startCamera() {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true });
  $("#camera-video").srcObject = stream;
  $("#camera").hidden = false;
  $("#camera-start").hidden = true;
}

function stopCamera() {
  const video = $("#camera-video");
  for (const track of video.srcObject?.getTracks() || []) track.stop();
  video.srcObject = null;
  $("#camera").hidden = true;
  $("#camera-start").hidden = false;
}

async function capturePhoto() {
  const video = $("#camera-video");
  const name = $("#camera-class").value;
  if (!name) throw new Error("add a class first");
  const canvas = Object.assign(document.createElement("canvas"), {
    width: video.videoWidth,
    height: video.videoHeight,
  });
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  await addImages(name, [new File([blob], `webcam-${Date.now()}.png`, { type: "image/png" })]);
}

// ---- start -----------------------------------------------------------------------------------

async function start() {
  model = await api("/api/model");
  const classes = model.ways ? `exactly ${model.ways} classes` : "any number of classes";
  const form = `${model.image_size}×${model.image_size} ${model.channels === 1 ? "grey" : "colour"}`;
  $("#model-info").textContent = model.fixed_classes
    ? `${model.model}: an exported ${model.algorithm} classifier with fixed classes`
    : `${model.model} · ${model.algorithm} · ${classes} · images seen as ${form}`;
  $("#new-class").hidden = model.fixed_classes;
  $("#new-class").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("#new-class-name").value.trim();
    attempt(async () => {
      await addClass(name);
      $("#new-class-name").value = "";
    });
  });
  wireDrop($("#query-drop"), $("#query-files"), predict);
  $("#export-pt").onclick = () => attempt(() => download("/api/export?format=pt", "fewsight-classifier.pt"));
  $("#export-onnx").onclick = () => attempt(() => download("/api/export?format=onnx", "fewsight-classifier.onnx"));
  $("#download-csv").onclick = () => attempt(() => download("/api/predictions.csv", "predictions.csv"));
  $("#error-close").onclick = () => showError(null);
  if (navigator.mediaDevices?.getUserMedia && !model.fixed_classes) {
    $("#camera-start").hidden = false;
    $("#camera-start").onclick = () => attempt(startCamera);
    $("#camera-stop").onclick = stopCamera;
    $("#camera-capture").onclick = () => attempt(capturePhoto);
  }
  await refreshClasses();
  renderPredictions(await api("/api/predictions"));
}

attempt(start);
