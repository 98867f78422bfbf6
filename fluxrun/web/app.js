// The playground: log in, pick a tool, fill its form, run it and watch it, look back.
// Every state a person meets is said in words: the server unreachable, credentials refused,
// a value refused (by its field), a task queued while the model loads, a task failed.
import { Api, ApiError, redeemLoginCode, serverAnswers } from "./api.js";
import { ToolForm } from "./form.js";
import { renderHistory } from "./history.js";
import { TaskView } from "./task.js";

const $ = (id) => document.getElementById(id);
const CREDENTIALS_KEY = "fluxrun.playground.credentials";
const TOOL_KEY = "fluxrun.playground.tool";
const HISTORY_SIZE = 20;
const RECHECK_MS = 5000;

// The key and secret stay in this browser (localStorage of this server's origin) and are
// used only to sign requests to this server: the secret itself is never sent.
const saved = {
  memory: null, // when the browser refuses storage (some private modes)
  load() {
    try {
      const value = JSON.parse(localStorage.getItem(CREDENTIALS_KEY) || "null");
      if (value && typeof value.apiKey === "string" && value.apiKey) return value;
    } catch {
      return this.memory;
    }
    return this.memory;
  },
  save(credentials) {
    this.memory = credentials;
    try {
      localStorage.setItem(CREDENTIALS_KEY, JSON.stringify(credentials));
    } catch {
      // kept in memory for this page only
    }
  },
  clear() {
    this.memory = null;
    try {
      localStorage.removeItem(CREDENTIALS_KEY);
    } catch {
      // nothing stored
    }
  },
  tool() {
    try {
      return localStorage.getItem(TOOL_KEY);
    } catch {
      return null;
    }
  },
  rememberTool(slug) {
    try {
      localStorage.setItem(TOOL_KEY, slug);
    } catch {
      // not remembered
    }
  },
};

const app = { api: null, tools: [], titles: {}, tool: null, form: null, retry: null, recheck: null };

const taskView = new TaskView({
  section: $("task-view"),
  title: $("task-title"),
  status: $("task-status"),
  progress: $("progress"),
  bar: $("progress-bar"),
  detail: $("progress-detail"),
  controls: $("task-controls"),
  cancel: $("cancel"),
  kill: $("kill"),
  preview: $("preview"),
  previewImage: $("preview-image"),
  failure: $("task-failure"),
  debugerror: $("debugerror"),
  debugoutput: $("debugoutput"),
  outputs: $("outputs"),
  previews: $("want-previews"),
}, {
  onEnd: () => loadHistory(),
  onUnreachable: (error) => showUnreachable(error.message, null),
  onReachable: () => hideUnreachable(),
  onAuth: (error) => refused(error),
});

// -- states ---------------------------------------------------------------------------------
function showUnreachable(message, retry) {
  app.retry = retry;
  $("banner-text").textContent = message;
  $("banner").hidden = false;
  document.body.dataset.server = "unreachable";
  if (!app.recheck) app.recheck = setInterval(checkServer, RECHECK_MS);
}

function hideUnreachable() {
  if ($("banner").hidden) return;
  $("banner").hidden = true;
  delete document.body.dataset.server;
  clearInterval(app.recheck);
  app.recheck = null;
}

async function checkServer() {
  if (!(await serverAnswers())) {
    $("banner-checked").textContent = `Last checked at ${new Date().toLocaleTimeString()}.`;
    return;
  }
  const retry = app.retry;
  app.retry = null;
  hideUnreachable();
  if (retry) await retry();
}

function showLogin(message = "") {
  taskView.close();
  $("workspace").hidden = true;
  $("account").hidden = true;
  $("login-view").hidden = false;
  const error = $("login-error");
  error.textContent = message;
  error.hidden = !message;
  $("api-key").focus();
}

function refused(error) {
  const stored = saved.load();
  saved.clear();
  if (stored) $("api-key").value = stored.apiKey;
  $("api-secret").value = "";
  showLogin(`The server refused this key and secret: ${error.message} Check both (they are case-sensitive), `
    + "or open a new login link.");
}

function showWorkspace(credentials) {
  $("login-view").hidden = true;
  $("workspace").hidden = false;
  $("account").hidden = false;
  $("account-key").textContent = `Key ${credentials.apiKey.slice(0, 8)}…${credentials.apiSecret ? "" : " (no secret)"}`;
}

function handle(error, retry, formError) {
  if (!(error instanceof ApiError)) throw error;
  if (error.kind === "unreachable") showUnreachable(error.message, retry);
  else if (error.kind === "auth") refused(error);
  else if (formError) showFormError(formError, error.message);
}

function showFormError(node, message) {
  node.textContent = message;
  node.hidden = !message;
}

// -- start, log in, log out ------------------------------------------------------------------
function loginCodeFromFragment() {
  const match = /^#login=([A-Za-z0-9_-]+)$/.exec(location.hash);
  return match ? match[1] : null;
}

