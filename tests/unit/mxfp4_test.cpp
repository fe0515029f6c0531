// Issue #9: MXFP4 experts (the released gpt-oss checkpoint form): block decoding against the E2M1 table and
// E8M0 scales, the matmul that dequantises inside the kernel, and a synthetic gpt_oss checkpoint in MXFP4 form
// (made here from the bf16 fixture) that converts, stays MXFP4 in RDRR and in memory, and runs with the same
// logits as its dequantised twin (a bf16 checkpoint holding exactly the dequantised values).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/backend.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/mxfp4.h"
#include "convert/convert.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/eval.h"
#include "format/safetensors.h"
#include "test_util.h"

using namespace doppler;
using doppler::test::TempDir;

namespace {

// The OCP E2M1 values (sign bit 3, exponent bits 2..1, mantissa bit 0), written out independently of the kernel.
double e2m1(int code) {
  const int sign = code >> 3, exp = (code >> 1) & 3, man = code & 1;
  const double mag = exp == 0 ? 0.5 * man : std::ldexp(1.0 + 0.5 * man, exp - 1);
  return sign ? -mag : mag;
}

TEST(Mxfp4, E2M1TableMatchesTheFormat) {
  const double expect[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
  for (int c = 0; c < 16; c++) {
    EXPECT_EQ(double(cpu::kE2M1Values[c]), expect[c]) << c;
    EXPECT_EQ(e2m1(c), expect[c]) << c;
  }
  EXPECT_TRUE(std::signbit(cpu::kE2M1Values[8]));
}

// Every decoded value equals table[code] * 2^(scale - 127), low nibble first.
TEST(Mxfp4, DequantisedBlocksEqualE2M1TimesE8M0) {
  std::mt19937 rng(7);
  std::vector<uint8_t> blocks;
  std::vector<uint8_t> scales = {127, 128, 0, 1, 120, 130, 150, 100, 254};
  for (int i = 0; i < 40; i++) scales.push_back(uint8_t(90 + rng() % 80));
  for (uint8_t s : scales) {
    blocks.push_back(s);
    for (int i = 0; i < 16; i++) blocks.push_back(uint8_t(rng()));
  }
  const int64_t nb = int64_t(scales.size());
  std::vector<float> out(size_t(nb * 32));
  cpu::dequantizeMxfp4(blocks.data(), nb, 32, out.data());
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = blocks.data() + b * 17;
    float one[32];
    cpu::dequantizeMxfp4Block(blk, one);
    for (int i = 0; i < 32; i++) {
      const int code = (i % 2 == 0) ? (blk[1 + i / 2] & 0x0f) : (blk[1 + i / 2] >> 4);
      const float expect = float(std::ldexp(e2m1(code), int(blk[0]) - 127));
      EXPECT_EQ(out[size_t(b * 32 + i)], expect) << "block " << b << " value " << i;
      EXPECT_EQ(one[i], expect);
    }
  }
  // A hand-made block: scale 2^1, byte 0x7F holds -6 (low nibble F) then +6 (high nibble 7); 0x21 holds 0.5, 1.
  uint8_t blk[17] = {128, 0x7F, 0x21};
  float v[32];
  cpu::dequantizeMxfp4Block(blk, v);
  EXPECT_EQ(v[0], -12.0f);
  EXPECT_EQ(v[1], 12.0f);
  EXPECT_EQ(v[2], 1.0f);
  EXPECT_EQ(v[3], 2.0f);
  EXPECT_EQ(v[4], 0.0f);
}

TEST(Mxfp4, QuantizeRoundTrip) {
  // Values on the E2M1 grid of their block's scale come back exactly.
  std::vector<float> x(64);
  for (int i = 0; i < 32; i++) x[size_t(i)] = float(e2m1(i % 16)) * 0.25f;  // amax 1.5 -> scale 2^-2
  x[7] = 6 * 0.25f;                                                           // amax 1.5: 6 * 2^-2
  for (int i = 32; i < 64; i++) x[size_t(i)] = float(e2m1((i * 5) % 16)) * 64.0f;
  x[40] = 6 * 64.0f;
  std::vector<uint8_t> q(2 * 17);
  cpu::quantizeMxfp4(x.data(), 1, 64, q.data());
  EXPECT_EQ(q[0], 125);  // 2^(floor(log2 1.5) - 2) = 2^-2
  EXPECT_EQ(q[17], 133);  // 2^(floor(log2 384) - 2) = 2^6
  std::vector<float> back(64);
  cpu::dequantizeMxfp4(q.data(), 1, 64, back.data());
  for (int i = 0; i < 64; i++) EXPECT_EQ(back[size_t(i)], x[size_t(i)]) << i;

  // Random values: each within half a grid step (at most one scale unit, or the clamp of 6..8 scale units).
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0, 0.1f);
  std::vector<float> r(32 * 20);
  for (auto& f : r) f = nd(rng);
  std::vector<uint8_t> rq(20 * 17);
  cpu::quantizeMxfp4(r.data(), 20, 32, rq.data());
  std::vector<float> rb(r.size());
  cpu::dequantizeMxfp4(rq.data(), 20, 32, rb.data());
  for (int b = 0; b < 20; b++) {
    const float scale = cpu::e8m0Scale(rq[size_t(b * 17)]);
    for (int i = 0; i < 32; i++) {
      const float a = r[size_t(b * 32 + i)], d = rb[size_t(b * 32 + i)];
      const float tol = std::fabs(a) > 6 * scale ? std::fabs(a) - 6 * scale : 1.0f * scale;
      EXPECT_LE(std::fabs(a - d), tol + 1e-12f) << b << " " << i;
    }
  }
}

