// A small Markdown renderer for model output. Model output is untrusted, so this never parses HTML:
// every piece of text becomes a DOM text node (textContent), and only the elements created here exist.
"use strict";

(function () {
  const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
  const QUOTE = /^\s*>\s?(.*)$/;
  const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
  // Inline: code spans, bold, italics, and http(s) links. Anything else stays plain text.
  const INLINE =
    /(`+)([\s\S]+?)\1|\*\*((?:[^*\n]|\*(?!\*))+?)\*\*|__([^_\n]+?)__|\*([^*\s][^*\n]*?)\*|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g;

  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function inline(parent, text) {
    let last = 0;
    for (const m of text.matchAll(INLINE)) { // matchAll works on a copy: safe when bold text recurses
      if (m.index > last) parent.append(text.slice(last, m.index));
      if (m[2] !== undefined) {
        const code = el("code");
        code.textContent = m[2];
        parent.append(code);
      } else if (m[3] !== undefined || m[4] !== undefined) {
        const strong = el("strong");
        inline(strong, m[3] ?? m[4]);
        parent.append(strong);
      } else if (m[5] !== undefined) {
        const em = el("em");
        em.textContent = m[5];
        parent.append(em);
      } else {
        const link = el("a");
        link.href = m[7]; // the pattern admits only http(s) URLs: no javascript: or data:
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
        link.textContent = m[6];
        parent.append(link);
      }
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  function lines(parent, rows) {
    rows.forEach((row, i) => {
      if (i) parent.append(el("br"));
      inline(parent, row);
    });
  }

  // Renders `text` into a DocumentFragment. An unclosed code fence (a streaming answer) is shown as code.
  function render(text) {
    const out = document.createDocumentFragment();
    const rows = String(text).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < rows.length) {
      const row = rows[i];
      const fence = FENCE.exec(row);
      if (fence) {
        const body = [];
        for (i++; i < rows.length && !rows[i].trim().startsWith(fence[1]); i++) body.push(rows[i]);
        i++; // the closing fence
        const pre = el("pre");
        const code = el("code");
        if (fence[2]) code.dataset.lang = fence[2];
        code.textContent = body.join("\n");
        pre.append(code);
        out.append(pre);
        continue;
      }
      if (!row.trim()) {
        i++;
        continue;
      }
      const heading = HEADING.exec(row);
      if (heading) {
        const h = el("h" + Math.min(heading[1].length + 2, 6));
        inline(h, heading[2]);
        out.append(h);
        i++;
        continue;
      }
      if (RULE.test(row)) {
        out.append(el("hr"));
        i++;
        continue;
      }
      if (BULLET.test(row) || NUMBERED.test(row)) {
        const numbered = !BULLET.test(row);
        const pattern = numbered ? NUMBERED : BULLET;
        const list = el(numbered ? "ol" : "ul");
        if (numbered && NUMBERED.exec(row)[1] !== "1") list.start = Number(NUMBERED.exec(row)[1]);
        for (let m = pattern.exec(rows[i]); i < rows.length && m; m = pattern.exec(rows[i] ?? "")) {
          const item = el("li");
          inline(item, numbered ? m[2] : m[1]);
          list.append(item);
          i++;
        }
        out.append(list);
        continue;
      }
      if (QUOTE.test(row)) {
        const quote = el("blockquote");
        const body = [];
        for (; i < rows.length && QUOTE.test(rows[i]); i++) body.push(QUOTE.exec(rows[i])[1]);
        lines(quote, body);
        out.append(quote);
        continue;
      }
      const para = [];
      for (; i < rows.length && rows[i].trim() && !FENCE.test(rows[i]) && !HEADING.test(rows[i]); i++) {
        if (para.length && (BULLET.test(rows[i]) || NUMBERED.test(rows[i]) || QUOTE.test(rows[i]))) break;
        para.push(rows[i]);
      }
      const p = el("p");
      lines(p, para);
      out.append(p);
    }
    return out;
  }

  window.ovchatMarkdown = { render };
})();
