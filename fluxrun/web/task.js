// One task on screen: its status, a progress bar fed by the WebSocket (SPEC.md section 5),
// live previews when the server sends them, the images when done, Cancel and Kill, and why
// it failed. Task/Detail is read when the task ends (outputs, pexit, debugerror), while it
// waits in the queue (the server's "waiting for a worker" line says whether the model is
// still loading) and whenever the socket is down.
import { ApiError, socketUrl } from "./api.js";

const TERMINAL = new Set(["task_postprocess_end", "task_cancel"]);
const PREPARING = new Set(["task_accept", "task_assign", "task_preprocess_start", "task_preprocess_end"]);
const POLL_MS = 1000;
const POLL_IDLE_MS = 5000; // with the socket up and the task past the queue: a slow safety net
const WAITING_LINE = /^waiting for a worker that serves .*$/m;

/** What a person is told about a task in this state (status + debugoutput). */
export function describe(status, debugoutput = "", pexit = "0") {
  if (status === "task_queue") {
    // The server adds this line to a queued task no live worker would take (api/waiting.py).
    const waiting = WAITING_LINE.exec(debugoutput || "");
    const reason = waiting ? /\(([^()]*)\)\s*$/.exec(waiting[0]) : null;
    if (waiting && /still loading models/.test(waiting[0])) {
      return `The model is loading: the first task after the server starts waits for it${reason ? ` (${reason[1]})` : ""}.`;
    }
    if (waiting) return `W${waiting[0].slice(1)}.`;
    return "Queued: waiting for its turn.";
  }
  if (PREPARING.has(status)) return "Starting: a worker took the task and is preparing the model.";
  if (status === "task_start") return "Generating…";
  if (status === "task_output") return "Generating…";
  if (status === "task_end") return "Finishing: saving the images…";
  if (status === "task_cancel") return "Cancelled: the task was stopped.";
  if (status === "task_postprocess_end") return pexit === "0" ? "Done." : "Failed.";
  return status;
}

