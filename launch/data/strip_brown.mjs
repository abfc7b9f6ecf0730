// Strips the Brown Corpus (Form C, POS-tagged: `The/at jury/nn ./.`) back to running text, one
// document per corpus file (ca01..cr09): paragraphs separated by a blank line, `` and '' as ".
// Usage: node launch/data/strip_brown.mjs CORPUS_DIR OUT_DIR
import fs from 'node:fs';
import path from 'node:path';

const [corpusDir, outDir] = process.argv.slice(2);
if (!corpusDir || !outDir) {
  console.error('usage: node strip_brown.mjs CORPUS_DIR OUT_DIR');
  process.exit(2);
}
const closers = new Set([',', '.', ';', ':', '?', '!', ')', ']', '}', "''", "'", '--']);
const openers = new Set(['(', '[', '{', '``', '--']);

function word(token) {
  const slash = token.lastIndexOf('/');
  return slash > 0 ? token.slice(0, slash) : token;
}

function sentence(line) {
  let s = '';
  let glue = true;
  for (const token of line.split(/\s+/).filter((t) => t.length > 0)) {
    const w = word(token);
    if (!glue && !closers.has(w)) s += ' ';
    s += w === '``' || w === "''" ? '"' : w;
    glue = openers.has(w);
  }
  return s;
}

function strip(text) {
  const paragraphs = [];
  for (const block of text.split(/\n\s*\n/)) {
    const sentences = block.split('\n').map(sentence).filter((s) => s.length > 0);
    if (sentences.length > 0) paragraphs.push(sentences.join(' '));
  }
  return paragraphs.join('\n\n') + '\n';
}

const files = fs.readdirSync(corpusDir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
if (files.length === 0) {
  console.error(`no Brown Corpus files (ca01..cr09) in ${corpusDir}`);
  process.exit(1);
}
fs.mkdirSync(outDir, { recursive: true });
let bytes = 0;
for (const f of files) {
  const text = strip(fs.readFileSync(path.join(corpusDir, f), 'utf8'));
  fs.writeFileSync(path.join(outDir, `${f}.txt`), text);
  bytes += Buffer.byteLength(text);
}
console.log(`stripped ${files.length} Brown Corpus files into ${outDir} (${bytes} bytes)`);