// Random MXFP4 W[out, in] and its f32 dequantisation.
struct RandomMx {
  std::vector<uint8_t> q;  // [out, in / 32] blocks
  std::vector<float> f;    // [out, in]
};
RandomMx randomMx(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0, 0.2f);
  std::vector<float> w(size_t(out * in));
  for (auto& v : w) v = nd(rng);
  RandomMx m;
  m.q.resize(size_t(out * in / 32 * 17));
  cpu::quantizeMxfp4(w.data(), out, in, m.q.data());
  m.f.resize(w.size());
  cpu::dequantizeMxfp4(m.q.data(), out, in, m.f.data());
  return m;
}

// The kernel equals an f32 matmul on the dequantised weights (GEMV and GEMM, with and without bias), through
// the CPU backend's dispatch too.
TEST(Mxfp4, MatmulEqualsDequantisedF32Matmul) {
  const int64_t out = 48, in = 96;
  RandomMx m = randomMx(out, in, 11);
  std::vector<float> bias(out);
  for (int64_t o = 0; o < out; o++) bias[size_t(o)] = 0.01f * float(o);
  WeightView wq{m.q.data(), DType::MXFP4, {out, in}, Layout::Row};
  EXPECT_EQ(wq.bytes(), size_t(out * in / 32 * 17));
  auto backend = makeCpuBackend();
  for (int64_t n : {1, 7}) {
    std::vector<float> x(size_t(n * in));
    for (size_t i = 0; i < x.size(); i++) x[i] = std::sin(0.37f * float(i)) * 0.5f;
    for (const float* b : {static_cast<const float*>(nullptr), static_cast<const float*>(bias.data())}) {
      std::vector<float> ref(size_t(n * out)), got(size_t(n * out)), viaBackend(size_t(n * out));
      cpu::matmul(x.data(), n, in, m.f.data(), DType::F32, Layout::Row, out, b, ref.data());
      cpu::matmulMxfp4(x.data(), n, wq, b, got.data());
      backend->matmul(x.data(), n, wq, b, viaBackend.data());
      EXPECT_LT(relativeError(got.data(), ref.data(), n * out), 1e-6) << "n=" << n;
      EXPECT_EQ(got, viaBackend);
    }
  }
}

TEST(Mxfp4, MatmulRejectsBadInput) {
  RandomMx m = randomMx(4, 64, 1);
  std::vector<float> x(64), y(8);
  WeightView col{m.q.data(), DType::MXFP4, {4, 64}, Layout::Column};
  EXPECT_THROW(cpu::matmulMxfp4(x.data(), 1, col, nullptr, y.data()), Error);
  WeightView odd{m.q.data(), DType::MXFP4, {8, 40}, Layout::Row};
  EXPECT_THROW(cpu::matmulMxfp4(x.data(), 1, odd, nullptr, y.data()), Error);
  WeightView bf{m.q.data(), DType::BF16, {4, 64}, Layout::Row};
  EXPECT_THROW(cpu::matmulMxfp4(x.data(), 1, bf, nullptr, y.data()), Error);
  EXPECT_THROW(dtypeBytes(DType::MXFP4, 40), Error);
  EXPECT_EQ(dtypeBytes(DType::MXFP4, 64), 34u);
}

// ---------------------------------------------------------------- synthetic gpt-oss MXFP4 checkpoint

std::vector<float> bf16ToF32Vec(std::span<const uint8_t> bytes) {
  std::vector<float> f(bytes.size() / 2);
  toF32(bytes.data(), DType::BF16, f.data(), f.size());
  return f;
}
std::vector<uint8_t> f32ToBf16Bytes(const std::vector<float>& f) {
  std::vector<uint8_t> b(f.size() * 2);
  convertElements(f.data(), DType::F32, b.data(), DType::BF16, f.size());
  return b;
}

