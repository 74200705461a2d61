// pixelbus dashboard: plain JavaScript over the public API (no build step).
"use strict";

const FINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const $ = (id) => document.getElementById(id);
const following = new Map(); // task id -> AbortController
let selected = null;

function authHeaders() {
  const key = localStorage.getItem("pixelbus-api-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...authHeaders(), ...(options.headers || {}) },
  });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const detail = Array.isArray(body?.detail)
      ? body.detail.map((d) => `${d.loc.filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ")
      : body?.detail || response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

// Server-Sent Events over fetch (so that the API key travels in a header), resumed
// with Last-Event-ID when the connection drops.
async function follow(taskId, onState) {
  if (following.has(taskId)) return;
  const abort = new AbortController();
  following.set(taskId, abort);
  let lastId = null;
  let failures = 0;
  try {
    while (failures < 5) {
      try {
        const headers = { ...authHeaders(), Accept: "text/event-stream" };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const response = await fetch(`/api/tasks/${taskId}/events`, { headers, signal: abort.signal });
        if (!response.ok) return;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const fields = { event: "message", data: [] };
            for (const line of block.split("\n")) {
              if (line.startsWith(":")) continue;
              const at = line.indexOf(":");
              const name = at < 0 ? line : line.slice(0, at);
              const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
              if (name === "data") fields.data.push(text);
              else fields[name] = text;
            }
            if (fields.event === "end") return;
            if (fields.event === "state" && fields.data.length) {
              if (fields.id !== undefined) lastId = fields.id;
              failures = 0;
              onState(JSON.parse(fields.data.join("\n")));
            }
          }
        }
      } catch (error) {
        if (abort.signal.aborted) return;
        failures += 1;
        await new Promise((resolve) => setTimeout(resolve, 500 * failures));
      }
    }
  } finally {
    following.delete(taskId);
  }
}

function progressText(task) {
  if (task.status === "COMPLETED") return "100%";
  const fraction = task.progress?.fraction;
  return fraction == null ? "" : `${Math.round(fraction * 100)}%`;
}

// A video task counts its frames: "frames 100 / 250"; any other task shows its step.
function stepText(task) {
  const progress = task.progress;
  if (progress?.frames_total != null) {
    return `frames ${progress.frames_done ?? 0} / ${progress.frames_total}`;
  }
  return progress?.message || "";
}

function renderRow(task) {
  let row = document.querySelector(`tr[data-task="${task.taskId}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.task = task.taskId;
    for (let i = 0; i < 5; i++) row.appendChild(document.createElement("td"));
    row.addEventListener("click", () => select(task.taskId));
    $("tasks").prepend(row);
  }
  const cells = row.children;
  cells[0].textContent = task.taskId;
  cells[1].textContent = task.workflow || "";
  cells[2].textContent = task.status;
  cells[2].className = `status-${task.status}`;
  cells[3].textContent = progressText(task);
  cells[4].textContent = task.created_at ? new Date(task.created_at).toLocaleString() : "";
  row.dataset.status = task.status;
}

function renderDetails(task) {
  if (task.taskId !== selected) return;
  $("details").hidden = false;
  $("detail-id").textContent = task.taskId;
  $("detail-status").textContent = task.status;
  $("detail-status").className = `status-${task.status}`;
  $("detail-queue").textContent =
    task.status === "PENDING" && task.queue_position ? `(queue position ${task.queue_position})` : "";
  const progress = task.progress;
  const frames = progress?.frames_total ? (progress.frames_done ?? 0) / progress.frames_total : 0;
  const fraction = task.status === "COMPLETED" ? 1 : progress?.fraction ?? frames;
  $("detail-progress").value = fraction;
  $("detail-step").textContent = stepText(task);
  const error = $("detail-error");
  error.hidden = !task.error || task.status === "COMPLETED";
  error.textContent = task.error ? `${task.error.code}: ${task.error.message}` : "";
  renderOutputs(task);
}

// Rebuilt only when the outputs change: a state event must not restart a playing video.
function renderOutputs(task) {
  const outputs = $("detail-outputs");
  const list = task.result?.outputs || [];
  const key = JSON.stringify([task.taskId, list.map((o) => o.url)]);
  if (outputs.dataset.key === key) return;
  outputs.dataset.key = key;
  outputs.replaceChildren();
  for (const output of list) {
    const link = document.createElement("a");
    link.href = output.url;
    link.textContent = `${output.filename} (${output.content_type}, ${output.size} bytes)`;
    outputs.appendChild(link);
    const type = output.content_type || "";
    if (type.startsWith("image/")) {
      const image = document.createElement("img");
      image.className = "output-image";
      image.alt = `result of ${task.taskId}`;
      image.src = output.url;
      outputs.appendChild(image);
    } else if (type.startsWith("video/")) {
      const video = document.createElement("video");
      video.className = "output-video";
      video.controls = true;
      video.setAttribute("muted", ""); // muted and inline: browsers let it play without a gesture
      video.muted = true;
      video.playsInline = true;
      video.preload = "metadata";
      video.src = output.url;
      outputs.appendChild(video);
    }
  }
}

function update(task) {
  renderRow(task);
  renderDetails(task);
}

async function select(taskId) {
  selected = taskId;
  update(await api(`/api/tasks/${taskId}`));
  follow(taskId, update);
}

async function loadTasks() {
  try {
    const page = await api("/api/tasks?limit=20");
    for (const task of [...page.tasks].reverse()) {
      renderRow(task);
      if (!FINAL.has(task.status)) follow(task.taskId, update);
    }
  } catch (error) {
    $("form-message").textContent = `could not list tasks: ${error.message}`;
  }
}

function dataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function submitFaceSwap(event) {
  event.preventDefault();
  const message = $("form-message");
  message.textContent = "uploading…";
  try {
    const wf = {
      source_url: await dataUri($("source").files[0]),
      target_url: await dataUri($("target").files[0]),
    };
    const resolution = $("resolution").value.trim();
    if (resolution) wf.resolution = resolution;
    const format = $("output-format").value;
    if (format) wf.output_format = format;
    const task = await api("/api/tasks/create", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        workflow: "face_swap",
        environment: "face_swap",
        params: { input_data: { wf_json: wf } },
      }),
    });
    message.textContent = `submitted ${task.taskId}`;
    renderRow(task);
    await select(task.taskId);
  } catch (error) {
    message.textContent = `refused: ${error.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const key = $("api-key");
  key.value = localStorage.getItem("pixelbus-api-key") || "";
  key.addEventListener("change", () => {
    localStorage.setItem("pixelbus-api-key", key.value.trim());
    loadTasks();
  });
  $("face-swap-form").addEventListener("submit", submitFaceSwap);
  $("refresh").addEventListener("click", loadTasks);
  loadTasks();
});