async function start() {
  const code = loginCodeFromFragment();
  if (location.hash.startsWith("#login=")) {
    // The code works once: out of the address bar (and the history) before anything else.
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (code) {
    try {
      saved.save(await redeemLoginCode(code));
    } catch (error) {
      if (error.kind === "unreachable") showUnreachable(error.message, null);
      showLogin(`The login link did not work. ${error.message}`);
      return;
    }
  }
  const credentials = saved.load();
  if (!credentials) {
    showLogin();
    return;
  }
  await connect(credentials);
}

async function connect(credentials) {
  const api = new Api(credentials);
  let answer;
  try {
    answer = await api.post("/v1/Tool/List", { start: "0", limit: "100" });
  } catch (error) {
    if (error.kind === "unreachable") showUnreachable(error.message, () => connect(credentials));
    else if (error.kind === "auth") refused(error);
    else showLogin(error.message);
    return false;
  }
  hideUnreachable();
  app.api = api;
  app.tools = answer.tool || [];
  app.titles = Object.fromEntries(app.tools.map((tool) => [`${tool.slugowner}/${tool.slugproject}`, tool.title]));
  renderTools();
  showWorkspace(credentials);
  const remembered = saved.tool();
  const first = app.tools.find((tool) => slugOf(tool) === remembered) || app.tools[0];
  if (first) await selectTool(slugOf(first));
  await loadHistory();
  return true;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const credentials = { apiKey: $("api-key").value.trim(), apiSecret: $("api-secret").value.trim() };
  if (!credentials.apiKey) {
    showLogin("Paste the API key first.");
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  saved.save(credentials);
  try {
    if (await connect(credentials)) $("api-secret").value = "";
  } finally {
    button.disabled = false;
  }
});

$("logout").addEventListener("click", () => {
  saved.clear();
  app.api = null;
  $("api-key").value = "";
  $("api-secret").value = "";
  showLogin("Logged out: the key and secret are no longer stored in this browser.");
});

$("banner-retry").addEventListener("click", () => checkServer());

// -- tools -----------------------------------------------------------------------------------
function slugOf(tool) {
  return `${tool.slugowner}/${tool.slugproject}`;
}

function renderTools() {
  $("tool-list").replaceChildren(...app.tools.map((tool) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tool-button";
    button.dataset.slug = slugOf(tool);
    const title = document.createElement("span");
    title.className = "tool-title";
    title.textContent = tool.title;
    const slug = document.createElement("span");
    slug.className = "tool-slug";
    slug.textContent = slugOf(tool);
    button.append(title, slug);
    button.addEventListener("click", () => selectTool(slugOf(tool)));
    item.append(button);
    return item;
  }));
}

async function selectTool(slug) {
  const [slugowner, slugproject] = slug.split("/");
  let answer;
  try {
    answer = await app.api.post("/v1/Tool/Detail", { slugowner, slugproject });
  } catch (error) {
    handle(error, () => selectTool(slug), $("form-error"));
    return false;
  }
  const tool = answer.tool[0];
  app.tool = tool;
  app.form = new ToolForm($("fields"), tool);
  $("tool-title").textContent = tool.title;
  $("tool-slug").textContent = slug;
  $("tool-description").textContent = tool.description && tool.description !== tool.title ? tool.description : "";
  showFormError($("form-error"), "");
  for (const button of document.querySelectorAll(".tool-button")) {
    if (button.dataset.slug === slug) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
  saved.rememberTool(slug);
  return true;
}

// -- run ---------------------------------------------------------------------------------------
$("tool-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = app.form;
  if (!form) return;
  form.clearErrors();
  showFormError($("form-error"), "");
  const problems = form.check();
  if (problems.length) {
    for (const { id, message } of problems) form.showError(id, message);
    const names = problems.map(({ id }) => form.fields.get(id).label).join(", ");
    showFormError($("form-error"), `Check ${problems.length === 1 ? "this field" : "these fields"}: ${names}.`);
    form.focusFirstError();
    return;
  }
  const button = $("run");
  button.disabled = true;
  try {
    const tool = app.tool;
    const answer = await app.api.post(`/v1/Run/${tool.slugowner}/${tool.slugproject}`, form.values());
    hideUnreachable();
    taskView.follow(app.api, answer.taskid, answer.socketaccesstoken, $("want-previews").checked, tool.title);
    // On a narrow screen the task is below the form: bring it into view (no move when it shows).
    $("task-view").scrollIntoView({ block: "nearest" });
    loadHistory();
  } catch (error) {
    if (error instanceof ApiError && error.kind === "refused" && form.showServerError(error.message)) {
      showFormError($("form-error"), "The server refused a value: see the marked field.");
      form.focusFirstError();
    } else {
      handle(error, null, $("form-error"));
    }
  } finally {
    button.disabled = false;
  }
});

// -- history -----------------------------------------------------------------------------------
async function loadHistory() {
  if (!app.api) return;
  try {
    const answer = await app.api.post("/v1/Task/List",
      { start: "0", limit: String(HISTORY_SIZE), sort: "id", order: "DESC" });
    renderHistory($("history"), answer.tasklist || [], app.titles, pick);
  } catch (error) {
    handle(error, loadHistory, $("history-error"));
  }
}

async function pick(task) {
  const slug = `${task.modelslugowner}/${task.modelslugproject}`;
  if (!app.titles[slug]) {
    showFormError($("history-error"), `Task ${task.id}'s tool ${slug} is not offered any more.`);
    return;
  }
  if (!app.tool || slugOf(app.tool) !== slug) {
    if (!(await selectTool(slug))) return;
  }
  app.form.fill(task.parameters || {});
  taskView.show(app.api, task, app.titles[slug]);
  $("task-title").focus();
}

$("history-refresh").addEventListener("click", () => loadHistory());

// A login link pasted into a tab that shows the page already changes only the fragment.
window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#login=")) start();
});

start();
