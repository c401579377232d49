// The chat page: models from /v1/models, answers streamed from /v1/chat/completions, and
// conversations kept in this browser's localStorage. Model output is untrusted: it is shown
// through GWMarkdown (text nodes only) or textContent, never as HTML.
"use strict";

(function () {
  const STORE = {
    conversations: "ggufworker.conversations",
    current: "ggufworker.current",
    settings: "ggufworker.settings",
    model: "ggufworker.model",
    key: "ggufworker.apiKey",
  };
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"), messages: $("messages"), input: $("input"), send: $("send"),
    stop: $("stop"), status: $("status"), composer: $("composer"), list: $("conversations"),
    newChat: $("new-chat"), settings: $("settings"), settingsToggle: $("settings-toggle"),
    system: $("system"), temperature: $("temperature"), topP: $("top-p"),
    maxTokens: $("max-tokens"), attach: $("attach"), attachLabel: $("attach-label"),
    attachments: $("attachments"), keyDialog: $("key-dialog"), keyForm: $("key-form"),
    keyInput: $("key-input"), forgetKey: $("forget-key"),
  };

  let models = [];            // cards of /v1/models that can chat
  let conversations = load(STORE.conversations, []);
  let currentId = localStorage.getItem(STORE.current);
  let settings = load(STORE.settings, { system: "", temperature: "", top_p: "", max_tokens: "" });
  let pendingImages = [];     // data: URLs attached to the next message
  let streaming = null;       // { controller, conv, message } while an answer streams

  function load(key, fallback) {
    try {
      const value = JSON.parse(localStorage.getItem(key));
      return value === null ? fallback : value;
    } catch (err) {
      return fallback;
    }
  }

  function save() {
    localStorage.setItem(STORE.conversations, JSON.stringify(conversations));
    if (currentId) localStorage.setItem(STORE.current, currentId);
  }

  function setStatus(text) {
    ui.status.textContent = text || "";
  }

  // --- the API, with the key asked once --------------------------------------------------

  function headers(extra) {
    const out = Object.assign({}, extra);
    const key = localStorage.getItem(STORE.key);
    if (key) out.Authorization = "Bearer " + key;
    return out;
  }

  function askKey() {
    return new Promise((resolve) => {
      ui.keyInput.value = "";
      ui.keyDialog.addEventListener("close", () => {
        const key = ui.keyInput.value.trim();
        if (key) localStorage.setItem(STORE.key, key);
        resolve(Boolean(key));
      }, { once: true });
      ui.keyDialog.showModal();
    });
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    for (let attempt = 0; attempt < 3; attempt++) {
      opts.headers = headers((options || {}).headers);
      const response = await fetch(path, opts);
      if (response.status !== 401) return response;
      localStorage.removeItem(STORE.key);
      if (!(await askKey())) return response;
    }
    return fetch(path, Object.assign(opts, { headers: headers((options || {}).headers) }));
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error) return body.error.message || JSON.stringify(body.error);
    } catch (err) {
      // not JSON: fall through
    }
    return "HTTP " + response.status;
  }

  // --- models ----------------------------------------------------------------------------

  async function loadModels() {
    let response;
    try {
      response = await api("/v1/models");
    } catch (err) {
      setStatus("cannot reach the server: " + err.message);
      return;
    }
    if (!response.ok) {
      setStatus("cannot list models: " + (await errorText(response)));
      return;
    }
    const body = await response.json();
    models = (body.data || []).filter((m) => (m.capabilities || []).includes("completion"));
    ui.model.replaceChildren();
    for (const m of models) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.id + (m.loaded ? "" : " (not loaded)");
      ui.model.appendChild(option);
    }
    const conv = current();
    const wanted = (conv && conv.model) || localStorage.getItem(STORE.model);
    if (wanted && models.some((m) => m.id === wanted)) ui.model.value = wanted;
    updateVision();
  }

  function selectedModel() {
    return models.find((m) => m.id === ui.model.value);
  }

  function updateVision() {
    const m = selectedModel();
    const vision = Boolean(m && (m.capabilities || []).includes("vision"));
    ui.attachLabel.hidden = !vision;
    if (!vision && pendingImages.length) {
      pendingImages = [];
      renderAttachments();
    }
  }

  // --- conversations -----------------------------------------------------------------------

  function newId() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  }

  function current() {
    return conversations.find((c) => c.id === currentId) || null;
  }

  function ensureConversation() {
    let conv = current();
    if (!conv) {
      conv = { id: newId(), title: "New chat", model: ui.model.value, messages: [] };
      conversations.unshift(conv);
      currentId = conv.id;
    }
    return conv;
  }

  function renderList() {
    ui.list.replaceChildren();
    for (const conv of conversations) {
      const li = document.createElement("li");
      if (conv.id === currentId) li.className = "current";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = conv.title || "New chat";
      open.addEventListener("click", () => switchTo(conv.id));
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.title = "Delete this conversation";
      del.textContent = "×";
      del.addEventListener("click", () => removeConversation(conv.id));
      li.append(open, del);
      ui.list.appendChild(li);
    }
  }

  function switchTo(id) {
    if (streaming) return;
    currentId = id;
    const conv = current();
    if (conv && conv.model && models.some((m) => m.id === conv.model)) {
      ui.model.value = conv.model;
      updateVision();
    }
    save();
    renderAll();
  }

  function removeConversation(id) {
    if (streaming && streaming.conv.id === id) return;
    conversations = conversations.filter((c) => c.id !== id);
    if (currentId === id) {
      currentId = conversations.length ? conversations[0].id : null;
      if (!currentId) localStorage.removeItem(STORE.current);
    }
    save();
    renderAll();
  }

  // --- rendering -------------------------------------------------------------------------

  function renderAll() {
    renderList();
    ui.messages.replaceChildren();
    const conv = current();
    if (!conv) return;
    conv.messages.forEach((message, index) => {
      ui.messages.appendChild(renderMessage(conv, message, index));
    });
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function button(label, action, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.dataset.action = action;
    b.addEventListener("click", onClick);
    return b;
  }

  function fillAssistant(node, message) {
    node.replaceChildren();
    if (message.reasoning) {
      const details = document.createElement("details");
      details.className = "reasoning";
      const summary = document.createElement("summary");
      summary.textContent = "Reasoning";
      const text = document.createElement("div");
      text.className = "reasoning-text";
      text.textContent = message.reasoning;
      details.append(summary, text);
      node.appendChild(details);
    }
    const content = document.createElement("div");
    content.className = "content";
    content.appendChild(window.GWMarkdown.render(message.content || ""));
    node.appendChild(content);
    for (const call of message.tool_calls || []) {
      const box = document.createElement("div");
      box.className = "tool-call";
      const name = document.createElement("div");
      name.textContent = "Tool call: " + ((call.function && call.function.name) || "?");
      const args = document.createElement("pre");
      args.textContent = (call.function && call.function.arguments) || "";
      box.append(name, args);
      node.appendChild(box);
    }
  }

  function renderMessage(conv, message, index) {
    const wrap = document.createElement("div");
    wrap.className = "message " + message.role + (message.state === "error" ? " error" : "");
    wrap.dataset.index = String(index);
    wrap.dataset.state = message.state || "done";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = message.role === "user" ? "You" : (message.model || "assistant");
    wrap.appendChild(meta);
    const body = document.createElement("div");
    body.className = "body";
    if (message.role === "user") {
      for (const url of message.images || []) {
        const img = document.createElement("img");
        img.className = "attached";
        img.alt = "attached image";
        img.src = url;
        body.appendChild(img);
      }
      const text = document.createElement("div");
      text.className = "user-text";
      text.textContent = message.content;
      body.appendChild(text);
    } else {
      fillAssistant(body, message);
    }
    wrap.appendChild(body);
    const note = document.createElement("div");
    note.className = "note";
    if (message.state === "stopped") note.textContent = "(stopped)";
    if (message.state === "error") note.textContent = message.error || "error";
    wrap.appendChild(note);
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.appendChild(button("Copy", "copy", () => copy(message.content || "")));
    actions.appendChild(button("Edit", "edit", () => edit(conv, index, wrap)));
    const last = index === conv.messages.length - 1;
    if (message.role === "assistant" && last) {
      actions.appendChild(button("Regenerate", "regenerate", () => regenerate(conv)));
    }
    wrap.appendChild(actions);
    return wrap;
  }

  function copy(text) {
    const fallback = () => {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try {
        document.execCommand("copy");
      } finally {
        area.remove();
      }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => setStatus(""), fallback);
    } else {
      fallback();
    }
  }

  function edit(conv, index, wrap) {
    if (streaming) return;
    const message = conv.messages[index];
    const area = document.createElement("textarea");
    area.className = "editor";
    area.value = message.content || "";
    const saveButton = button(message.role === "user" ? "Save & send" : "Save", "save", () => {
      message.content = area.value;
      if (message.role === "user") {
        conv.messages = conv.messages.slice(0, index + 1);
        save();
        renderAll();
        answer(conv);
      } else {
        message.state = "done";
        save();
        renderAll();
      }
    });
    const cancel = button("Cancel", "cancel", () => renderAll());
    const body = wrap.querySelector(".body");
    body.replaceChildren(area);
    wrap.querySelector(".actions").replaceChildren(saveButton, cancel);
    area.focus();
  }

  function regenerate(conv) {
    if (streaming) return;
    const last = conv.messages[conv.messages.length - 1];
    if (last && last.role === "assistant") conv.messages.pop();
    save();
    renderAll();
    answer(conv);
  }

  // --- sending and streaming -----------------------------------------------------------------

  function apiMessages(conv) {
    const out = [];
    if (settings.system && settings.system.trim()) {
      out.push({ role: "system", content: settings.system });
    }
    for (const m of conv.messages) {
      if (m.role === "assistant" && m.state === "error") continue;
      if (m.role === "user" && m.images && m.images.length) {
        const parts = [{ type: "text", text: m.content }];
        for (const url of m.images) parts.push({ type: "image_url", image_url: { url } });
        out.push({ role: "user", content: parts });
      } else {
        out.push({ role: m.role, content: m.content || "" });
      }
    }
    return out;
  }

  function requestBody(conv) {
    const body = { model: ui.model.value, messages: apiMessages(conv), stream: true };
    const num = (v) => (v === "" || v === null || v === undefined ? null : Number(v));
    const t = num(settings.temperature);
    const p = num(settings.top_p);
    const n = num(settings.max_tokens);
    if (t !== null && !Number.isNaN(t)) body.temperature = t;
    if (p !== null && !Number.isNaN(p)) body.top_p = p;
    if (n !== null && !Number.isNaN(n) && n > 0) body.max_tokens = Math.floor(n);
    return body;
  }

  function setStreaming(on) {
    ui.stop.hidden = !on;
    ui.send.disabled = on;
  }

  async function answer(conv) {
    const message = { role: "assistant", content: "", reasoning: "", tool_calls: [],
      model: ui.model.value, state: "streaming" };
    conv.messages.push(message);
    conv.model = ui.model.value;
    const controller = new AbortController();
    streaming = { controller, conv, message };
    setStreaming(true);
    setStatus("");
    renderAll();
    let scheduled = false;
    const repaint = () => {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => {
        scheduled = false;
        const node = ui.messages.querySelector('.message[data-state="streaming"] .body');
        if (node) fillAssistant(node, message);
        ui.messages.scrollTop = ui.messages.scrollHeight;
      });
    };
    try {
      const response = await api("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(requestBody(conv)),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      await readEvents(response, (chunk) => {
        if (chunk.error) throw new Error(chunk.error.message || "the stream failed");
        if (chunk.model) message.model = chunk.model;
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        if (delta.content) message.content += delta.content;
        if (delta.reasoning_content) message.reasoning += delta.reasoning_content;
        for (const call of delta.tool_calls || []) addToolCall(message, call);
        repaint();
      });
      message.state = "done";
    } catch (err) {
      if (err.name === "AbortError") {
        message.state = "stopped";
      } else {
        message.state = "error";
        message.error = err.message;
      }
    } finally {
      streaming = null;
      setStreaming(false);
      save();
      renderAll();
    }
  }

  function addToolCall(message, call) {
    const index = call.index || 0;
    let slot = message.tool_calls[index];
    if (!slot) {
      slot = { id: call.id || "", type: "function", function: { name: "", arguments: "" } };
      message.tool_calls[index] = slot;
    }
    if (call.function) {
      if (call.function.name) slot.function.name += call.function.name;
      if (call.function.arguments) slot.function.arguments += call.function.arguments;
    }
  }

  async function readEvents(response, onChunk) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        onChunk(JSON.parse(data));
      }
    }
  }

  function send() {
    if (streaming) return;
    const text = ui.input.value;
    if (!text.trim() && !pendingImages.length) return;
    if (!ui.model.value) {
      setStatus("no model to chat with");
      return;
    }
    const conv = ensureConversation();
    const message = { role: "user", content: text };
    if (pendingImages.length) message.images = pendingImages;
    if (!conv.messages.length) conv.title = text.trim().slice(0, 48) || "Image";
    conv.messages.push(message);
    ui.input.value = "";
    pendingImages = [];
    renderAttachments();
    answer(conv);
  }

  function renderAttachments() {
    ui.attachments.replaceChildren();
    for (const url of pendingImages) {
      const img = document.createElement("img");
      img.alt = "image to send";
      img.src = url;
      ui.attachments.appendChild(img);
    }
  }

  // --- settings --------------------------------------------------------------------------

  function loadSettings() {
    ui.system.value = settings.system || "";
    ui.temperature.value = settings.temperature;
    ui.topP.value = settings.top_p;
    ui.maxTokens.value = settings.max_tokens;
  }

  function storeSettings() {
    settings = {
      system: ui.system.value,
      temperature: ui.temperature.value,
      top_p: ui.topP.value,
      max_tokens: ui.maxTokens.value,
    };
    localStorage.setItem(STORE.settings, JSON.stringify(settings));
  }

  // --- wiring ----------------------------------------------------------------------------

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.stop.addEventListener("click", () => {
    if (streaming) streaming.controller.abort();
  });
  ui.newChat.addEventListener("click", () => {
    if (streaming) return;
    currentId = null;
    localStorage.removeItem(STORE.current);
    renderAll();
    ui.input.focus();
  });
  ui.model.addEventListener("change", () => {
    localStorage.setItem(STORE.model, ui.model.value);
    const conv = current();
    if (conv && !streaming) {
      conv.model = ui.model.value;
      save();
    }
    updateVision();
  });
  ui.settingsToggle.addEventListener("click", () => {
    ui.settings.hidden = !ui.settings.hidden;
    ui.settingsToggle.setAttribute("aria-expanded", String(!ui.settings.hidden));
  });
  for (const input of [ui.system, ui.temperature, ui.topP, ui.maxTokens]) {
    input.addEventListener("change", storeSettings);
  }
  ui.forgetKey.addEventListener("click", () => localStorage.removeItem(STORE.key));
  ui.attach.addEventListener("change", () => {
    for (const file of ui.attach.files) {
      const reader = new FileReader();
      reader.onload = () => {
        pendingImages.push(String(reader.result));
        renderAttachments();
      };
      reader.readAsDataURL(file);
    }
    ui.attach.value = "";
  });
  ui.keyForm.addEventListener("submit", () => {
    // method="dialog" closes the dialog; the close listener stores the key
  });

  async function start() {
    loadSettings();
    renderAll();
    const auth = document.querySelector('meta[name="ggufworker-auth"]');
    if (auth && auth.content === "required" && !localStorage.getItem(STORE.key)) {
      await askKey();
    }
    await loadModels();
  }

  start();
})();
