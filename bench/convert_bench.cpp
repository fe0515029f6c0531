// Convert throughput against plain file-copy speed on the same machine, in the same run.
//
//   convert_bench [DIR] [SIZE] [--layout row|column] [--keep]
//
// Writes a synthetic Mixtral-shaped checkpoint (bf16; hidden 2048, expert width 5632, 8 experts, vocab 32000,
// as many layers as SIZE needs; default 2G) into a fresh directory under DIR (default /tmp), then measures
//   copy:    read + write of model.safetensors with a 4 MiB buffer, fsync at the end;
//   convert: doppler's HF -> RDRR conversion of the checkpoint (64M shards, SHA-256, fsyncs, atomic publish);
// both with the source in the page cache (it was just written), and prints MB/s of each and their ratio.
// Everything it wrote is deleted at the end (unless --keep).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "core/error.h"
#include "core/fs_util.h"
#include "core/size.h"

using namespace doppler;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t bytes() const {
    uint64_t n = 2;
    for (auto d : shape) n *= uint64_t(d);
    return n;
  }
};

// Mixtral tensor list for `layers` layers.
std::vector<Tensor> mixtralTensors(int64_t layers, int64_t H, int64_t I, int64_t E, int64_t V, int64_t kv) {
  std::vector<Tensor> t;
  t.push_back({"model.embed_tokens.weight", {V, H}});
  for (int64_t L = 0; L < layers; L++) {
    std::string p = "model.layers." + std::to_string(L) + ".";
    t.push_back({p + "input_layernorm.weight", {H}});
    t.push_back({p + "self_attn.q_proj.weight", {H, H}});
    t.push_back({p + "self_attn.k_proj.weight", {kv, H}});
    t.push_back({p + "self_attn.v_proj.weight", {kv, H}});
    t.push_back({p + "self_attn.o_proj.weight", {H, H}});
    t.push_back({p + "post_attention_layernorm.weight", {H}});
    t.push_back({p + "block_sparse_moe.gate.weight", {E, H}});
    for (int64_t e = 0; e < E; e++) {
      std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      t.push_back({q + "w1.weight", {I, H}});
      t.push_back({q + "w2.weight", {H, I}});
      t.push_back({q + "w3.weight", {I, H}});
    }
  }
  t.push_back({"model.norm.weight", {H}});
  t.push_back({"lm_head.weight", {V, H}});
  return t;
}

