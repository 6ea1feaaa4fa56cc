using System.Buffers.Binary;
using System.Text;
using ShardPipe.Actors.Transport;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Fuzz;

/// <summary>
/// Every parser that reads outside input, fuzzed (<see cref="FuzzEngine"/>): it returns data or a typed error, never
/// another exception, a runaway allocation or a hang. The suite runs a few hundred cases per parser;
/// <c>ops/fuzz.sh</c> runs as many as asked and records the counts.
/// </summary>
[Trait("Category", "Fuzz")]
public class ParserFuzzTests
{
    private static byte[] File(string path) => System.IO.File.ReadAllBytes(path);
    private static IEnumerable<string> ModelFiles(string name) => TestPaths.ModelNames.Select(m => Path.Combine(TestPaths.Model(m), name)).Where(System.IO.File.Exists);

    [Fact]
    public void Safetensors_header() =>
        FuzzEngine.Run("safetensors-header", new[] { Checkpoints.ReaderFuzzTests.Valid }, Checkpoints.ReaderFuzzTests.DataOrTypedError, FuzzEngine.Cases());

    [Fact]
    public void Shard_index() =>
        FuzzEngine.Run("shard-index", ModelFiles("model.safetensors.index.json").Select(File).ToList(), bytes =>
        {
            var index = ShardIndex.Parse("fuzz/model.safetensors.index.json", bytes);
            return index is not null;
        }, FuzzEngine.Cases(), text: true);

    /// <summary>config.json (the pruned GPT-2's with its pruned_heads too): parsed, checked against the sanity limits, and built as the meta model, as every loader does.</summary>
    [Fact]
    public void Config_json() =>
        FuzzEngine.Run("config-json", ModelFiles("config.json").Append(Path.Combine(TestPaths.PrunedGpt2, "config.json")).Select(File).ToList(), bytes =>
        {
            var config = PretrainedConfig.Parse("fuzz/config.json", Encoding.UTF8.GetString(bytes));
            ConfigLimits.Check(config);
            using var model = AutoModel.FromConfig(config) as IDisposable;
            return true;
        }, FuzzEngine.Cases(4), text: true);

    /// <summary>A quantized config.json (GPTQ, AWQ, compressed-tensors): its quantization_config read and the quantized meta model built.</summary>
    [Fact]
    public void Quantized_config_json() =>
        FuzzEngine.Run("quantized-config-json", Directory.GetDirectories(Path.Combine(TestPaths.HfReference, "quantized"))
            .Select(d => File(Path.Combine(d, "config.json"))).ToList(), bytes =>
        {
            var config = PretrainedConfig.Parse("fuzz/config.json", Encoding.UTF8.GetString(bytes));
            ConfigLimits.Check(config);
            using var model = AutoModel.FromConfig(config) as IDisposable;
            return true;
        }, FuzzEngine.Cases(4), text: true);

    [Fact]
    public void Generation_config_json() =>
        FuzzEngine.Run("generation-config-json", ModelFiles("generation_config.json").Select(File).ToList(), bytes =>
        {
            if (PreTrainedModel.ParseGenerationConfig("fuzz/generation_config.json", Encoding.UTF8.GetString(bytes)) is { } o)
            {
                var stop = StopTokens.From(o);
                return stop.Eos.All(id => id >= 0);
            }
            return true;
        }, FuzzEngine.Cases(), text: true);

    /// <summary>Every wire message type; the first byte picks the manifest the bytes are decoded under.</summary>
    [Fact]
    public void Message_codec()
    {
        var types = MessageCodec.Types.OrderBy(t => t.Name).ToList();
        var manifests = types.Select(t => MessageCodec.Manifest(Messages.MessageCodecTests.Build(t, new Random(1)))).ToList();
        var corpus = types.Select((t, i) => new[] { (byte)i }.Concat(MessageCodec.Encode(Messages.MessageCodecTests.Build(t, new Random(i)))).ToArray()).ToList();
        FuzzEngine.Run("message-codec", corpus, bytes =>
        {
            if (bytes.Length == 0) return true;
            return MessageCodec.Decode(bytes[1..], manifests[bytes[0] % manifests.Count]) is IShardPipeMessage;
        }, FuzzEngine.Cases());
    }

