using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;
using ShardPipe.Modeling.Chat;

namespace ShardPipe.Host.Serving;

/// <summary>
/// vLLM's tokenizer endpoints. <c>POST /tokenize</c> takes <c>{"prompt": text, "add_special_tokens": true}</c> or
/// <c>{"messages": [...], "add_generation_prompt": true, "continue_final_message", "tools", "chat_template_kwargs",
/// "add_special_tokens": false}</c> (the chat prompt, as /v1/chat/completions builds it) and answers
/// <c>{"count", "max_model_len", "tokens", "token_strs"}</c> (token_strs when <c>return_token_strs</c>).
/// <c>POST /detokenize</c> takes <c>{"tokens": [ids]}</c> and answers <c>{"prompt": text}</c>.
/// </summary>
public sealed partial class OpenAiServer
{
    private async Task Tokenize(HttpContext ctx)
    {
        if (await ReadBody(ctx) is not JsonObject o) throw OpenAiException.Invalid("the request body must be a JSON object", null);
        CheckModel(o);
        bool strs = CompletionRequest.Bool(o, "return_token_strs") ?? false;
        string text;
        bool addSpecial;
        if (o["messages"] is not null)
        {
            var chat = ChatRequest.Parse(WithModel(o), _settings.MaxTokens);
            text = _chat.Render(chat.Input);
            addSpecial = CompletionRequest.Bool(o, "add_special_tokens") ?? false;
        }
        else if (o["prompt"] is JsonValue p && p.TryGetValue(out string? prompt))
        {
            text = prompt;
            addSpecial = CompletionRequest.Bool(o, "add_special_tokens") ?? true;
        }
        else throw OpenAiException.Invalid("give 'prompt' (a string) or 'messages'", "prompt");
        var encoding = _tokenizer.Encode(text, addSpecial);
        await Json(ctx, 200, new JsonObject
        {
            ["count"] = encoding.Ids.Length,
            ["max_model_len"] = _positions == long.MaxValue ? null : _positions,
            ["tokens"] = new JsonArray(encoding.Ids.Select(i => (JsonNode)i).ToArray()),
            ["token_strs"] = strs ? new JsonArray(encoding.Tokens.Select(t => (JsonNode)t).ToArray()) : null,
        });
    }

    private async Task Detokenize(HttpContext ctx)
    {
        if (await ReadBody(ctx) is not JsonObject o) throw OpenAiException.Invalid("the request body must be a JSON object", null);
        CheckModel(o);
        if (o["tokens"] is not JsonArray tokens) throw OpenAiException.Invalid("'tokens' must be a list of token ids", "tokens");
        var ids = tokens.Select(t => t is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out long id) && id >= 0 ? id
            : throw OpenAiException.Invalid("'tokens' must hold non-negative integer token ids", "tokens")).ToList();
        await Json(ctx, 200, new JsonObject { ["prompt"] = _tokenizer.Decode(ids) });
    }

    /// <summary>vLLM's tokenizer endpoints take 'model' optionally; when given it must be the served one.</summary>
    private void CheckModel(JsonObject o)
    {
        if (o["model"] is JsonValue m && m.TryGetValue(out string? model) && model != _settings.ModelId) throw OpenAiException.UnknownModel(model, _settings.ModelId);
    }

    private JsonObject WithModel(JsonObject o)
    {
        var copy = (JsonObject)o.DeepClone();
        copy["model"] = _settings.ModelId;
        copy.Remove("add_special_tokens");
        copy.Remove("return_token_strs");
        return copy;
    }
}
