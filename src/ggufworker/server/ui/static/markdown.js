// A small Markdown renderer for untrusted text (model output).
//
// It never parses HTML: every piece of text becomes a DOM text node (createTextNode /
// textContent), and the only elements made are the fixed set below. So "<script>" or
// "<img onerror=...>" in the text shows as those characters and nothing runs. Links keep only
// http(s) and mailto URLs. Supported: paragraphs, line breaks, headings, fenced code blocks
// (with a simple highlighter), inline code, bold, italic, strikethrough, links, block quotes,
// lists, pipe tables and horizontal rules.
"use strict";

(function () {
  const SAFE_URL = /^(https?:\/\/|mailto:)/i;
  const KEYWORDS = new Set(("and as assert async await break case catch class const continue " +
    "def default del do elif else enum except export extends false final finally fn for from " +
    "func function go if impl import in interface is lambda let loop match mod mut new nil " +
    "none None not null or package pass private protected pub public raise return self " +
    "static struct super switch this throw true True False try type typeof use var void " +
    "while with yield").split(" "));
  const HASH_COMMENT = new Set(["python", "py", "sh", "bash", "shell", "zsh", "ruby", "rb",
    "yaml", "yml", "toml", "r", "perl", "dockerfile", "makefile", "ini", "conf"]);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- code highlighting -------------------------------------------------------------------

  function highlight(code, lang) {
    const frag = document.createDocumentFragment();
    const comment = HASH_COMMENT.has((lang || "").toLowerCase()) ? "#[^\\n]*" : "\\/\\/[^\\n]*";
    const pattern = new RegExp(
      "(" + comment + "|\\/\\*[\\s\\S]*?\\*\\/)" +            // 1 comment
      "|(\"(?:[^\"\\\\\\n]|\\\\.)*\"|'(?:[^'\\\\\\n]|\\\\.)*'|`(?:[^`\\\\]|\\\\.)*`)" + // 2 string
      "|(\\b\\d+(?:\\.\\d+)?\\b)" +                           // 3 number
      "|([A-Za-z_][A-Za-z0-9_]*)", "g");                      // 4 word
    let last = 0;
    let m;
    while ((m = pattern.exec(code)) !== null) {
      let cls = null;
      if (m[1]) cls = "tok-comment";
      else if (m[2]) cls = "tok-string";
      else if (m[3]) cls = "tok-number";
      else if (m[4] && KEYWORDS.has(m[4])) cls = "tok-keyword";
      if (!cls) continue;
      if (m.index > last) frag.appendChild(document.createTextNode(code.slice(last, m.index)));
      frag.appendChild(el("span", cls, m[0]));
      last = m.index + m[0].length;
    }
    if (last < code.length) frag.appendChild(document.createTextNode(code.slice(last)));
    return frag;
  }

  // --- inline ------------------------------------------------------------------------------

  const INLINE = [
    { re: /`([^`\n]+)`/, make: (m) => el("code", null, m[1]) },
    { re: /\[([^\]\n]+)\]\(([^)\s]+)\)/, make: (m) => link(m[1], m[2]) },
    { re: /\*\*([^*\n]+?)\*\*/, make: (m) => wrap("strong", m[1]) },
    // underscores emphasise only outside words (snake_case and __names__ stay as they are)
    { re: /(?:^|(?<=[\s(]))__([^_\n]+?)__(?=$|[\s).,!?;:])/, make: (m) => wrap("strong", m[1]) },
    { re: /~~([^~\n]+?)~~/, make: (m) => wrap("del", m[1]) },
    { re: /\*([^*\s][^*\n]*?)\*/, make: (m) => wrap("em", m[1]) },
    { re: /(?:^|(?<=[\s(]))_([^_\s][^_\n]*?)_(?=$|[\s).,!?;:])/, make: (m) => wrap("em", m[1]) },
  ];

  function wrap(tag, text) {
    const node = el(tag);
    inline(text, node);
    return node;
  }

  function link(text, url) {
    if (!SAFE_URL.test(url)) return document.createTextNode("[" + text + "](" + url + ")");
    const a = el("a");
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer nofollow";
    inline(text, a);
    return a;
  }

  function appendText(parent, text) {
    const parts = text.split("\n");
    parts.forEach((part, i) => {
      if (i > 0) parent.appendChild(el("br"));
      if (part) parent.appendChild(document.createTextNode(part));
    });
  }

  function inline(text, parent) {
    let rest = text;
    while (rest) {
      let best = null;
      for (const rule of INLINE) {
        const m = rule.re.exec(rest);
        if (m && (best === null || m.index < best.m.index)) best = { m, rule };
      }
      if (best === null) {
        appendText(parent, rest);
        return;
      }
      if (best.m.index > 0) appendText(parent, rest.slice(0, best.m.index));
      parent.appendChild(best.rule.make(best.m));
      rest = rest.slice(best.m.index + best.m[0].length);
    }
  }

  // --- blocks ------------------------------------------------------------------------------

  const FENCE = /^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
      ITEM.test(line);
  }

  function cells(line) {
    let s = line.trim();
    if (s.startsWith("|")) s = s.slice(1);
    if (s.endsWith("|")) s = s.slice(0, -1);
    return s.split("|").map((c) => c.trim());
  }

  function render(src) {
    const frag = document.createDocumentFragment();
    const lines = String(src).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = FENCE.exec(line))) {
        const marker = m[1];
        const lang = m[2];
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(marker)) body.push(lines[i++]);
        i++; // the closing fence (absent while an answer is still streaming)
        const pre = el("pre");
        if (lang) pre.appendChild(el("div", "code-lang", lang));
        const code = el("code");
        code.appendChild(highlight(body.join("\n"), lang));
        pre.appendChild(code);
        frag.appendChild(pre);
      } else if (!line.trim()) {
        i++;
      } else if ((m = HEADING.exec(line))) {
        frag.appendChild(wrap("h" + m[1].length, m[2]));
        i++;
      } else if (RULE.test(line)) {
        frag.appendChild(el("hr"));
        i++;
      } else if (QUOTE.test(line)) {
        const body = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
          body.push(m[1]);
          i++;
        }
        const quote = el("blockquote");
        quote.appendChild(render(body.join("\n")));
        frag.appendChild(quote);
      } else if ((m = ITEM.exec(line))) {
        const ordered = /\d/.test(m[2]);
        const list = el(ordered ? "ol" : "ul");
        if (ordered && parseInt(m[2], 10) !== 1) list.start = parseInt(m[2], 10);
        let item = null;
        let text = [];
        const flush = () => {
          if (item) {
            item.appendChild(render(text.join("\n")));
            list.appendChild(item);
          }
        };
        while (i < lines.length) {
          const cur = lines[i];
          const im = ITEM.exec(cur);
          if (im) {
            flush();
            item = el("li");
            text = [im[3]];
          } else if (!cur.trim()) {
            const next = lines[i + 1];
            if (next === undefined || !(ITEM.test(next) || /^\s{2,}\S/.test(next))) break;
          } else if (startsBlock(cur) && !/^\s{2,}/.test(cur)) {
            break;
          } else {
            text.push(cur.trim());
          }
          i++;
        }
        flush();
        frag.appendChild(list);
      } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
        const table = el("table");
        const head = el("tr");
        for (const c of cells(line)) head.appendChild(wrap("th", c));
        table.appendChild(el("thead")).appendChild(head);
        const tbody = table.appendChild(el("tbody"));
        i += 2;
        while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
          const row = el("tr");
          for (const c of cells(lines[i])) row.appendChild(wrap("td", c));
          tbody.appendChild(row);
          i++;
        }
        frag.appendChild(table);
      } else {
        const body = [];
        while (i < lines.length && lines[i].trim() && !(body.length && startsBlock(lines[i]))) {
          body.push(lines[i]);
          i++;
        }
        frag.appendChild(wrap("p", body.join("\n")));
      }
    }
    return frag;
  }

  window.GWMarkdown = { render, highlight };
})();
