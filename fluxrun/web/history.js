// This project's recent tasks (Task/List, newest first), each a button that brings the task
// back: its tool, its parameters in the form (the same seed makes the same image), its images.
const STATUS_WORDS = {
  task_postprocess_end: "done",
  task_cancel: "cancelled",
  task_queue: "queued",
};

function statusWord(task) {
  if (task.status === "task_postprocess_end" && task.pexit !== "0") return "failed";
  return STATUS_WORDS[task.status] || "running";
}

function when(unixSeconds) {
  const date = new Date(Number(unixSeconds) * 1000);
  return Number(unixSeconds) ? date.toLocaleString() : "";
}

export function renderHistory(list, tasks, titles, onPick) {
  if (!tasks.length) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "No task yet: run one above.";
    list.replaceChildren(empty);
    return;
  }
  list.replaceChildren(...tasks.map((task) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "history-item";
    button.dataset.taskid = task.id;
    const slug = `${task.modelslugowner}/${task.modelslugproject}`;
    const p = task.parameters || {};
    const word = statusWord(task);

    const thumb = document.createElement("span");
    thumb.className = "thumb";
    const first = (task.outputs || [])[0];
    if (first) {
      const image = document.createElement("img");
      image.src = first.url;
      image.alt = "";
      image.loading = "lazy";
      thumb.append(image);
    }
    const text = document.createElement("span");
    text.className = "history-text";
    const head = document.createElement("span");
    head.className = "history-head";
    const badge = document.createElement("span");
    badge.className = `badge badge-${word}`;
    badge.textContent = word;
    head.append(`#${task.id} · ${titles[slug] || slug} `, badge);
    const prompt = document.createElement("span");
    prompt.className = "history-prompt";
    prompt.textContent = p.prompt || "(no prompt)";
    const facts = document.createElement("span");
    facts.className = "history-facts";
    facts.textContent = [
      p.seed !== undefined ? `seed ${p.seed}` : "",
      p.width && p.height ? `${p.width}×${p.height}` : "",
      p.steps ? `${p.steps} steps` : "",
      when(task.createtime),
    ].filter(Boolean).join(" · ");
    const hint = document.createElement("span");
    hint.className = "visually-hidden";
    hint.textContent = " (put its parameters in the form and show its images)";
    text.append(head, prompt, facts, hint);
    button.append(thumb, text);
    button.addEventListener("click", () => onPick(task));
    item.append(button);
    return item;
  }));
}
