// The official `openai` npm client against `shardpipe serve`: a completion, a streamed completion and a chat
// completion (streamed too), each checked against the text `shardpipe generate --prompt … --greedy --json` printed
// for the same prompt (for chat: the chat template rendered with add_generation_prompt).
// Usage: node ops/openai-client.mjs CHECK.json, with
//   { "baseURL", "model", "prompt", "maxTokens", "expected", "chat": { "messages": [...], "expected" } | null }
// Run by ops/openai-check.sh and by Tests/Host/OpenAiClientTests.cs.
import OpenAI from "openai";
import { readFileSync } from "node:fs";

const check = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { baseURL, model, prompt, maxTokens, expected } = check;
const client = new OpenAI({ baseURL, apiKey: "not-needed" });
const same = (what, got, want) => {
  console.log(`${what}: ${JSON.stringify(got)}`);
  if (got !== want) throw new Error(`${what} ${JSON.stringify(got)} differs from generate's ${JSON.stringify(want)}`);
};

const models = await client.models.list();
if (!models.data.some((m) => m.id === model)) throw new Error(`/v1/models does not list ${model}`);

const completion = await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0 });
same("completion", completion.choices[0].text, expected);

let streamed = "";
for await (const chunk of await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0, stream: true }))
  streamed += chunk.choices[0]?.text ?? "";
same("streamed completion", streamed, expected);

if (check.chat) {
  const { messages } = check.chat;
  const chat = await client.chat.completions.create({ model, messages, max_tokens: maxTokens, temperature: 0 });
  same("chat completion", chat.choices[0].message.content, check.chat.expected);
  let deltas = "";
  for await (const chunk of await client.chat.completions.create({ model, messages, max_tokens: maxTokens, temperature: 0, stream: true }))
    deltas += chunk.choices[0]?.delta?.content ?? "";
  same("streamed chat completion", deltas, check.chat.expected);
}
console.log("ok: the openai client's completions equal shardpipe generate");
