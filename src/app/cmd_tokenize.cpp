// doppler tokenize MODEL TEXT [--no-special]; doppler detokenize MODEL IDS...
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "app/commands.h"
#include "core/error.h"
#include "engine/model_source.h"
#include "tokenizer/tokenizer.h"

namespace doppler::app {

namespace {

// The tokenizer files of an RDRR dir, a Hugging Face dir, or the default model ("").
std::unique_ptr<Tokenizer> openTokenizer(const std::string& model) {
  return Tokenizer::fromDir(model.empty() ? defaultModelDir() : model);
}

struct TokOpts {
  std::string model, text;
  bool noSpecial = false;
};
struct DetokOpts {
  std::string model;
  std::vector<std::string> ids;
  bool skipSpecial = false;
};

const bool kTok = registerCommand(
    {"tokenize", "Print the token ids of TEXT as a JSON array", 40, [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<TokOpts>();
       sub.add_option("MODEL", o->model, "RDRR dir or Hugging Face dir (its tokenizer files)")->required();
       sub.add_option("TEXT", o->text, "Text to tokenize")->required();
       sub.add_flag("--no-special", o->noSpecial, "Do not add special tokens (BOS) from the post-processor");
       return [o] {
         auto tok = openTokenizer(o->model);
         auto ids = tok->encode(o->text, !o->noSpecial);
         std::printf("%s\n", nlohmann::json(ids).dump().c_str());
         return 0;
       };
     }});

const bool kDetok = registerCommand(
    {"detokenize", "Print the text of token ids (a JSON array or separate numbers)", 41, [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<DetokOpts>();
       sub.add_option("MODEL", o->model, "RDRR dir or Hugging Face dir (its tokenizer files)")->required();
       sub.add_option("IDS", o->ids, "Token ids: '[1, 2, 3]' or 1 2 3")->required();
       sub.add_flag("--skip-special", o->skipSpecial, "Leave special tokens out of the text");
       return [o] {
         // Accept "[1, 2, 3]" or "1 2 3": brackets and commas are separators.
         std::string all;
         for (auto& s : o->ids) all += s + " ";
         for (auto& c : all)
           if (c == '[' || c == ']' || c == ',') c = ' ';
         auto tok = openTokenizer(o->model);
         std::vector<int32_t> ids;
         std::istringstream in(all);
         for (std::string w; in >> w;) {
           size_t used = 0;
           long long v = -1;
           try {
             v = std::stoll(w, &used);
           } catch (const std::exception&) {
             used = 0;
           }
           check(used == w.size() && v >= 0 && v < tok->vocabSize(),
                 "detokenize: '{}' is not a token id (the vocabulary has {} tokens)", w, tok->vocabSize());
           ids.push_back(int32_t(v));
         }
         std::printf("%s\n", tok->decode(ids, o->skipSpecial).c_str());
         return 0;
       };
     }});

}  // namespace

}  // namespace doppler::app
