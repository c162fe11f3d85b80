// Records reference token ids for tests/data/llama2_tokenizer.json from llama-tokenizer-js's own
// `encode` (the Llama-2 tokenizer in JS, whose test cases were checked against Meta's/HF's).
//
// usage: node tools/reference/tokenizer_llama2_reference.js <package dir> <chat_templates.json> <out json>
//   (the package dir is fetched by tools/fetch-test-data into tests/data/cache/)
//
// `texts`: encode(text) with BOS and the SentencePiece leading space, as HF's Llama-2 tokenizer
// does with add_special_tokens=True.
// `chat_prompts`: rendered Llama-2-chat prompts (from chat_templates.json) that contain `<s>`/`</s>`.
// HF splits special tokens out of the text first and normalizes each remaining piece on its own
// (so each piece gets its own leading `▁`); that is emulated here by encoding piece by piece.
'use strict';
const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');

const TEXTS = [
  'Hello world!',
  'grabbed',
  ' grabbed',
  '           grabbed',
  '\n',
  ' \n',
  ' ',
  '\ttabs\t\t\t\tout here',
  'ax\n####\nboo',
  'trailing spaces   ',
  'multiple   inner    spaces and\ttabs',
  'line one\nline two\n\nline four\n',
  '\r\nwindows line endings\r\n',
  '1234567890 and 3.14159, 2,718; -42',
  'The year 2024 had 366 days.',
  'naïve café résumé Ünïcödé ßtraße',
  'e\u0301 (combining acute) vs é',
  '镇',
  '日本語のテキストです。',
  '中文分词测试：你好，世界！',
  '한국어 텍스트 입니다',
  'Привет, мир!',
  'مرحبا بالعالم',
  '🦙',
  '🦙Ꙋ',
  'emoji mix: 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷',
  'rare CJK 𠀀𪚥 and math 𝔸𝕓',
  'math ∑∫√∞ ≠ ≤ ± ×',
  'code: fn main() { println!("hi"); }',
  'URL https://example.com/a?b=c&d=e#f',
  '<html><body class="x">tags</body></html>',
  'control\u0001char and \u007f delete',
  'supercalifragilisticexpialidocious',
];

function fail(message) {
  console.error(`tokenizer_llama2_reference: ${message}`);
  process.exit(1);
}

function encodeLikeHf(tok, text) {
  // Split out <s>/</s>, encode each non-empty piece without BOS but with its own leading space.
  const ids = [];
  for (const piece of text.split(/(<s>|<\/s>)/)) {
    if (piece === '<s>') ids.push(1);
    else if (piece === '</s>') ids.push(2);
    else if (piece.length > 0) ids.push(...tok.encode(piece, false, true));
  }
  return ids;
}

async function main() {
  const [pkgDir, templatesPath, outPath] = process.argv.slice(2);
  if (!outPath) fail('usage: tokenizer_llama2_reference.js <package dir> <chat_templates.json> <out json>');
  const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
  const tok = (await import(pathToFileURL(path.join(pkgDir, 'llama-tokenizer.js')).href)).default;

  const texts = TEXTS.map((text) => {
    const ids = tok.encode(text);
    if (tok.decode(ids) !== text) fail(`llama-tokenizer-js does not round-trip ${JSON.stringify(text)}`);
    return { text, ids };
  });
  const cases = JSON.parse(fs.readFileSync(templatesPath, 'utf8')).cases;
  const chatPrompts = cases
    .filter((c) => c.template === 'llama2_chat' && typeof c.expected === 'string' && c.expected.length > 0 && !c.add_generation_prompt)
    .map((c) => ({ name: c.name, text: c.expected, ids: encodeLikeHf(tok, c.expected) }));

  const doc = {
    how: `Produced by tools/reference/tokenizer_llama2_reference.js with ${pkg.name}@${pkg.version} (npm), ` +
      'node ' + process.version + '. texts: encode(text) (BOS + leading space). chat_prompts: the ' +
      'llama2_chat renderings of chat_templates.json, encoded piece by piece between <s>/</s> as HF does.',
    texts,
    chat_prompts: chatPrompts,
  };
  // One case per line keeps the file readable and its diffs small.
  const lines = (items) => items.map((item) => '  ' + JSON.stringify(item)).join(',\n');
  const text = '{\n "how": ' + JSON.stringify(doc.how) + ',\n "texts": [\n' + lines(doc.texts) +
    '\n ],\n "chat_prompts": [\n' + lines(doc.chat_prompts) + '\n ]\n}\n';
  JSON.parse(text); // still valid JSON
  fs.writeFileSync(outPath, text);
}

main().catch((err) => fail(err.stack || String(err)));