// Writes DIR/mx (gpt_oss experts as *_blocks / *_scales, as openai/gpt-oss-* ship them) and DIR/twin (the
// same model in bf16 with the experts' dequantised values) from the bf16 fixture.
void makeMxfp4Pair(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string src = test::dataPath("hf/gpt_oss");
  SafetensorsFile st(src + "/model.safetensors");
  std::vector<std::pair<std::string, std::vector<SafetensorsWriteItem>>> outs = {{"mx", {}}, {"twin", {}}};
  std::vector<std::unique_ptr<std::vector<uint8_t>>> keep;  // bytes the write items point at
  auto own = [&](std::vector<uint8_t> v) -> std::span<const uint8_t> {
    keep.push_back(std::make_unique<std::vector<uint8_t>>(std::move(v)));
    return *keep.back();
  };
  for (const auto& t : st.tensors()) {
    const bool gateUp = t.name.ends_with("mlp.experts.gate_up_proj");
    const bool down = t.name.ends_with("mlp.experts.down_proj");
    if (!gateUp && !down) {
      for (auto& o : outs) o.second.emplace_back(t.name, t.dtype, t.shape, st.bytes(t));
      continue;
    }
    ASSERT_EQ(t.dtype, DType::BF16);
    ASSERT_EQ(t.shape.size(), 3u);
    // gate_up_proj [E, H, 2I] and down_proj [E, I, H] are used as x @ W[e] ([in, out]); the MXFP4 form stores
    // each expert's W[e]ᵀ = [out, in] in 32-value blocks along `in`.
    const int64_t E = t.shape[0], IN = t.shape[1], OUT = t.shape[2];
    auto w = bf16ToF32Vec(st.bytes(t));
    std::vector<uint8_t> blocks(size_t(E * OUT * IN / 2)), scales(size_t(E * OUT * IN / 32));
    std::vector<float> twin(w.size());
    for (int64_t e = 0; e < E; e++) {
      std::vector<float> wt(size_t(OUT * IN));  // [out, in]
      for (int64_t i = 0; i < IN; i++)
        for (int64_t o = 0; o < OUT; o++) wt[size_t(o * IN + i)] = w[size_t((e * IN + i) * OUT + o)];
      std::vector<uint8_t> q(size_t(OUT * IN / 32 * 17));
      cpu::quantizeMxfp4(wt.data(), OUT, IN, q.data());
      std::vector<float> dq(wt.size());
      cpu::dequantizeMxfp4(q.data(), OUT, IN, dq.data());
      for (int64_t r = 0; r < OUT * IN / 32; r++) {  // split into the checkpoint's planar blocks / scales
        scales[size_t(e * OUT * IN / 32 + r)] = q[size_t(r * 17)];
        std::memcpy(&blocks[size_t((e * OUT * IN / 32 + r) * 16)], &q[size_t(r * 17 + 1)], 16);
      }
      for (int64_t i = 0; i < IN; i++)
        for (int64_t o = 0; o < OUT; o++) twin[size_t((e * IN + i) * OUT + o)] = dq[size_t(o * IN + i)];
    }
    outs[0].second.emplace_back(t.name + "_blocks", DType::U8, std::vector<int64_t>{E, OUT, IN / 32, 16},
                                own(std::move(blocks)));
    outs[0].second.emplace_back(t.name + "_scales", DType::U8, std::vector<int64_t>{E, OUT, IN / 32},
                                own(std::move(scales)));
    auto twinBytes = f32ToBf16Bytes(twin);
    EXPECT_EQ(bf16ToF32Vec(twinBytes), twin) << "dequantised values must be exact in bf16";
    outs[1].second.emplace_back(t.name, DType::BF16, t.shape, own(std::move(twinBytes)));
  }
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  for (auto& [name, items] : outs) {
    const std::string d = dir + "/" + name;
    fs::create_directories(d);
    writeSafetensors(d + "/model.safetensors", items, {{"format", "pt"}});
    nlohmann::json c = cfg;
    if (name == "mx") c["quantization_config"] = {{"quant_method", "mxfp4"}, {"modules_to_not_convert", {"router"}}};
    std::ofstream(d + "/config.json") << c.dump(2);
  }
}

