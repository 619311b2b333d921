#!/usr/bin/env node
// VS Code's notebook renderer for text/markdown and text/latex outputs, under node.
//
// VS Code renders both mime types with its built-in "markdown-it renderer"
// (extensions/markdown-language-features/notebook: `new MarkdownIt({html: true})`), extended by
// the markdown-math extension (extensions/markdown-math/notebook/katex.ts:
// `md.use(katex, {globalGroup: true, enableBareBlocks: true, enableFencedBlocks: true, macros})`
// with @vscode/markdown-it-katex). This script builds the same pipeline.
//
//   node vscode_render.js < texts.json > rendered.json    # a JSON list of strings in
//   node vscode_render.js --page TITLE < texts.json > page.html
//
// Out (default mode): one object per text: {html, errors, warnings}. `errors` are KaTeX errors
// (the plugin turns them into `katex-error` elements, red in VS Code); `warnings` are KaTeX
// strict-mode warnings (console.warn). --page writes one standalone HTML page of all the texts
// with katex.css and VS Code's light-theme look, for screenshots.
'use strict';

const fs = require('fs');
const path = require('path');
const MarkdownIt = require('markdown-it');
const katexPlugin = require('@vscode/markdown-it-katex').default;

function makeRenderer() {
    const md = new MarkdownIt({ html: true });
    md.use(katexPlugin, {
        globalGroup: true, enableBareBlocks: true, enableFencedBlocks: true, macros: {},
    });
    return md;
}

function unescapeHtml(text) {
    return text.replace(/&quot;/g, '"').replace(/&#039;/g, "'").replace(/&lt;/g, '<')
        .replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

function renderOne(md, text) {
    const warnings = [];
    const originalWarn = console.warn;
    console.warn = (...args) => warnings.push(args.map(String).join(' '));
    const originalLog = console.log;  // throwOnError makes the plugin console.log the error
    console.log = () => {};
    let html;
    try {
        html = md.render(text);
    } finally {
        console.warn = originalWarn;
        console.log = originalLog;
    }
    const errors = [];
    const errorRe = /class="katex-(?:block katex-)?error"[^>]*?title="([^"]*)"[^>]*>([^<]*)</g;
    for (const m of html.matchAll(errorRe)) {
        errors.push({ source: unescapeHtml(m[1]), message: unescapeHtml(m[2]) });
    }
    return { html, errors, warnings };
}

const VSCODE_LIGHT_CSS = `
body { margin: 0; background: #ffffff; color: #3b3b3b;
  font-family: -apple-system, BlinkMacSystemFont, "Segoe WPC", "Segoe UI", "Ubuntu", "Droid Sans", sans-serif;
  font-size: 13px; line-height: 1.4; }
.cell { margin: 12px 16px 16px 16px; }
.input { font-family: "Droid Sans Mono", "monospace", monospace; font-size: 13px; white-space: pre;
  background: #f8f8f8; border: 1px solid #e5e5e5; border-radius: 4px; padding: 8px 12px; }
.output { padding: 6px 12px 4px 28px; }
.output p { margin: 0 0 8px 0; }
.output code { font-family: "Droid Sans Mono", "monospace", monospace; font-size: 1em; line-height: 1.357em;
  background: rgba(220, 220, 220, 0.4); border-radius: 3px; padding: 1px 3px; }
.output pre { background: rgba(220, 220, 220, 0.4); padding: 8px 12px; border-radius: 3px; overflow-x: auto; }
.output pre code { background: none; padding: 0; }
.output ul, .output ol { margin: 0 0 8px 0; padding-left: 22px; }
.katex-error { color: #e51400; }
`;

function escapeHtml(text) {
    return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function page(title, items, md) {
    let katexDir = path.dirname(require.resolve('katex'));
    while (!fs.existsSync(path.join(katexDir, 'dist', 'katex.min.css'))
           && katexDir !== path.dirname(katexDir)) katexDir = path.dirname(katexDir);
    const katexCss = path.join(katexDir, 'dist', 'katex.min.css');
    const cells = items.map(item => {
        const text = typeof item === 'string' ? item : item.text;
        const input = typeof item === 'string' ? '' : item.input || '';
        const rendered = renderOne(md, text).html;
        return `<div class="cell">${input ? `<div class="input">${escapeHtml(input)}</div>` : ''}`
            + `<div class="output">${rendered}</div></div>`;
    });
    return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>`
        + `<link rel="stylesheet" href="file://${katexCss}"><style>${VSCODE_LIGHT_CSS}</style></head>`
        + `<body>${cells.join('\n')}</body></html>`;
}

function main() {
    const input = fs.readFileSync(0, 'utf8');
    const items = JSON.parse(input);
    const md = makeRenderer();
    const pageIndex = process.argv.indexOf('--page');
    if (pageIndex >= 0) {
        process.stdout.write(page(process.argv[pageIndex + 1] || 'vjp_magic', items, md));
        return;
    }
    process.stdout.write(JSON.stringify(items.map(text => renderOne(md, text))));
}

main();
