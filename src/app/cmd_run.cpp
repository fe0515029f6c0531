// doppler run [MODEL] -p PROMPT [-n N] [sampling options] [--chat]: streams generated text, then prints
// prefill and decode speed.
#include <chrono>
#include <cstdio>
#include <random>

#include "app/cli_common.h"
#include "app/commands.h"
#include "core/error.h"
#include "engine/generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace doppler::app {

namespace {
struct Opts {
  std::string model, prompt, system;
  int64_t maxNew = 128;
  int64_t ctx = 0;
  bool chat = false;
  bool hasSeed = false;
  SamplerConfig sampler{.temperature = 0.8f, .topK = 40, .topP = 0.95f, .minP = 0.05f};
  EngineOptions engine;
};

const bool kRegistered = registerCommand(
    {"run", "Generate text from a prompt, streaming it, then print prefill/decode tokens/s", 10,
     [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.add_option("MODEL", o->model,
                      "RDRR dir or Hugging Face dir (converted once into the cache); default: the embedded "
                      "qwen3moe-code-9m model");
       sub.add_option("-p,--prompt", o->prompt, "Prompt text")->required();
       sub.add_option("-n,--max-tokens", o->maxNew, "Tokens to generate (default 128)")->check(CLI::PositiveNumber);
       sub.add_option("--ctx", o->ctx, "Context length in tokens (default: the model's, at most 4096)")
           ->check(CLI::PositiveNumber);
       sub.add_option("--temp", o->sampler.temperature, "Temperature; 0 = greedy (default 0.8)");
       sub.add_option("--top-k", o->sampler.topK, "Top-k; 0 = off (default 40)");
       sub.add_option("--top-p", o->sampler.topP, "Top-p; 1 = off (default 0.95)");
       sub.add_option("--min-p", o->sampler.minP, "Min-p; 0 = off (default 0.05)");
       sub.add_option("--repeat-penalty", o->sampler.repetitionPenalty, "Repetition penalty; 1 = off (default 1)");
       sub.add_option("--repeat-last-n", o->sampler.repeatLastN, "Tokens the penalty looks back; 0 = all (default 0)");
       auto* seed = sub.add_option("--seed", o->sampler.seed, "Random seed (same seed, same text; default: random)");
       sub.add_flag("--chat", o->chat, "Wrap the prompt in the model's chat template as a user message");
       sub.add_option("--system", o->system, "System message (with --chat)");
       addEngineOptions(sub, o->engine);
       return [o, seed] {
         if (!seed->count())
           o->sampler.seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) ^ std::random_device{}();
         validateSamplerConfig(o->sampler);
         TraceFile trace(o->engine.tracePath);
         auto engine = Engine::open(o->model, o->engine);
         auto tok = Tokenizer::fromDir(engine->dir());
         const ModelConfig& cfg = engine->config();

         std::string text = o->prompt;
         bool addSpecial = true;
         if (o->chat) {
           auto tmpl = ChatTemplate::fromTokenizerConfig(engine->dir() + "/tokenizer_config.json");
           check(tmpl.has_value(), "{}: --chat needs a chat_template in tokenizer_config.json", engine->dir());
           nlohmann::json messages = nlohmann::json::array();
           if (!o->system.empty()) messages.push_back({{"role", "system"}, {"content", o->system}});
           messages.push_back({{"role", "user"}, {"content", o->prompt}});
           text = tmpl->apply(messages, /*addGenerationPrompt=*/true);
           addSpecial = false;  // the template writes BOS itself
         }
         std::vector<int32_t> ids = tok->encode(text, addSpecial);
         check(!ids.empty(), "the prompt is empty");

         int64_t ctx = o->ctx > 0 ? o->ctx : std::min<int64_t>(cfg.maxPositionEmbeddings > 0 ? cfg.maxPositionEmbeddings : 4096, 4096);
         check(int64_t(ids.size()) < ctx, "the prompt has {} tokens but the context is {} tokens (--ctx)", ids.size(), ctx);
         auto kv = engine->newKVCache(ctx);
         Sampler sampler(o->sampler);
         std::vector<int32_t> stop = tok->eosIds();
         for (auto id : cfg.eosTokenIds) stop.push_back(int32_t(id));

         if (!o->chat) {
           std::fputs(o->prompt.c_str(), stdout);
           std::fflush(stdout);
         }
         StreamDecoder dec(*tok, /*skipSpecial=*/true);
         GenerateStats st = generate(engine->model(), *kv, ids, o->maxNew, sampler, stop, [&](int32_t t) {
           std::string piece = dec.push(t);
           std::fwrite(piece.data(), 1, piece.size(), stdout);
           std::fflush(stdout);
           return true;
         });
         std::string rest = dec.flush();
         std::fwrite(rest.data(), 1, rest.size(), stdout);
         std::fputs("\n", stdout);
         std::fflush(stdout);
         std::fprintf(stderr, "prefill: %lld tokens, %.1f tok/s | decode: %lld tokens, %.1f tok/s%s\n",
                      (long long)st.promptTokens, st.prefillTokensPerSecond(), (long long)st.generatedTokens,
                      st.decodeTokensPerSecond(), st.stoppedByEos ? " (stopped at end-of-sequence)" : "");
         reportStats(*engine, o->engine);
         trace.write();
         return 0;
       };
     }});
}  // namespace

}  // namespace doppler::app
