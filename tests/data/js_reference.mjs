// Runs the reference JavaScript GPT-2 encoder (npm gpt-3-encoder) over text files, one document
// per file, read as UTF-8 exactly as a node user would.
//   node js_reference.mjs compare ENCODER_DIR PREFIX FILE...  token-for-token check of PREFIX.bin/.idx
//   node js_reference.mjs bench ENCODER_DIR FILE...           encode throughput as one JSON line
//   node js_reference.mjs generate ENCODER_DIR OUT_DIR N SEED  N random valid-UTF-8 documents
// ENCODER_DIR is the gpt-3-encoder package directory.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const [mode, encoderDir, ...rest] = process.argv.slice(2);
if (!['compare', 'bench', 'generate'].includes(mode) || !encoderDir) {
  console.error('usage: js_reference.mjs compare ENCODER_DIR PREFIX FILE... | bench ENCODER_DIR FILE... | ' +
                'generate ENCODER_DIR OUT_DIR N SEED');
  process.exit(2);
}
const require = createRequire(import.meta.url);
const { encode, decode } = require(path.resolve(encoderDir));

// Documents of a Megatron PREFIX.idx/.bin pair (uint16 or int32 tokens), one array per document.
function readIndexed(prefix) {
  const idx = fs.readFileSync(`${prefix}.idx`);
  const bin = fs.readFileSync(`${prefix}.bin`);
  if (idx.subarray(0, 9).toString('latin1') !== 'MMIDIDX\0\0') throw new Error(`${prefix}.idx: bad magic`);
  const dtype = idx.readUInt8(17);
  const size = { 4: 4, 8: 2 }[dtype];
  if (!size) throw new Error(`${prefix}.idx: dtype ${dtype} not handled here`);
  const s = Number(idx.readBigUInt64LE(18));
  const d = Number(idx.readBigUInt64LE(26));
  const lengths = [], pointers = [], docIndex = [];
  for (let i = 0; i < s; i++) lengths.push(idx.readInt32LE(34 + 4 * i));
  for (let i = 0; i < s; i++) pointers.push(Number(idx.readBigInt64LE(34 + 4 * s + 8 * i)));
  for (let i = 0; i < d; i++) docIndex.push(Number(idx.readBigInt64LE(34 + 12 * s + 8 * i)));
  const docs = [];
  for (let k = 0; k + 1 < d; k++) {
    const ids = [];
    for (let q = docIndex[k]; q < docIndex[k + 1]; q++) {
      for (let t = 0; t < lengths[q]; t++) {
        const at = pointers[q] + t * size;
        ids.push(size === 2 ? bin.readUInt16LE(at) : bin.readInt32LE(at));
      }
    }
    docs.push(ids);
  }
  return docs;
}

// Random documents built from the pieces that stress the pre-tokeniser: words, contractions in
// both cases, digits, punctuation runs, every ECMAScript white space and its near misses, and code
// points drawn from all planes (unassigned ones included; never surrogates).
function generate(outDir, n, seed) {
  let state = BigInt(seed) * 6364136223846793005n + 1442695040888963407n;
  const next = () => {
    state = (state * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
    return Number(state >> 33n);
  };
  const pick = (a) => a[next() % a.length];
  const spaces = [' ', '  ', '\t', '\n', '\r\n', '\x0b', '\x0c', '\u00a0', '\u1680', '\u2000', '\u200a',
                  '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\ufeff', '\u0085', '\u180e', '\u200b',
                  '\n\n\n', '    ', ' \n '];
  const words = ['the', 'The', 'THE', 'cat', 'naïve', 'résumé', 'мир', 'κόσμος', '世界', 'こんにちは', '안녕',
                 'مرحبا', 'שלום', 'हिन्दी', 'ไทย', 'x86_64', 'GPT2'];
  const tails = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'LL", "'", "''", "'x"];
  const puncts = ['.', ',', '!?', '...', '"', '",', '","', "','", '],[', '(', ')', '--', '—', '…', '🙂', '👍🏽',
                  '\u0301', '\u200d', '#', '$', '%', '&&', '<|endoftext|>'];
  const codePoint = () => {
    const plane = next() % 8;
    const max = plane < 4 ? 0x80 << (plane * 4) : 0x110000;
    let c = next() % max;
    if (c >= 0xd800 && c <= 0xdfff) c = 0x41;
    return String.fromCodePoint(c);
  };
  fs.mkdirSync(outDir, { recursive: true });
  for (let d = 0; d < n; d++) {
    let text = '';
    const len = 20 + (next() % 400);
    for (let i = 0; i < len; i++) {
      const r = next() % 10;
      if (r < 3) text += pick(words);
      else if (r < 5) text += pick(spaces);
      else if (r < 6) text += pick(tails);
      else if (r < 7) text += String(next() % 100000);
      else if (r < 8) text += pick(puncts);
      else text += codePoint();
    }
    fs.writeFileSync(path.join(outDir, `random${String(d).padStart(4, '0')}.txt`), text);
  }
}

if (mode === 'generate') {
  const [outDir, n, seed] = rest;
  generate(outDir, Number(n), Number(seed));
} else if (mode === 'compare') {
  const [prefix, ...files] = rest;
  const ours = readIndexed(prefix);
  if (ours.length !== files.length) {
    console.error(`document count differs: ${ours.length} in ${prefix}, ${files.length} files`);
    process.exit(1);
  }
  let tokens = 0, mismatched = 0, badDocs = 0;
  files.forEach((file, k) => {
    const ref = encode(fs.readFileSync(file, 'utf8'));
    const got = ours[k];
    tokens += ref.length;
    let bad = 0, first = -1;
    for (let i = 0; i < Math.max(ref.length, got.length); i++) {
      if (ref[i] !== got[i]) {
        bad++;
        if (first < 0) first = i;
      }
    }
    if (bad > 0) {
      badDocs++;
      mismatched += bad;
      if (badDocs <= 5) {
        const ctx = (ids) => JSON.stringify(decode(ids.slice(Math.max(0, first - 3), first + 4)));
        console.error(`${file}: ${bad} mismatched tokens (${got.length} ours, ${ref.length} reference); ` +
                      `first at ${first}: ours ${JSON.stringify(got.slice(first, first + 4))} ${ctx(got)}, ` +
                      `reference ${JSON.stringify(ref.slice(first, first + 4))} ${ctx(ref)}`);
      }
    }
  });
  console.log(`compared ${files.length} documents, ${tokens} reference tokens: ` +
              `${mismatched} mismatched tokens in ${badDocs} documents`);
  process.exit(mismatched === 0 ? 0 : 1);
} else {
  const texts = rest.map((f) => fs.readFileSync(f, 'utf8'));
  const bytes = rest.reduce((n, f) => n + fs.statSync(f).size, 0);
  const t0 = process.hrtime.bigint();
  let tokens = 0;
  for (const text of texts) tokens += encode(text).length;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ documents: texts.length, bytes, tokens, seconds,
                               mb_per_s: bytes / 1e6 / seconds, tokens_per_s: tokens / seconds }));
}
