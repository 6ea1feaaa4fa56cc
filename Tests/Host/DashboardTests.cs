using System.Diagnostics;
using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;
using ShardPipe.Actors.Hosting;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// The dashboard at <c>/</c> in a real headless browser (Debian's chromium with chromium-driver, driven through
/// Selenium; nothing is downloaded): loaded from a server over an embedded 3-node cluster, it shows every node and
/// every module of the device map with its node and device, rendered from a poll of /status within 2 s.
/// </summary>
[Collection("cluster")]
public class DashboardTests
{
    private const string Chromium = "/usr/bin/chromium", Driver = "/usr/bin/chromedriver";

    [Fact]
    public async Task The_dashboard_shows_every_node_and_every_module_with_its_node_and_device()
    {
        Assert.True(File.Exists(Chromium) && File.Exists(Driver), $"{Chromium} and {Driver} are needed (apt-get install chromium chromium-driver; .ci/run installs them)");
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp);
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster);
        await using var _ = server;
        http.Dispose();
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));

        var options = new ChromeOptions { BinaryLocation = Chromium };
        options.AddArguments("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000");
        using var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(Driver)!, Path.GetFileName(Driver));
        service.SuppressInitialDiagnosticInformation = true;
        using var browser = new ChromeDriver(service, options, TimeSpan.FromSeconds(60));
        browser.Navigate().GoToUrl(server.Address);
        var clock = Stopwatch.StartNew();
        while (browser.FindElements(By.CssSelector("[data-module]")).Count < status.DeviceMap.Length)
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"the device map was not rendered within 2 s of the page loading: {browser.FindElement(By.TagName("body")).Text}");
            await Task.Delay(25);
        }

        // The page re-renders from /status every second: an element found just before a re-render is stale when read,
        // so each read finds its element again until it reads it whole.
        string Text(By by)
        {
            for (int attempt = 0; ; attempt++)
            {
                try { return browser.FindElement(by).Text; }
                catch (StaleElementReferenceException) when (attempt < 20) { }
            }
        }
        foreach (var node in status.Nodes)
            Assert.Contains(node, Text(By.CssSelector($"[data-node='{node}']")));
        Assert.Equal(3, status.Nodes.Length);
        foreach (var entry in status.DeviceMap)
        {
            string cell = Text(By.CssSelector($"[data-module='{entry.Module}']"));
            Assert.Contains(entry.Module, cell);
            Assert.Contains(entry.Device, cell);
        }
        Assert.Contains(status.DeviceMap, e => e.Module == "model.layers.0");
        foreach (var d in status.Devices)
            Assert.Contains(d.Device, Text(By.CssSelector($"tr[data-device='{d.Device}']")));
        Assert.Equal("ready", Text(By.Id("state")));
        // It keeps polling: the time of the last update changes within two seconds.
        string updated = Text(By.Id("updated"));
        await Eventually.True(() => Text(By.Id("updated")) != updated, TimeSpan.FromSeconds(3), "the page refreshes from /status");
    }
}