    /// <summary>
    /// Chunk reassembly: the chunks of a large message, with their fields and order mutated (the bytes of the input
    /// pick which chunk and field, and the hostile value), interleaved with a second transfer.
    /// </summary>
    [Fact]
    public void Chunk_reassembly()
    {
        var big = new StageInput("r", 1, 0, new TensorPayload("F32", new long[] { 1, 1, 60_000 }, new byte[240_000]), null,
            new[] { new long[] { 1 } }, new[] { new long[] { 0 } }, "akka://x/user/y", null, 1, null);
        var chunks = Chunking.Split(big).Cast<MessageChunk>().ToList();
        var small = Chunking.Split(big with { RequestId = "s" }).Cast<MessageChunk>().ToList();
        // The input: a script of (op, chunk, value) triples; its seed is the order of the original chunks.
        var corpus = new List<byte[]> { Enumerable.Range(0, 48).Select(i => (byte)(i * 37)).ToArray(), new byte[12] };
        FuzzEngine.Run("chunk-reassembly", corpus, script =>
        {
            var assembler = new ChunkAssembler(maxMessageBytes: 1 << 20, maxOpenBytes: 1 << 20);
            var sequence = chunks.Concat(small).ToList();
            for (int i = 0; i + 2 < script.Length; i += 3)
            {
                int which = script[i + 1] % sequence.Count;
                var c = sequence[which];
                int v = BinaryPrimitives.ReadInt16LittleEndian(script.AsSpan(i + 1, 2));
                sequence[which] = (script[i] % 9) switch
                {
                    0 => c with { Count = v },
                    1 => c with { Sequence = v },
                    2 => c with { Crc32 = (uint)v },
                    3 => c with { Data = c.Data[..(Math.Abs(v) % (c.Data.Length + 1))] },
                    4 => c with { TransferId = "other" },
                    5 => c with { Manifest = v % 2 == 0 ? "gen" : "nope" },
                    6 => c with { Count = v * 100_000 },
                    7 => sequence[(which + 1) % sequence.Count], // a duplicate in place of a chunk
                    _ => c,
                };
            }
            object? result = null;
            foreach (var c in sequence)
            {
                try { result = assembler.Add(c) ?? result; }
                catch (ProtocolException) { } // refused: the transfer is dropped, the assembler lives on
            }
            return result is null or StageInput;
        }, FuzzEngine.Cases());
    }

    /// <summary>Activation-link frames as a listener reads them, each body decoded as the listener does.</summary>
    [Fact]
    public void Link_frames()
    {
        var ms = new MemoryStream();
        foreach (int n in new[] { 16, 768, 5000 })
        {
            var step = new StageInput($"r{n}", n, 1, new TensorPayload("F32", new long[] { 1, 1, n }, new byte[n * 4]), null,
                new[] { new long[] { 1 } }, new[] { new long[] { 2 } }, "akka://x/user/y", null, 1, null);
            ActivationLink.WriteFrame(ms, ActivationLink.Manifest, MessageCodec.Encode(step));
            // A merged step's outputs: several requests' steps and the requests that ended, as one frame.
            var state = new GenerationState(8, false, new long[] { 2 }, 0, new[] { false }, new SamplingSettings(true, 0, 0, 1, 0), null,
                new PromptRest(new[] { new long[] { 3, 4 } }, new[] { new long[] { 1, 1 } }, new[] { new long[] { 5, 6 } }, 2));
            ActivationLink.WriteFrame(ms, ActivationLink.BatchManifest, MessageCodec.Encode(new StageBatch(new[] { step, step with { RequestId = "b", Generation = state } }, new[] { "gone" })));
        }
        FuzzEngine.Run("link-frames", new[] { ms.ToArray() }, bytes =>
        {
            var reader = new ActivationLink.FrameReader(new MemoryStream(bytes), 1 << 20);
            while (reader.Next() is var (manifest, body, _))
                if (MessageCodec.Decode(body, manifest) is not (StageInput or StageBatch)) return false;
            return true;
        }, FuzzEngine.Cases(), cleanEnd: ex => ex is EndOfStreamException);
    }