function kilobytes(size) {
  const bytes = Number(size) || 0;
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1024))} KB`;
}

export class TaskView {
  /** ui: the elements (index.html); hooks: onEnd(task), onUnreachable(error), onReachable(), onAuth(error). */
  constructor(ui, hooks) {
    this.ui = ui;
    this.hooks = hooks;
    this.api = null;
    this.task = null; // {id, token, status, ended, socketUp, previews}
    this.socket = null;
    this.timer = null;
    ui.cancel.addEventListener("click", () => this.stopTask("Cancel"));
    ui.kill.addEventListener("click", () => this.stopTask("Kill"));
  }

  /** Follow a task just run (or still running): socket first, Task/Detail as needed. */
  follow(api, taskid, token, previews, title = "") {
    this.close();
    this.api = api;
    this.task = { id: String(taskid), token, status: "task_queue", ended: false, socketUp: false, previews,
      debugoutput: "" };
    this.reset(`Task ${taskid}${title ? `: ${title}` : ""}`);
    this.setStatus("task_queue");
    this.openSocket();
    this.schedulePoll(0);
  }

  /** Show a task read from the history; follow it if it has not ended. */
  show(api, detail, title = "") {
    if (!TERMINAL.has(detail.status)) {
      this.follow(api, detail.id, detail.socketaccesstoken, this.ui.previews.checked, title);
      this.apply(detail);
      return;
    }
    this.close();
    this.api = api;
    this.task = { id: String(detail.id), token: detail.socketaccesstoken, status: detail.status, ended: true };
    this.reset(`Task ${detail.id}${title ? `: ${title}` : ""}`);
    this.render(detail);
  }

  close() {
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close();
      this.socket = null;
    }
    clearTimeout(this.timer);
    this.timer = null;
  }

  reset(title) {
    const ui = this.ui;
    ui.section.hidden = false;
    ui.title.textContent = title;
    ui.outputs.replaceChildren();
    ui.failure.hidden = true;
    ui.debugerror.textContent = "";
    ui.debugoutput.textContent = "";
    ui.preview.hidden = true;
    ui.previewImage.removeAttribute("src");
    ui.detail.textContent = "";
    this.setProgress(0, "Not started");
  }

  setStatus(status, debugoutput = this.task?.debugoutput || "", pexit = "0") {
    if (this.task) this.task.status = status;
    this.ui.status.textContent = describe(status, debugoutput, pexit);
    this.ui.section.dataset.status = status;
    const live = !TERMINAL.has(status);
    this.ui.cancel.disabled = status !== "task_queue";
    this.ui.kill.disabled = !live;
    this.ui.controls.hidden = !live;
  }

  setProgress(percentage, text) {
    const value = Math.max(0, Math.min(100, Math.round(Number(percentage) || 0)));
    this.ui.progress.setAttribute("aria-valuenow", String(value));
    this.ui.progress.setAttribute("aria-valuetext", text);
    this.ui.bar.style.width = `${value}%`;
  }

  openSocket() {
    const task = this.task;
    let socket;
    try {
      socket = new WebSocket(socketUrl());
    } catch {
      return; // polling carries on alone
    }
    this.socket = socket;
    socket.onopen = () => {
      task.socketUp = true;
      socket.send(JSON.stringify({ type: "task_info", tasktoken: task.token, preview: Boolean(task.previews) }));
    };
    socket.onmessage = (event) => {
      if (this.task !== task) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onMessage(message);
    };
    socket.onclose = () => {
      task.socketUp = false;
      if (this.task === task && !task.ended) this.schedulePoll(POLL_MS);
    };
  }

  onMessage(message) {
    const task = this.task;
    if (task.ended) return;
    switch (message.type) {
      case "task_info":
        if (message.result === false) task.socketUp = false; // no such task: Task/Detail will say
        return;
      case "task_output":
        this.onProgress(message.message || {});
        return;
      case "task_preview":
        if (typeof message.message === "string" && message.message) {
          this.ui.previewImage.src = `data:image/jpeg;base64,${message.message}`;
          this.ui.preview.hidden = false;
        }
        return;
      case "task_error":
        task.lastError = String(message.message || "");
        return;
      case "task_postprocess_end":
      case "task_cancel":
        this.end();
        return;
      default:
        if (typeof message.type === "string" && message.type.startsWith("task_")) this.setStatus(message.type);
    }
  }

  onProgress(progress) {
    if (this.task.status !== "task_output") this.setStatus("task_output");
    const current = Number(progress.stepCurrent) || 0;
    const total = Number(progress.stepTotal) || 0;
    const percentage = progress.percentage !== undefined ? Number(progress.percentage) : total ? (100 * current) / total : 0;
    const text = total ? `Step ${current} of ${total} (${Math.round(percentage)}%)` : `${Math.round(percentage)}%`;
    this.setProgress(percentage, text);
    const extra = [];
    if (progress.speed) extra.push(`${progress.speed} ${progress.speedType || "it/s"}`);
    if (progress.elapsedTime) extra.push(`${progress.elapsedTime} elapsed`);
    if (progress.remainingTime) extra.push(`about ${progress.remainingTime} left`);
    this.ui.detail.textContent = [text, ...extra].join(" · ");
  }

  schedulePoll(delay) {
    clearTimeout(this.timer);
    const task = this.task;
    this.timer = setTimeout(() => this.poll(task), delay);
  }

  async poll(task) {
    if (this.task !== task || task.ended) return;
    const needed = !task.socketUp || task.status === "task_queue";
    const nextDelay = needed ? POLL_MS : POLL_IDLE_MS;
    try {
      const answer = await this.api.post("/v1/Task/Detail", { taskid: task.id });
      this.hooks.onReachable();
      if (this.task !== task || task.ended) return;
      this.apply(answer.tasklist[0]);
    } catch (error) {
      if (this.task !== task) return;
      if (error instanceof ApiError && error.kind === "unreachable") this.hooks.onUnreachable(error);
      else if (error instanceof ApiError && error.kind === "auth") this.hooks.onAuth(error);
      else this.ui.detail.textContent = error.message;
    }
    if (this.task === task && !task.ended) this.schedulePoll(nextDelay);
  }

  /** A Task/Detail (or Kill/Cancel) answer for the task being followed. */
  apply(detail) {
    const task = this.task;
    if (!task || task.ended || String(detail.id) !== task.id) return;
    task.debugoutput = detail.debugoutput || "";
    if (TERMINAL.has(detail.status)) {
      task.ended = true;
      this.close();
      this.render(detail);
      this.hooks.onEnd(detail);
      return;
    }
    // Progress comes from the socket; a poll only moves the status forward (or shows the wait).
    if (detail.status !== task.status && !(detail.status === "task_start" && task.status === "task_output")) {
      this.setStatus(detail.status);
    } else if (detail.status === "task_queue") {
      this.setStatus("task_queue");
    }
  }

  /** The socket said the task ended: read the end (pexit, debugerror, outputs). */
  async end() {
    const task = this.task;
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close();
      this.socket = null;
    }
    task.socketUp = false;
    for (let tries = 0; tries < 5 && !task.ended && this.task === task; tries++) {
      try {
        const answer = await this.api.post("/v1/Task/Detail", { taskid: task.id });
        this.apply(answer.tasklist[0]);
        return;
      } catch (error) {
        if (error instanceof ApiError && error.kind === "unreachable") this.hooks.onUnreachable(error);
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
    if (!task.ended && this.task === task) this.schedulePoll(POLL_MS);
  }

  render(detail) {
    const ui = this.ui;
    this.setStatus(detail.status, detail.debugoutput, detail.pexit);
    ui.debugoutput.textContent = detail.debugoutput || "";
    if (detail.status === "task_postprocess_end" && detail.pexit === "0") {
      const seconds = Number(detail.elapsedseconds || 0).toFixed(1);
      const count = (detail.outputs || []).length;
      ui.status.textContent = `Done: ${count} image${count === 1 ? "" : "s"} in ${seconds} s.`;
      this.setProgress(100, "Done");
      ui.detail.textContent = `Seed ${detail.parameters?.seed ?? "?"} · cost ${detail.totalcost}`;
    } else if (detail.status === "task_postprocess_end") {
      ui.failure.hidden = false;
      ui.debugerror.textContent = detail.debugerror || this.task?.lastError || "The task failed without a message.";
      this.setProgress(0, "Failed");
      ui.detail.textContent = "";
    } else {
      ui.detail.textContent = "";
    }
    ui.preview.hidden = true;
    ui.outputs.replaceChildren(...(detail.outputs || []).map((output, index) => this.output(detail, output, index)));
  }

  output(detail, output, index) {
    const item = document.createElement("li");
    const figure = document.createElement("figure");
    const link = document.createElement("a");
    link.href = output.url;
    const image = document.createElement("img");
    image.src = output.url;
    image.alt = `Image ${index + 1} of task ${detail.id}: ${detail.parameters?.prompt || ""}`.trim();
    image.loading = "lazy";
    link.append(image);
    const caption = document.createElement("figcaption");
    const download = document.createElement("a");
    download.href = output.url;
    download.download = `fluxrun-task-${detail.id}-${output.name}`;
    download.className = "download";
    download.textContent = `Download ${output.name} (${kilobytes(output.size)})`;
    caption.append(download);
    figure.append(link, caption);
    item.append(figure);
    return item;
  }

  async stopTask(action) {
    const task = this.task;
    if (!task || task.ended) return;
    const button = action === "Kill" ? this.ui.kill : this.ui.cancel;
    button.disabled = true;
    this.ui.status.textContent = action === "Kill" ? "Stopping the task…" : "Cancelling the task…";
    try {
      const answer = await this.api.post(`/v1/Task/${action}`, { taskid: task.id });
      this.apply(answer.tasklist[0]);
    } catch (error) {
      if (this.task === task && !task.ended) this.setStatus(task.status);
      if (error instanceof ApiError && error.kind === "unreachable") this.hooks.onUnreachable(error);
      else if (error instanceof ApiError && error.kind === "auth") this.hooks.onAuth(error);
      else this.ui.status.textContent = error.message;
    }
  }
}
