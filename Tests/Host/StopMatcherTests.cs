using ShardPipe.Host.Serving;

namespace ShardPipe.Tests.Host;

/// <summary>OpenAI stop strings over streamed pieces, without a server: what is released, held back, cut.</summary>
public class StopMatcherTests
{
    [Fact]
    public void Without_stop_strings_every_piece_passes_at_once()
    {
        var m = new StopMatcher(Array.Empty<string>());
        Assert.Equal("ab", m.Add("ab"));
        Assert.Equal("c", m.Add("c"));
        Assert.Equal("", m.Flush());
        Assert.False(m.Stopped);
    }

    [Fact]
    public void A_stop_string_split_across_pieces_is_found_and_never_released()
    {
        var m = new StopMatcher(new[] { "END" });
        Assert.Equal("hello", m.Add("hello E")); // " E" could start "END": held
        Assert.Equal(" ", m.Add("N"));
        Assert.False(m.Stopped);
        Assert.Equal("", m.Add("Dmore"));
        Assert.True(m.Stopped);
        Assert.Equal("", m.Add("after")); // nothing once stopped
        Assert.Equal("", m.Flush());
    }

    [Fact]
    public void The_text_before_the_stop_is_released_in_full_whichever_pieces_it_came_in()
    {
        foreach (var pieces in new[] { new[] { "one two STOP three" }, new[] { "one ", "two S", "TO", "P three" }, "one two STOP three".Select(c => c.ToString()).ToArray() })
        {
            var m = new StopMatcher(new[] { "STOP", "zzz" });
            string text = string.Concat(pieces.Select(m.Add)) + m.Flush();
            Assert.Equal("one two ", text);
            Assert.True(m.Stopped);
        }
    }

    [Fact]
    public void The_earliest_of_several_stop_strings_wins()
    {
        var m = new StopMatcher(new[] { "cd", "b" });
        Assert.Equal("a", m.Add("abcd"));
        Assert.True(m.Stopped);
    }

    [Fact]
    public void A_tail_that_could_start_a_stop_string_is_held_until_it_cannot_then_flushed()
    {
        var m = new StopMatcher(new[] { "###" });
        Assert.Equal("ab", m.Add("ab##")); // "##" may become "###"
        Assert.Equal("#", m.Add("x")); // "#x" still holds as much as a stop string could need
        Assert.Equal("#x", m.Flush());
        Assert.False(m.Stopped);
    }

    [Fact]
    public void A_surrogate_pair_is_never_split_between_released_and_held_text()
    {
        var m = new StopMatcher(new[] { "xy" });
        string released = m.Add("a\U0001F600"); // the emoji is two UTF-16 units; one unit is held back
        Assert.False(released.Length > 0 && char.IsHighSurrogate(released[^1]));
        Assert.Equal("a\U0001F600", released + m.Flush());
    }
}
