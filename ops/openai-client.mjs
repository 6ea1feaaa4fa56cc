// The official `openai` npm client against `shardpipe serve`: a streamed and a non-streamed completion, each
// checked against the text `shardpipe generate --prompt … --greedy --json` printed for the same prompt.
// Usage: node ops/openai-client.mjs BASE_URL MODEL PROMPT MAX_TOKENS EXPECTED_TEXT_JSON   (run by ops/openai-check.sh)
import OpenAI from "openai";

const [baseURL, model, prompt, maxTokens, expectedJson] = process.argv.slice(2);
const expected = JSON.parse(expectedJson);
const client = new OpenAI({ baseURL, apiKey: "not-needed" });

const models = await client.models.list();
if (!models.data.some((m) => m.id === model)) throw new Error(`/v1/models does not list ${model}`);

const completion = await client.completions.create({ model, prompt, max_tokens: Number(maxTokens), temperature: 0 });
const text = completion.choices[0].text;
console.log(`completion: ${JSON.stringify(text)} (finish_reason ${completion.choices[0].finish_reason}, usage ${JSON.stringify(completion.usage)})`);
if (text !== expected) throw new Error(`completion text ${JSON.stringify(text)} differs from generate's ${JSON.stringify(expected)}`);

let streamed = "";
let pieces = 0;
const stream = await client.completions.create({ model, prompt, max_tokens: Number(maxTokens), temperature: 0, stream: true });
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.text ?? "";
  pieces++;
}
console.log(`streamed: ${JSON.stringify(streamed)} in ${pieces} events`);
if (streamed !== expected) throw new Error(`streamed text ${JSON.stringify(streamed)} differs from generate's ${JSON.stringify(expected)}`);
console.log("ok: the openai client's completions (streamed and not) equal shardpipe generate");
