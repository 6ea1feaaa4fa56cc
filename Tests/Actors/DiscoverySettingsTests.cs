using Akka.Configuration;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Settings;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary><c>shardpipe.discovery</c> / <c>shardpipe.management</c>: defaults, the Akka config they become, and typed errors naming the setting.</summary>
public class DiscoverySettingsTests
{
    private static Config Hocon(string text) => ConfigurationFactory.ParseString(text);

    [Fact]
    public void Defaults_are_seed_nodes_with_no_management_endpoint()
    {
        var s = DiscoverySettings.From(Hocon(""));
        Assert.Equal(DiscoveryMethod.None, s.Method);
        Assert.False(s.ManagementEnabled);
        var reference = ReferenceConfig.Over(Hocon(""));
        Assert.Same(reference, Discovery.Prepare(reference, "akka.tcp://shardpipe@127.0.0.1:4053", out _));
    }

    [Fact]
    public void Config_discovery_becomes_akka_management_bootstrap_and_akka_discovery_config()
    {
        var effective = ReferenceConfig.Over(Hocon(@"
akka.remote.dot-netty.tcp.hostname = 10.0.0.5
shardpipe.discovery { method = config, endpoints = [""10.0.0.5:8558"", ""10.0.0.6:8558""] }"));
        var config = Discovery.Prepare(effective, null, out var d);
        Assert.Equal(DiscoveryMethod.Config, d.Settings.Method);
        Assert.True(d.Settings.ManagementEnabled);
        Assert.Equal("10.0.0.5", config.GetString("akka.management.http.hostname"));
        Assert.Equal(8558, config.GetInt("akka.management.http.port"));
        Assert.Equal("config", config.GetString("akka.discovery.method"));
        Assert.Equal(new[] { "10.0.0.5:8558", "10.0.0.6:8558" }, config.GetStringList("akka.discovery.config.services.shardpipe.endpoints"));
        Assert.Equal(2, config.GetInt("akka.management.cluster.bootstrap.contact-point-discovery.required-contact-point-nr"));
        Assert.Equal("shardpipe", config.GetString("akka.management.cluster.bootstrap.contact-point-discovery.service-name"));
    }

    [Fact]
    public void Dns_and_kubernetes_methods_map_to_akka_discovery_methods()
    {
        var dns = Discovery.Prepare(ReferenceConfig.Over(Hocon("shardpipe.discovery { method = dns, service-name = shardpipe.default.svc.cluster.local }")), null, out _);
        Assert.Equal("shardpipe-dns", dns.GetString("akka.discovery.method"));
        Assert.Equal(typeof(DnsDiscovery), Type.GetType(dns.GetString("akka.discovery.shardpipe-dns.class")));
        Assert.Equal(8558, dns.GetInt("akka.management.cluster.bootstrap.contact-point.fallback-port"));
        var k8s = Discovery.Prepare(ReferenceConfig.Over(Hocon("shardpipe.discovery { method = kubernetes-api, required-contact-points = 3 }\nshardpipe.management.hostname = \"0.0.0.0\"")), null, out _);
        Assert.Equal("kubernetes-api", k8s.GetString("akka.discovery.method"));
        Assert.NotNull(Type.GetType("Akka.Discovery.KubernetesApi.KubernetesApiServiceDiscovery, Akka.Discovery.KubernetesApi")); // the class its reference.conf names
        Assert.Equal("app={0}", k8s.GetString("akka.discovery.kubernetes-api.pod-label-selector"));
        Assert.Equal("management", k8s.GetString("akka.management.cluster.bootstrap.contact-point-discovery.port-name"));
        Assert.Equal("0.0.0.0", k8s.GetString("akka.management.http.hostname"));
    }

    [Fact]
    public void Management_without_discovery_serves_the_probes_and_starts_no_bootstrap()
    {
        var config = Discovery.Prepare(ReferenceConfig.Over(Hocon("shardpipe.management { enabled = on, port = 9000 }")), null, out var d);
        Assert.False(d.Settings.Enabled);
        Assert.True(d.Settings.ManagementEnabled);
        Assert.Equal(9000, config.GetInt("akka.management.http.port"));
        Assert.False(config.HasPath("akka.discovery.method") && config.GetString("akka.discovery.method") == "config");
    }

    [Theory]
    [InlineData("shardpipe.discovery.method = gossip", "shardpipe.discovery.method")]
    [InlineData("shardpipe.discovery.method = config", "shardpipe.discovery.endpoints")]
    [InlineData("shardpipe.discovery { method = config, endpoints = [\"10.0.0.5\"] }", "shardpipe.discovery.endpoints")]
    [InlineData("shardpipe.discovery { method = config, endpoints = [\"10.0.0.5:99999\"] }", "shardpipe.discovery.endpoints")]
    [InlineData("shardpipe.discovery { method = config, endpoints = [\"a:1\"], required-contact-points = 2 }", "shardpipe.discovery.required-contact-points")]
    [InlineData("shardpipe.discovery { method = dns, required-contact-points = 0 }", "shardpipe.discovery.required-contact-points")]
    [InlineData("shardpipe.discovery { method = dns, required-contact-points = many }", "shardpipe.discovery.required-contact-points")]
    [InlineData("shardpipe.discovery { method = dns, service-name = \"\" }", "shardpipe.discovery.service-name")]
    [InlineData("shardpipe.discovery { method = dns, service-name = \"a b\" }", "shardpipe.discovery.service-name")]
    [InlineData("shardpipe.discovery { method = dns, stable-margin = 0s }", "shardpipe.discovery.stable-margin")]
    [InlineData("shardpipe.discovery { method = dns, interval = soon }", "shardpipe.discovery.interval")]
    [InlineData("shardpipe.discovery { method = kubernetes-api, pod-label-selector = \"\" }", "shardpipe.discovery.pod-label-selector")]
    [InlineData("shardpipe.discovery { method = kubernetes-api, port-name = \"\" }", "shardpipe.discovery.port-name")]
    [InlineData("shardpipe.discovery.method = dns\nshardpipe.management.enabled = off", "shardpipe.management.enabled")]
    [InlineData("shardpipe.discovery.method = dns\nshardpipe.management.port = 0", "shardpipe.management.port")]
    [InlineData("shardpipe.management { enabled = sometimes }", "shardpipe.management.enabled")]
    [InlineData("shardpipe.management { enabled = on, port = 70000 }", "shardpipe.management.port")]
    [InlineData("shardpipe.discovery.method = dns\nakka.cluster.seed-nodes = [\"akka.tcp://shardpipe@10.0.0.5:4053\"]", "akka.cluster.seed-nodes")]
    public void Bad_settings_are_typed_errors_naming_the_setting(string hocon, string setting)
    {
        var ex = Assert.Throws<InvalidInputException>(() => Discovery.Prepare(ReferenceConfig.Over(Hocon(hocon)), null, out _));
        Assert.Contains(setting, ex.Message);
    }

    [Fact]
    public void Discovery_and_join_together_are_refused()
    {
        var ex = Assert.Throws<InvalidInputException>(() =>
            Discovery.Prepare(ReferenceConfig.Over(Hocon("shardpipe.discovery.method = dns")), "akka.tcp://shardpipe@10.0.0.5:4053", out _));
        Assert.Contains("--join", ex.Message);
    }

    [Fact]
    public void A_bad_discovery_setting_stops_a_node_before_its_actor_system_starts()
    {
        var ex = Assert.Throws<InvalidInputException>(() => ShardPipeNode.Start(ShardPipeNode.LoopbackConfig("n", new[] { "worker" }, new[] { ("cpu", 1L << 20) },
            extra: "shardpipe.discovery { method = config, endpoints = [] }")));
        Assert.Contains("shardpipe.discovery.endpoints", ex.Message);
    }

    [Fact]
    public void The_ops_sample_is_valid()
    {
        string file = Path.Combine(TestPaths.RepoRoot, "ops", "node-discovery.conf");
        var config = Discovery.Prepare(ReferenceConfig.Over(ConfigurationFactory.ParseString(File.ReadAllText(file))), null, out var d);
        Assert.Equal(DiscoveryMethod.Config, d.Settings.Method);
        Assert.Equal("config", config.GetString("akka.discovery.method"));
        Assert.Empty(config.GetStringList("akka.cluster.seed-nodes"));
    }
}