std::vector<float> runTokens(Engine& e, const std::vector<int32_t>& prompt, const std::vector<int32_t>& decode) {
  const int64_t V = e.config().vocabSize, P = int64_t(prompt.size());
  std::vector<float> out(size_t((P + int64_t(decode.size())) * V));
  auto kv = e.newKVCache(P + int64_t(decode.size()));
  e.model().forward(prompt.data(), P, 0, *kv, true, out.data());
  for (size_t i = 0; i < decode.size(); i++)
    e.model().forward(&decode[i], 1, P + int64_t(i), *kv, false, out.data() + (P + int64_t(i)) * V);
  return out;
}

TEST(Mxfp4, GptOssCheckpointConvertsAndMatchesDequantisedTwin) {
  TempDir tmp;
  makeMxfp4Pair(tmp.path());
  ConvertOptions row;
  row.sync = false;
  ConvertOptions col = row;
  col.layout = Layout::Column;
  convertHfToRdrr(tmp / "mx", tmp / "mx.rdrr", row);
  convertHfToRdrr(tmp / "mx", tmp / "mxcol.rdrr", col);
  convertHfToRdrr(tmp / "twin", tmp / "twin.rdrr", row);
  EngineOptions eo;
  eo.quiet = true;
  auto mx = Engine::open(tmp / "mx.rdrr", eo);
  auto mxcol = Engine::open(tmp / "mxcol.rdrr", eo);
  auto twin = Engine::open(tmp / "twin.rdrr", eo);

  // Stored MXFP4 (17 bytes per 32 values), row-major even in a column-layout conversion; in memory too.
  const ModelConfig& c = mx->config();
  const int64_t I = c.moeIntermediateSize, H = c.hiddenSize;
  for (const char* part : {"gate", "up", "down"}) {
    const std::string name = fmt::format("layers.1.experts.5.{}.weight", part);
    EXPECT_EQ(mx->rdrr().dtype(name), DType::MXFP4) << name;
    EXPECT_EQ(mx->rdrr().byteSize(name), uint64_t(I * H / 32 * 17)) << name;
    EXPECT_EQ(mxcol->rdrr().layout(name), Layout::Row) << name;
    EXPECT_EQ(twin->rdrr().dtype(name), DType::BF16) << name;
    auto v = mx->rdrr().view(name);
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(v->dtype, DType::MXFP4);
    EXPECT_EQ(v->bytes(), size_t(I * H / 32 * 17));
  }
  EXPECT_EQ(mxcol->rdrr().layout("layers.1.attn.q.weight"), Layout::Column);
  EXPECT_EQ(mx->rdrr().dtype("layers.1.experts.5.gate.bias"), DType::BF16);
  // The MXFP4 expert bytes decode to exactly the twin's bf16 values (gate = even rows of the fused matrix).
  for (const char* part : {"gate", "up", "down"}) {
    const std::string name = fmt::format("layers.2.experts.3.{}.weight", part);
    auto q = mx->rdrr().readTensor(name);
    auto shape = mx->rdrr().shape(name);
    std::vector<float> dq(size_t(shape[0] * shape[1]));
    cpu::dequantizeMxfp4(q.data(), shape[0], shape[1], dq.data());
    auto tb = twin->rdrr().readTensor(name);
    EXPECT_EQ(dq, bf16ToF32Vec(tb)) << name;
  }

  // Same logits: a 40-token prefill, then 12 decode steps.
  SafetensorsFile ref(test::dataPath("hf/gpt_oss/reference.safetensors"));
  auto idsBytes = ref.bytes(*ref.find("long_ids"));
  std::vector<int32_t> ids(idsBytes.size() / 4);
  std::memcpy(ids.data(), idsBytes.data(), idsBytes.size());
  std::vector<int32_t> prompt(ids.begin(), ids.begin() + 40), decode(ids.begin() + 40, ids.begin() + 52);
  auto a = runTokens(*mx, prompt, decode), b = runTokens(*twin, prompt, decode), cc = runTokens(*mxcol, prompt, decode);
  const int64_t V = c.vocabSize, rows = int64_t(a.size()) / V;
  double worst = 0, worstCol = 0;
  for (int64_t r = 0; r < rows; r++) {
    worst = std::max(worst, relativeError(a.data() + r * V, b.data() + r * V, V));
    worstCol = std::max(worstCol, relativeError(cc.data() + r * V, b.data() + r * V, V));
  }
  EXPECT_LT(worst, 1e-5);
  EXPECT_LT(worstCol, 1e-5);
  // ... and the quantisation did change the model (the comparison is not vacuous).
  EvalReport rep = runEval(mx->model(), test::dataPath("hf/gpt_oss/reference.safetensors"),
                           [&](int64_t cap) { return mx->newKVCache(cap); });
  EXPECT_GT(rep.longCtx.worstError, 1e-3);
}

}  // namespace