void writeCheckpoint(const std::string& dir, const std::vector<Tensor>& tensors, int64_t layers, int64_t H, int64_t I,
                     int64_t E, int64_t V, int64_t kv) {
  nlohmann::json cfg = {{"architectures", {"MixtralForCausalLM"}},
                        {"model_type", "mixtral"},
                        {"hidden_size", H},
                        {"intermediate_size", I},
                        {"num_hidden_layers", layers},
                        {"num_attention_heads", H / 128},
                        {"num_key_value_heads", kv / 128},
                        {"head_dim", 128},
                        {"num_local_experts", E},
                        {"num_experts_per_tok", 2},
                        {"vocab_size", V},
                        {"max_position_embeddings", 4096},
                        {"rms_norm_eps", 1e-5},
                        {"rope_theta", 1e6},
                        {"tie_word_embeddings", false},
                        {"torch_dtype", "bfloat16"}};
  writeFile(dir + "/config.json", cfg.dump(2));
  writeFile(dir + "/tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}");
  nlohmann::ordered_json h;
  h["__metadata__"] = {{"format", "pt"}};
  uint64_t at = 0;
  for (const auto& t : tensors) {
    h[t.name] = {{"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {at, at + t.bytes()}}};
    at += t.bytes();
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs += ' ';
  FileWriter f(dir + "/model.safetensors");
  uint64_t n = hs.size();
  f.write(&n, 8);
  f.write(hs.data(), hs.size());
  // Random-looking bf16 values (small normals), 8 MiB at a time.
  const size_t kChunk = size_t(8) << 20;
  std::unique_ptr<uint16_t[]> buf(new uint16_t[kChunk / 2]);
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (uint64_t done = 0; done < at;) {
    size_t k = size_t(std::min<uint64_t>(kChunk, at - done));
    for (size_t i = 0; i < k / 2; i++) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      buf[i] = uint16_t(0x3c00 | (s & 0x3ff) | ((s >> 20) & 0x8000));  // |x| in [2^-7, 2^-6)
    }
    f.write(buf.get(), k);
    done += k;
  }
  f.close();
}

// Plain copy: read + write, 4 MiB buffer, fsync at the end.
double copySeconds(const std::string& from, const std::string& to) {
  double t0 = now();
  int in = ::open(from.c_str(), O_RDONLY);
  check(in >= 0, "{}: cannot open", from);
  FileWriter out(to);
  const size_t kBuf = size_t(4) << 20;
  std::unique_ptr<char[]> buf(new char[kBuf]);
  for (;;) {
    ssize_t n = ::read(in, buf.get(), kBuf);
    check(n >= 0, "{}: read error", from);
    if (n == 0) break;
    out.write(buf.get(), size_t(n));
  }
  ::close(in);
  out.close();  // fsync
  return now() - t0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string base = "/tmp", layout = "row";
    uint64_t target = uint64_t(2) << 30;
    bool keep = false;
    std::vector<std::string> pos;
    for (int i = 1; i < argc; i++) {
      std::string a = argv[i];
      if (a == "--layout" && i + 1 < argc) layout = argv[++i];
      else if (a == "--keep") keep = true;
      else pos.push_back(a);
    }
    if (pos.size() > 0) base = pos[0];
    if (pos.size() > 1) target = parseSize(pos[1], "SIZE");

    const int64_t H = 2048, I = 5632, E = 8, V = 32000, kv = 512;
    uint64_t perLayer = 0, fixed = 0;
    for (const auto& t : mixtralTensors(1, H, I, E, V, kv)) (t.name.find("layers.") != std::string::npos ? perLayer : fixed) += t.bytes();
    int64_t layers = std::max<int64_t>(1, int64_t((target > fixed ? target - fixed + perLayer - 1 : 0) / perLayer));
    auto tensors = mixtralTensors(layers, H, I, E, V, kv);
    uint64_t total = 0;
    for (const auto& t : tensors) total += t.bytes();

    char tmpl[4096];
    std::snprintf(tmpl, sizeof tmpl, "%s/doppler-convert-bench-XXXXXX", base.c_str());
    check(::mkdtemp(tmpl) != nullptr, "{}: cannot create a directory", base);
    std::string dir = tmpl;
    std::string src = dir + "/hf";
    ::mkdir(src.c_str(), 0755);
    struct Cleanup {
      std::string d;
      bool keep;
      ~Cleanup() {
        if (!keep) removeAll(d);
      }
    } cleanup{dir, keep};

    std::printf("checkpoint: Mixtral-shaped, %lld layers, hidden %lld, %lld experts of width %lld, bf16: %s (%llu bytes) in %s\n",
                (long long)layers, (long long)H, (long long)E, (long long)I, formatSize(total).c_str(),
                (unsigned long long)total, dir.c_str());
    double t0 = now();
    writeCheckpoint(src, tensors, layers, H, I, E, V, kv);
    std::printf("generated in %.1f s\n", now() - t0);

    uint64_t fileBytes = fileSize(src + "/model.safetensors");
    double copyS = copySeconds(src + "/model.safetensors", dir + "/copy.bin");
    removeAll(dir + "/copy.bin");
    double copyMBs = double(fileBytes) / 1e6 / copyS;
    std::printf("copy    : %.2f s, %.0f MB/s (read + write, 4 MiB buffer, fsync)\n", copyS, copyMBs);

    ConvertOptions o;
    o.layout = layout == "column" ? Layout::Column : Layout::Row;
    ConvertResult r = convertHfToRdrr(src, dir + "/out.rdrr", o);
    double convMBs = double(r.tensorBytes) / 1e6 / r.seconds;
    std::printf("convert : %.2f s, %.0f MB/s (layout %s, %zu shards, SHA-256, fsync, atomic rename)\n", r.seconds,
                convMBs, layout.c_str(), r.manifest.shards.size());
    std::printf("ratio   : %.2f of copy speed\n", convMBs / copyMBs);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "convert_bench: error: %s\n", e.what());
    return 1;
  }
}
