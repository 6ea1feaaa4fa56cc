// llama.cpp (through node-llama-cpp 3.21.1, prebuilt CPU binaries) on a GGUF file, for `shardpipe bench vs-llamacpp`
// and its tests. Prints one JSON object on stdout.
//
//   node run.mjs --model M.gguf [--threads 2] [--greedy 1,306,4658 --new 16] [--decode 64] [--prefill 512] [--rounds 3] [--f32-cache]
//
// --greedy IDS --new N: greedy continuation (temperature 0) of the given token ids, N new tokens, EOS not a stop.
// --decode M: decode tokens/s, M new tokens after an 8-token prompt, (M − 1) / the time after the first token (best of
//             --rounds), as ShardPipe's TokenGenerator counts them.
// --prefill P: prompt tokens/s for a P-token prompt evaluated in one batch (best of --rounds).
// --f32-cache: a float32 KV cache (the default is llama.cpp's F16), for comparing float32 logits.
// Run it from a folder where `npm install node-llama-cpp@3.21.1` was done (NODE_PATH does not apply to ES modules).
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const args = process.argv.slice(2);
const opt = (name, fallback) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : fallback; };
const flag = name => args.includes(name);
const modelPath = opt("--model");
if (!modelPath) { console.error("error: --model FILE.gguf is required"); process.exit(2); }
const threads = Number(opt("--threads", "2"));
const rounds = Number(opt("--rounds", "3"));
const greedy = opt("--greedy");
const newTokens = Number(opt("--new", "16"));
const decode = Number(opt("--decode", "0"));
const prefill = Number(opt("--prefill", "0"));

const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads, logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath, gpuLayers: 0, useMmap: true });
const cacheTypes = flag("--f32-cache") ? { experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32" } : {};
const context = await model.createContext({
    contextSize: Math.max(1024, prefill + 64), batchSize: Math.max(512, prefill), sequences: 1, threads: { ideal: threads, min: threads }, ...cacheTypes,
});
const sequence = context.getSequence();
const vocab = model.fileInfo.metadata.llama?.vocab_size ?? 256;
const out = { model: modelPath, threads, llama_cpp_release: llama.llamaCppRelease?.release ?? null };

async function generate(prompt, n, onFirst) {
    await sequence.clearHistory();
    const tokens = [];
    for await (const token of sequence.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
        tokens.push(token);
        if (tokens.length === 1 && onFirst) onFirst();
        if (tokens.length >= n) break;
    }
    return tokens;
}

if (greedy) {
    const prompt = greedy.split(",").map(Number);
    out.greedy_tokens = await generate(prompt, newTokens);
}

if (decode > 1) {
    const ids = [1, 306, 4658, 278, 6593, 310, 2834, 338].map(t => t % vocab);
    let best = 0;
    const all = [];
    for (let r = 0; r < rounds + 1; r++) {
        let t0 = 0;
        const tokens = await generate(ids, decode, () => { t0 = performance.now(); });
        const tps = (tokens.length - 1) / ((performance.now() - t0) / 1000);
        if (r > 0) { all.push(tps); best = Math.max(best, tps); } // the first round warms up
    }
    out.decode_tokens = decode;
    out.decode_tokens_per_s = best;
    out.decode_tokens_per_s_rounds = all;
}

if (prefill > 0) {
    const prompt = Array.from({ length: prefill }, (_, i) => (i * 7919 + 13) % vocab);
    let best = 0;
    const all = [];
    for (let r = 0; r < rounds + 1; r++) {
        await sequence.clearHistory();
        const t0 = performance.now();
        await sequence.evaluateWithoutGeneratingNewTokens(prompt);
        const tps = prefill / ((performance.now() - t0) / 1000);
        if (r > 0) { all.push(tps); best = Math.max(best, tps); }
    }
    out.prefill_tokens = prefill;
    out.prefill_tokens_per_s = best;
    out.prefill_tokens_per_s_rounds = all;
}

await context.dispose();
await model.dispose();
console.log(JSON.stringify(out));
