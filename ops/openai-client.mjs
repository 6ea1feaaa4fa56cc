// The official `openai` npm client against `shardpipe serve`: a completion, a streamed completion and a chat
// completion (streamed too), each checked against the text `shardpipe generate --prompt … --greedy --json` printed
// for the same prompt (for chat: the chat template rendered with add_generation_prompt).
// Usage: node ops/openai-client.mjs CHECK.json, with
//   { "baseURL", "model", "prompt", "maxTokens", "expected", "chat": { "messages": [...], "expected" } | null,
//     "tools": { "messages", "tools", "name", "arguments", "answer" } | absent }
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

const toolsOnly = process.argv.includes("--tools-only");
const models = await client.models.list();
if (!models.data.some((m) => m.id === model)) throw new Error(`/v1/models does not list ${model}`);

if (!toolsOnly) {
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
}
if (check.tools) {
  // A chat completion with tools whose reply is a tool call comes back as tool_calls, streamed and not; the tool
  // result sent back gets an answer (the server's test hook injects the model's text: see check.tools.note).
  const { messages, tools, name, arguments: args, answer } = check.tools;
  const called = await client.chat.completions.create({ model, messages, tools, tool_choice: "auto", max_tokens: maxTokens });
  const choice = called.choices[0];
  if (choice.finish_reason !== "tool_calls") throw new Error(`finish_reason ${choice.finish_reason}, not tool_calls`);
  const call = choice.message.tool_calls?.[0];
  if (!call || call.type !== "function" || !call.id) throw new Error(`no tool call: ${JSON.stringify(choice.message)}`);
  same("tool call name", call.function.name, name);
  same("tool call arguments", JSON.stringify(JSON.parse(call.function.arguments)), JSON.stringify(args));
  const stream = await client.chat.completions.create({ model, messages, tools, max_tokens: maxTokens, stream: true });
  const calls = [];
  let finish = null, content = "";
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (!c) continue;
    content += c.delta?.content ?? "";
    for (const d of c.delta?.tool_calls ?? []) {
      calls[d.index] ??= { id: d.id, name: "", arguments: "" };
      calls[d.index].name += d.function?.name ?? "";
      calls[d.index].arguments += d.function?.arguments ?? "";
    }
    finish = c.finish_reason ?? finish;
  }
  if (finish !== "tool_calls") throw new Error(`streamed finish_reason ${finish}, not tool_calls`);
  same("streamed tool call name", calls[0]?.name, name);
  same("streamed tool call arguments", JSON.stringify(JSON.parse(calls[0].arguments)), JSON.stringify(args));
  same("streamed content before the call", content, "");
  const followUp = [...messages, choice.message, { role: "tool", tool_call_id: call.id, content: JSON.stringify({ temperature: 21 }) }];
  const answered = await client.chat.completions.create({ model, messages: followUp, tools, max_tokens: maxTokens });
  same("answer after the tool result", answered.choices[0].message.content, answer);
  same("answer finish_reason", answered.choices[0].finish_reason, "stop");
  console.log("ok: tool calls through the openai client");
}
console.log("ok: the openai client's completions equal shardpipe generate");
