// ovchat's chat page: talks to this server's own OpenAI-compatible API, keeps conversations in
// localStorage. No framework, no build step, nothing fetched from elsewhere.
"use strict";

(function () {
  const STORE = "ovchat.chats.v1";
  const SETTINGS = "ovchat.settings.v2"; // v1 kept greedy values the user never chose
  const OLD_SETTINGS = "ovchat.settings.v1";
  const KEY = "ovchat.apiKey";
  const MODEL = "ovchat.model"; // the model last picked, where the server has several
  const $ = (id) => document.getElementById(id);
  const ui = {
    sidebar: $("sidebar"), toggle: $("toggle-sidebar"), list: $("chat-list"), newChat: $("new-chat"),
    modelName: $("model-name"), modelPick: $("model-pick"), modelContext: $("model-context"),
    keyButton: $("key-button"),
    system: $("system-prompt"), temperature: $("temperature"), topP: $("top-p"), topK: $("top-k"),
    repetitionPenalty: $("repetition-penalty"), noRepeatNgram: $("no-repeat-ngram"), maxTokens: $("max-tokens"),
    loopGuard: $("loop-guard"), samplingNote: $("sampling-note"),
    banner: $("banner"), messages: $("messages"), empty: $("empty"),
    composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyCancel: $("key-cancel"),
  };

  let chats = load(STORE, []);
  let currentId = null;
  let model = null; // the card of the model answering, from /v1/models
  let models = []; // every chat model the server has
  let running = null; // {controller, message} while an answer streams

  function load(name, fallback) {
    try {
      const value = JSON.parse(localStorage.getItem(name));
      return value ?? fallback;
    } catch {
      return fallback;
    }
  }

  function save() {
    try {
      localStorage.setItem(STORE, JSON.stringify(chats));
    } catch (err) {
      showBanner("This browser refused to store the conversation (" + err.name + "); delete old ones to make room.");
    }
  }

  // Settings sent as request fields; an empty one is left out, so the server uses the model's default.
  const FIELDS = {
    temperature: "temperature", topP: "top_p", topK: "top_k", repetitionPenalty: "repetition_penalty",
    noRepeatNgram: "no_repeat_ngram_size",
  };

  function saveSettings() {
    const settings = { system: ui.system.value, maxTokens: ui.maxTokens.value, loopGuard: ui.loopGuard.checked };
    for (const name of Object.keys(FIELDS)) settings[name] = ui[name].value;
    try {
      localStorage.setItem(SETTINGS, JSON.stringify(settings));
    } catch {
      /* settings are a convenience: losing them loses no conversation */
    }
  }

  function showBanner(text) {
    ui.banner.textContent = text;
    ui.banner.hidden = !text;
  }

  function current() {
    return chats.find((c) => c.id === currentId) || null;
  }

  function newId() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  }

  // -- rendering ------------------------------------------------------------------------------
  function renderList() {
    ui.list.replaceChildren();
    for (const chat of [...chats].sort((a, b) => b.updated - a.updated)) {
      const item = document.createElement("li");
      item.className = "chat-item" + (chat.id === currentId ? " active" : "");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "chat-open";
      open.textContent = chat.title || "New chat";
      if (chat.id === currentId) open.setAttribute("aria-current", "true");
      open.addEventListener("click", () => select(chat.id));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chat-delete icon";
      remove.textContent = "✕";
      remove.setAttribute("aria-label", "Delete conversation: " + (chat.title || "New chat"));
      remove.addEventListener("click", () => removeChat(chat.id));
      item.append(open, remove);
      ui.list.append(item);
    }
  }

  function messageNode(message) {
    const node = document.createElement("article");
    node.className = "message " + message.role;
    const who = document.createElement("h2");
    who.className = "visually-hidden";
    who.textContent = message.role === "user" ? "You said" : "Assistant said";
    const body = document.createElement("div");
    body.className = "content";
    const stats = document.createElement("p");
    stats.className = "stats";
    node.append(who, body, stats);
    fill(node, message);
    return node;
  }

  function fill(node, message) {
    const body = node.querySelector(".content");
    if (message.role === "user") body.textContent = message.content; // shown exactly as typed
    else body.replaceChildren(window.ovchatMarkdown.render(message.content));
    const stats = node.querySelector(".stats");
    const parts = [];
    if (message.stopped) parts.push("stopped");
    if (message.loop) parts.push("stopped a repeating answer");
    if (message.stats) {
      const s = message.stats;
      parts.push(s.tokens + " tokens");
      parts.push("first token " + Math.round(s.ttft) + " ms");
      if (s.rate !== null) parts.push(s.rate.toFixed(1) + " tok/s");
    }
    stats.textContent = parts.join(" · ");
    stats.hidden = !parts.length;
  }

  function renderMessages() {
    const chat = current();
    ui.messages.replaceChildren(ui.empty);
    ui.empty.hidden = Boolean(chat && chat.messages.length);
    for (const message of chat ? chat.messages : []) ui.messages.append(messageNode(message));
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function select(id) {
    if (running) return; // finish or stop the answer first
    currentId = id;
    const chat = current();
    ui.system.value = chat ? chat.system : ui.system.value;
    renderList();
    renderMessages();
    showBanner("");
    closeSidebar();
    ui.prompt.focus();
  }

  function removeChat(id) {
    const chat = chats.find((c) => c.id === id);
    if (!chat || (running && id === currentId)) return;
    if (!window.confirm("Delete the conversation “" + (chat.title || "New chat") + "”?")) return;
    chats = chats.filter((c) => c.id !== id);
    save();
    if (id === currentId) currentId = null;
    renderList();
    renderMessages();
  }

  function startNewChat() {
    if (running) return;
    currentId = null; // created on the first message, so empty chats do not pile up
    renderList();
    renderMessages();
    closeSidebar();
    ui.prompt.focus();
  }

  function closeSidebar() {
    document.body.classList.remove("sidebar-open");
    ui.toggle.setAttribute("aria-expanded", "false");
  }

  // -- the API --------------------------------------------------------------------------------
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = localStorage.getItem(KEY);
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch {
      /* not JSON: fall through */
    }
    return "the server answered " + response.status;
  }

  async function loadModel() {
    let response;
    try {
      response = await fetch("/v1/models", { headers: headers() });
    } catch {
      ui.modelName.textContent = "server unreachable";
      return;
    }
    if (response.status === 401) {
      ui.modelName.textContent = "API key needed";
      askKey();
      return;
    }
    if (!response.ok) {
      ui.modelName.textContent = "error: " + (await errorText(response));
      return;
    }
    models = (await response.json()).data.filter((card) => card.kind !== "embedding");
    // Several models: a picker (one not loaded yet loads when it is first asked).
    ui.modelPick.replaceChildren(
      ...models.map((card) => {
        const option = document.createElement("option");
        option.value = card.id;
        option.textContent = card.id + (card.loaded === false ? " (loads when asked)" : "");
        return option;
      })
    );
    ui.modelPick.hidden = models.length < 2;
    ui.modelName.hidden = models.length >= 2;
    const saved = load(MODEL, null);
    choose(models.find((card) => card.id === saved) || models[0]);
  }

  function choose(card) {
    model = card;
    ui.modelPick.value = card.id;
    ui.modelName.textContent = card.id;
    ui.modelContext.textContent = card.context_length
      ? card.context_length.toLocaleString("en") + "-token context"
      : "";
    // The answer's budget: at most the server's limit and the model's context (a small model's is short).
    const most = Math.min(card.max_tokens_limit || Infinity, card.context_length || Infinity);
    if (Number.isFinite(most)) {
      ui.maxTokens.max = String(most);
      if (Number(ui.maxTokens.value) > most) ui.maxTokens.value = String(most);
    }
    const defaults = card.sampling_defaults || {};
    for (const [name, field] of Object.entries(FIELDS)) {
      ui[name].placeholder = defaults[field] !== undefined ? String(defaults[field]) : "";
    }
    ui.samplingNote.textContent = card.sampling_source
      ? "Empty fields take the model's defaults (" + card.sampling_source + ")."
      : "";
  }

  function askKey() {
    ui.keyButton.hidden = false;
    ui.keyInput.value = "";
    if (!ui.keyDialog.open) ui.keyDialog.showModal();
  }

  function number(input, fallback) {
    const value = Number(input.value);
    return input.value !== "" && Number.isFinite(value) ? value : fallback;
  }

  function requestBody(chat) {
    const messages = [];
    if (chat.system.trim()) messages.push({ role: "system", content: chat.system });
    for (const m of chat.messages) if (m.content || m.role === "user") messages.push({ role: m.role, content: m.content });
    const body = {
      model: model ? model.id : undefined,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: Math.max(1, Math.round(number(ui.maxTokens, 512))),
      loop_guard: ui.loopGuard.checked,
    };
    for (const [name, field] of Object.entries(FIELDS)) {
      const value = number(ui[name], null);
      if (value !== null) body[field] = field === "top_k" || field === "no_repeat_ngram_size" ? Math.round(value) : value;
    }
    return body;
  }

  // Reads an SSE body: calls onData(object) for each `data:` event until [DONE].
  async function readEvents(response, onData) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data: ")) continue; // comments are keep-alives
          const data = line.slice(6);
          if (data === "[DONE]") return;
          onData(JSON.parse(data));
        }
      }
    }
  }

  async function send(text) {
    if (running || !text.trim()) return;
    showBanner("");
    let chat = current();
    if (!chat) {
      chat = { id: newId(), title: "", system: ui.system.value, messages: [], updated: Date.now() };
      chats.push(chat);
      currentId = chat.id;
    }
    chat.system = ui.system.value;
    if (!chat.title) chat.title = text.trim().replace(/\s+/g, " ").slice(0, 48);
    const question = { role: "user", content: text };
    const answer = { role: "assistant", content: "", stats: null, stopped: false };
    chat.messages.push(question, answer);
    chat.updated = Date.now();
    ui.prompt.value = "";
    renderList();
    renderMessages();
    const node = ui.messages.lastElementChild;
    node.setAttribute("aria-busy", "true");

    const controller = new AbortController();
    running = { controller, answer };
    setRunning(true);
    const started = performance.now();
    let first = null;
    let last = null;
    let tokens = null;
    let pieces = 0;
    let failure = null;
    let redraw = 0;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(requestBody(chat)), signal: controller.signal,
      });
      if (!response.ok) {
        failure = await errorText(response);
        if (response.status === 401) askKey();
      } else {
        await readEvents(response, (chunk) => {
          if (chunk.error) {
            failure = chunk.error.message;
            return;
          }
          if (chunk.usage) tokens = chunk.usage.completion_tokens;
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.stopped_by === "loop_guard") answer.loop = true;
          const piece = choice && choice.delta.content;
          if (!piece) return;
          pieces++;
          last = performance.now();
          if (first === null) first = last;
          answer.content += piece;
          if (!redraw) {
            redraw = requestAnimationFrame(() => {
              redraw = 0;
              fill(node, answer);
              ui.messages.scrollTop = ui.messages.scrollHeight;
            });
          }
        });
      }
    } catch (err) {
      if (err.name === "AbortError") answer.stopped = true;
      else failure = "the connection to the server failed (" + err.message + ")";
    }
    cancelAnimationFrame(redraw);
    running = null;
    setRunning(false);
    node.removeAttribute("aria-busy");
    if (failure && !answer.content) {
      // Nothing came back: take the question out again and give its text back, so nothing is lost.
      chat.messages.splice(chat.messages.length - 2, 2);
      if (!ui.prompt.value) ui.prompt.value = text;
      showBanner(failure);
    } else {
      if (failure) showBanner(failure);
      // A stopped answer has no usage chunk: its streamed pieces stand in for tokens ("~").
      const count = tokens ?? pieces;
      const rate = last > first && count > 1 ? ((count - 1) * 1000) / (last - first) : null;
      answer.stats = first === null ? null : { tokens: (tokens === null ? "~" : "") + count, ttft: first - started, rate };
    }
    if (!chat.messages.length) chats = chats.filter((c) => c !== chat);
    chat.updated = Date.now();
    save();
    renderList();
    renderMessages();
    ui.prompt.focus();
  }

  function setRunning(on) {
    ui.send.hidden = on;
    ui.stop.hidden = !on;
    ui.newChat.disabled = on;
    if (on) ui.stop.focus();
  }

  // -- events ---------------------------------------------------------------------------------
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send(ui.prompt.value);
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(ui.prompt.value);
    }
  });
  ui.stop.addEventListener("click", () => running && running.controller.abort());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && running) running.controller.abort();
  });
  ui.newChat.addEventListener("click", startNewChat);
  ui.toggle.addEventListener("click", () => {
    const open = document.body.classList.toggle("sidebar-open");
    ui.toggle.setAttribute("aria-expanded", String(open));
  });
  for (const name of ["system", "maxTokens", "loopGuard", ...Object.keys(FIELDS)]) {
    ui[name].addEventListener("change", saveSettings);
  }
  ui.modelPick.addEventListener("change", () => {
    const card = models.find((m) => m.id === ui.modelPick.value);
    if (!card) return;
    choose(card);
    try {
      localStorage.setItem(MODEL, JSON.stringify(card.id));
    } catch {
      /* a convenience, as the settings are */
    }
  });
  ui.keyButton.addEventListener("click", askKey);
  ui.keyCancel.addEventListener("click", () => ui.keyDialog.close());
  ui.keyForm.addEventListener("submit", () => {
    const key = ui.keyInput.value.trim();
    if (key) localStorage.setItem(KEY, key);
    loadModel();
  });
  window.addEventListener("storage", (event) => {
    if (event.key === STORE && !running) { // another tab changed the conversations
      chats = load(STORE, []);
      renderList();
      renderMessages();
    }
  });

  const old = load(OLD_SETTINGS, {}); // its system prompt and budget carry over; its sampling was not chosen
  const settings = load(SETTINGS, { system: old.system, maxTokens: old.maxTokens });
  if (typeof settings.system === "string") ui.system.value = settings.system;
  if (settings.maxTokens !== undefined) ui.maxTokens.value = settings.maxTokens;
  if (typeof settings.loopGuard === "boolean") ui.loopGuard.checked = settings.loopGuard;
  for (const name of Object.keys(FIELDS)) if (typeof settings[name] === "string") ui[name].value = settings[name];
  ui.keyButton.hidden = !localStorage.getItem(KEY);
  const latest = [...chats].sort((a, b) => b.updated - a.updated)[0];
  if (latest) select(latest.id);
  else renderList();
  loadModel();
})();
