using Akka.Actor;
using ShardPipe.Actors.Membership;

namespace ShardPipe.Actors.Client;

/// <summary>The nodes a client may reach the cluster through: <c>HOST:PORT[,HOST:PORT…]</c>, tried in order.</summary>
public static class ContactPoints
{
    public static IReadOnlyList<Address> Parse(string spec)
    {
        var result = new List<Address>();
        foreach (var part in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int colon = part.LastIndexOf(':');
            if (colon <= 0 || !int.TryParse(part[(colon + 1)..], out int port) || port is < 1 or > 65535)
                throw new InvalidInputException($"--cluster '{part}': a contact point is HOST:PORT (a list is comma-separated)");
            result.Add(new Address("akka.tcp", Roles.SystemName, part[..colon].Trim('[', ']'), port));
        }
        if (result.Count == 0) throw new InvalidInputException("--cluster names no contact point (HOST:PORT[,HOST:PORT…])");
        return result;
    }
}
