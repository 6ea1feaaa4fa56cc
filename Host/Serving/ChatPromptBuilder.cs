using System.Text.RegularExpressions;
using ShardPipe.Modeling.Chat;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Serving;

/// <summary>
/// A chat request's prompt, as transformers' <c>apply_chat_template(..., tokenize=True)</c> and vLLM make it: the
/// model's chat template (<see cref="ChatTemplates.Find"/>) rendered with the special tokens, tools and
/// chat_template_kwargs, then encoded WITHOUT adding special tokens (the template writes its own BOS). Content given as
/// text parts stays a list for templates that iterate it and is joined with "\n" for those that print it (vLLM's
/// "string" content format). A template error is a 400 naming the template and line.
/// </summary>
public sealed class ChatPromptBuilder
{
    private static readonly Regex IteratesContent = new(@"\bfor\s+\w+\s+in\s+[\w.\[\]'""]*content\b", RegexOptions.Compiled);
    private readonly ModelTokenizer _tokenizer;
    private readonly ChatTemplates? _templates;
    private readonly string? _problem;
    private readonly Dictionary<string, object?> _special;

    public ChatPromptBuilder(string modelFolder, ModelTokenizer tokenizer)
    {
        _tokenizer = tokenizer;
        _special = ChatTemplates.SpecialTokens(tokenizer.Config);
        try
        {
            _templates = ChatTemplates.Find(modelFolder);
            if (_templates is null) _problem = "the model has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template); use /v1/completions";
        }
        catch (ChatTemplateException ex) { _problem = $"the model's chat template cannot be used: {ex.Message}"; }
    }

    public string Render(ChatInput input)
    {
        if (_templates is null) throw OpenAiException.Invalid(_problem!, "messages");
        var template = _templates.Select(input.Tools is not null);
        if (!IteratesContent.IsMatch(template.Source)) input = input with { Messages = input.Messages.Select(JoinTextParts).ToList() };
        try { return ChatTemplates.Apply(template, input, _special); }
        catch (ChatTemplateException ex) { throw OpenAiException.Invalid(ex.Message, "messages"); }
        catch (InvalidInputException ex) { throw OpenAiException.Invalid(ex.Message, "messages"); }
    }

    /// <summary>The rendered prompt's ids: encoded without special tokens, as apply_chat_template does.</summary>
    public long[] Encode(string rendered) => _tokenizer.Encode(rendered, addSpecialTokens: false).Ids.Select(i => (long)i).ToArray();

    private static object? JoinTextParts(object? message)
    {
        if (message is not Dictionary<string, object?> m || m.GetValueOrDefault("content") is not List<object?> parts) return message;
        var copy = new Dictionary<string, object?>(m)
        {
            ["content"] = string.Join("\n", parts.OfType<Dictionary<string, object?>>().Select(p => p.GetValueOrDefault("text") as string ?? "")),
        };
        return copy;
    }
}
