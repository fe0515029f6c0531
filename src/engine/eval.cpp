#include "engine/eval.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "format/safetensors.h"

namespace doppler {

double relativeError(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * b[i];
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return std::sqrt(num / den);
}

namespace {

struct RefTensor {
  const SafetensorInfo* info = nullptr;
  std::span<const uint8_t> bytes;
};

RefTensor need(const SafetensorsFile& f, const std::string& name, DType dt, size_t rank) {
  const SafetensorInfo* t = f.find(name);
  check(t != nullptr, "{}: reference has no tensor '{}'", f.path(), name);
  check(t->dtype == dt && t->shape.size() == rank, "{}: reference tensor '{}' must be {} of rank {} (is {} {})",
        f.path(), name, dtypeName(dt), rank, dtypeName(t->dtype), shapeString(t->shape));
  return RefTensor{t, f.bytes(*t)};
}

std::vector<int32_t> ids(const RefTensor& r) {
  std::vector<int32_t> v(r.bytes.size() / 4);
  std::memcpy(v.data(), r.bytes.data(), v.size() * 4);
  return v;
}

void score(EvalPass& pass, const float* ours, const float* ref, int64_t row, int64_t V) {
  double e = relativeError(ours, ref, V);
  if (std::isnan(e)) e = INFINITY;  // a NaN row is the worst row
  if (pass.worstRow < 0 || e > pass.worstError) {
    pass.worstError = e;
    pass.worstRow = row;
  }
  if (std::max_element(ours, ours + V) - ours == std::max_element(ref, ref + V) - ref) pass.argmaxAgree++;
  pass.rows++;
}

}  // namespace

EvalReport runEval(Model& model, const std::string& referencePath,
                   const std::function<std::unique_ptr<KVCache>(int64_t)>& makeCache) {
  SafetensorsFile ref(referencePath);
  const int64_t V = model.config().vocabSize;
  EvalReport rep;

  auto prompt = ids(need(ref, "prompt_ids", DType::I32, 1));
  auto all = ids(need(ref, "ids", DType::I32, 1));
  RefTensor logits = need(ref, "logits", DType::F32, 2);
  const int64_t P = int64_t(prompt.size()), N = int64_t(all.size());
  check(P > 0 && P <= N && std::equal(prompt.begin(), prompt.end(), all.begin()),
        "{}: prompt_ids must be a non-empty prefix of ids", referencePath);
  check(logits.info->shape[0] == N && logits.info->shape[1] == V,
        "{}: logits has shape {}, expected [{}, {}] (ids x the model's vocabulary)", referencePath,
        shapeString(logits.info->shape), N, V);
  const float* refLogits = reinterpret_cast<const float*>(logits.bytes.data());

  {
    auto kv = makeCache(N);
    std::vector<float> out(static_cast<size_t>(P * V));
    model.forward(prompt.data(), P, 0, *kv, /*allLogits=*/true, out.data());
    for (int64_t i = 0; i < P; i++) score(rep.decode, out.data() + i * V, refLogits + i * V, i, V);
    for (int64_t i = P; i < N; i++) {
      model.forward(&all[size_t(i)], 1, i, *kv, false, out.data());
      score(rep.decode, out.data(), refLogits + i * V, i, V);
    }
  }

  if (ref.find("long_ids")) {
    auto longIds = ids(need(ref, "long_ids", DType::I32, 1));
    RefTensor longLogits = need(ref, "long_logits", DType::F32, 2);
    const int64_t T = int64_t(longIds.size());
    check(longLogits.info->shape[0] == T && longLogits.info->shape[1] == V,
          "{}: long_logits has shape {}, expected [{}, {}]", referencePath, shapeString(longLogits.info->shape), T, V);
    auto kv = makeCache(T);
    std::vector<float> out(static_cast<size_t>(T * V));
    model.forward(longIds.data(), T, 0, *kv, true, out.data());
    const float* r = reinterpret_cast<const float*>(longLogits.bytes.data());
    for (int64_t i = 0; i < T; i++) score(rep.longCtx, out.data() + i * V, r + i * V, i, V);
  }
  return rep;
}

}  // namespace doppler
