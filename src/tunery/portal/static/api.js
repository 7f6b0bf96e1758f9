// The portal's only way to the server: Tunery's public REST API with the user's key.
// Everything goes through the Azure v1 layout (/openai/v1), whose job statuses include
// pending / pausing / paused / resuming. Errors become ApiError with the API's message and param.

const KEY_STORAGE = "tunery.apiKey";
export const BASE = "/openai/v1";

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `The server answered ${status}.`);
    this.status = status;
    this.param = err.param || null;
    this.code = err.code || null;
    this.type = err.type || null;
  }
}

export const getKey = () => localStorage.getItem(KEY_STORAGE);
export const setKey = (key) => localStorage.setItem(KEY_STORAGE, key);
export const clearKey = () => localStorage.removeItem(KEY_STORAGE);

function headers(extra = {}) {
  return { "api-key": getKey() || "", ...extra };
}

async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: keep the status */ }
  const error = new ApiError(response.status, body);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("tunery:unauthorized", { detail: error }));
  return error;
}

/** Call the API: api("/files"), api("/fine_tuning/jobs", {method: "POST", body: {...}}). */
export async function api(path, { method = "GET", body, signal, raw = false } = {}) {
  const init = { method, signal, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const response = await fetch(BASE + path, init);
  if (!response.ok) throw await failure(response);
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** Every page of a cursor-paginated list (newest first), following `after` until has_more is false. */
export async function listAll(path, { limit = 100, max = 2000 } = {}) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${limit}${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    if (!page.has_more || !page.data.length || items.length >= max) return items;
    after = page.data[page.data.length - 1].id;
  }
}

/** Upload a file with XMLHttpRequest so the browser reports progress: onProgress(loaded, total). */
export function uploadFile(file, { purpose = "fine-tune", onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${BASE}/files`);
    xhr.setRequestHeader("api-key", getKey() || "");
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => onProgress && onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(new ApiError(xhr.status, xhr.response));
    };
    xhr.onerror = () => reject(new ApiError(0, { error: { message: "The upload could not reach the server." } }));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/**
 * Stream a chat completion: POST /chat/completions with stream:true, read the SSE body line by line
 * and call onDelta(text) for each choices[0].delta.content. Resolves with the finish_reason.
 */
export async function streamChat(body, { onDelta, onUsage, signal } = {}) {
  const response = await fetch(`${BASE}/chat/completions`, {
    method: "POST",
    signal,
    headers: headers({ "content-type": "application/json", accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return finish;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk);
      if (chunk.usage && onUsage) onUsage(chunk.usage);  // the last chunk with stream_options.include_usage
      const choice = (chunk.choices || [])[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return finish;
}

/** The text of a file (GET /files/{id}/content), e.g. a job's results.csv. */
export async function fileText(id) {
  const response = await api(`/files/${encodeURIComponent(id)}/content`, { raw: true });
  return response.text();
}