    /// <summary>A bulk transfer's chunks as the receiving worker reads them into a tensor's storage.</summary>
    [Fact]
    public void Bulk_frames()
    {
        const int total = 5000, chunk = 2048;
        var data = Enumerable.Range(0, total).Select(i => (byte)(i * 7)).ToArray();
        var stream = new MemoryStream();
        for (int at = 0, seq = 0; at < total; at += chunk, seq++)
        {
            int n = Math.Min(chunk, total - at);
            var header = new byte[8];
            BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)seq);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), (uint)n);
            stream.Write(header);
            stream.Write(data, at, n);
            var trailer = new byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(trailer, System.IO.Hashing.XxHash3.HashToUInt64(data.AsSpan(at, n)));
            stream.Write(trailer);
        }
        var offer = new BulkOffer("t", "fuzz", 1, new byte[16], "U8", new long[] { total }, total, chunk, 4);
        FuzzEngine.Run("bulk-frames", new[] { stream.ToArray() }, bytes =>
        {
            var into = new byte[total];
            BulkChannel.ReceiveChunks(new ReadOnlyDuplex(bytes), offer, into, "'fuzz'");
            return into.AsSpan().SequenceEqual(data); // accepted only when every chunk passed its checksum
        }, FuzzEngine.Cases());
    }

    /// <summary>A side channel's opening as its listener reads it from whoever connects.</summary>
    [Fact]
    public void Side_channel_opening()
    {
        var hello = SideChannel.Hello(ActivationLink.Magic, new byte[16]);
        FuzzEngine.Run("side-channel-opening", new[] { hello }, bytes =>
        {
            string? token = SideChannel.AcceptHello(new ReadOnlyDuplex(bytes), ActivationLink.Magic, "activation link");
            return token is null || token.Length == 32;
        }, FuzzEngine.Cases(), cleanEnd: ex => ex is EndOfStreamException);
    }

    [Fact]
    public void Tokenizer_json()
    {
        var files = Directory.GetFiles(Path.Combine(TestPaths.HfReference, "tokenizer_json"), "tokenizer.json", SearchOption.AllDirectories);
        using var tmp = new TempDir();
        string path = tmp.File("tokenizer.json");
        FuzzEngine.Run("tokenizer-json", files.Select(File).ToList(), bytes =>
        {
            System.IO.File.WriteAllBytes(path, bytes);
            var t = TokenizerJson.Load(path);
            var ids = t.Encode("Hello world, ünïcode 🙂", addSpecialTokens: true).Select(x => x.Id).ToList();
            _ = t.Decode(ids, skipSpecialTokens: false);
            return true;
        }, FuzzEngine.Cases(4), text: true);
    }

    [Fact]
    public void Sentencepiece_model()
    {
        using var tmp = new TempDir();
        string path = tmp.File("tokenizer.model");
        FuzzEngine.Run("sentencepiece-model", new[] { File(Path.Combine(TestPaths.HfReference, "tokenizer_spm", "tokenizer.model")) }, bytes =>
        {
            System.IO.File.WriteAllBytes(path, bytes);
            var m = SentencePieceModel.Load(path);
            var pieces = m.Encode("Hello world, ünïcode 🙂");
            _ = m.Decode(pieces.Select(p => p.Piece).ToList());
            return true;
        }, FuzzEngine.Cases(4));
    }

    /// <summary>Reads from fixed bytes; writes (acknowledgements, refusals) go nowhere.</summary>
    private sealed class ReadOnlyDuplex(byte[] bytes) : Stream
    {
        private readonly MemoryStream _in = new(bytes, writable: false);
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => _in.Read(buffer, offset, count);
        public override int Read(Span<byte> buffer) => _in.Read(buffer);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) { }
        public override void Write(ReadOnlySpan<byte> buffer) { }
    }
}
