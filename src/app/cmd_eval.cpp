// doppler eval MODEL --reference REF.safetensors [--tol 1e-4]: logits parity against transformers.
#include <cstdio>

#include "app/cli_common.h"
#include "app/commands.h"
#include "engine/eval.h"

namespace doppler::app {

namespace {
struct Opts {
  std::string model, reference;
  double tol = 1e-4;
  EngineOptions engine;
};

void printPass(const char* label, const EvalPass& p) {
  std::printf("%-7s %4lld rows  worst relative error %.3e at row %lld  argmax agrees %lld/%lld\n", label,
              (long long)p.rows, p.worstError, (long long)p.worstRow, (long long)p.argmaxAgree, (long long)p.rows);
}

const bool kRegistered = registerCommand(
    {"eval", "Check logits against a transformers reference (prefill + KV-cached decode, and a long prefill)", 30,
     [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.add_option("MODEL", o->model, "RDRR dir or Hugging Face dir")->required();
       sub.add_option("--reference", o->reference,
                      "Reference safetensors: prompt_ids, ids, logits [, long_ids, long_logits]")
           ->required();
       sub.add_option("--tol", o->tol, "Largest allowed per-row relative error ||a-b||/||b|| (default 1e-4)")
           ->check(CLI::PositiveNumber);
       addEngineOptions(sub, o->engine);
       return [o] {
         TraceFile trace(o->engine.tracePath);
         auto engine = Engine::open(o->model, o->engine);
         EvalReport r = runEval(engine->model(), o->reference,
                                [&](int64_t cap) { return engine->newKVCache(cap); });
         printPass("decode", r.decode);
         if (r.longCtx.rows > 0) printPass("long", r.longCtx);
         const double worst = std::max(r.decode.worstError, r.longCtx.worstError);
         const bool ok = worst <= o->tol;
         std::printf("%s: worst relative error %.3e %s tolerance %.1e\n", ok ? "PASS" : "FAIL", worst,
                     ok ? "<=" : ">", o->tol);
         reportStats(*engine, o->engine);
         trace.write();
         return ok ? 0 : 1;
       };
     }});
}  // namespace

}  // namespace doppler::app
