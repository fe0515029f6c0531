#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <unordered_map>

#include "core/error.h"
#include "core/json_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/regex.h"
#include "tokenizer/tiktoken.h"
#include "tokenizer/utf8.h"

namespace doppler {

namespace fs = std::filesystem;

namespace {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, singleWord = false, normalized = false;
};

// Byte trie over added-token texts: finds the longest token starting at a position.
class TokenTrie {
 public:
  TokenTrie() : nodes_(1) {}
  void add(std::string_view s, int32_t value) {
    if (s.empty()) return;
    size_t n = 0;
    for (unsigned char c : s) {
      int32_t child = find(n, c);
      if (child < 0) {
        child = int32_t(nodes_.size());
        nodes_[n].kids.emplace_back(c, child);
        nodes_.emplace_back();
      }
      n = size_t(child);
    }
    if (nodes_[n].value < 0) nodes_[n].value = value;  // the first token with this text wins
    first_[uint8_t(s[0])] = true;
  }
  bool empty() const { return nodes_.size() == 1; }
  bool mayStart(unsigned char c) const { return first_[c]; }
  // Value of the longest entry that text[pos..] starts with (-1 if none); its length in *len.
  int32_t longestAt(std::string_view text, size_t pos, size_t* len) const {
    int32_t best = -1;
    size_t n = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      int32_t child = find(n, uint8_t(text[i]));
      if (child < 0) break;
      n = size_t(child);
      if (nodes_[n].value >= 0) {
        best = nodes_[n].value;
        *len = i + 1 - pos;
      }
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> kids;
    int32_t value = -1;
  };
  int32_t find(size_t n, uint8_t c) const {
    for (const auto& [k, child] : nodes_[n].kids)
      if (k == c) return child;
    return -1;
  }
  std::vector<Node> nodes_;
  bool first_[256] = {};
};

struct Segment {
  size_t start, end;
  int32_t id;  // -1: plain text
};

// Start of the code point that ends just before byte pos.
size_t prevCharStart(std::string_view s, size_t pos) {
  size_t p = pos - 1;
  while (p > 0 && (uint8_t(s[p]) & 0xC0) == 0x80) --p;
  return p;
}

bool isWordChar(char32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  static const Regex word(R"(^[\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]$)", "word character");
  std::string s = utf8::encode(cp);
  bool found = false;
  word.forEachMatch(s, [&](size_t, size_t) { found = true; });
  return found;
}

// Splits s at the added tokens of trie (leftmost, longest), applying single_word / lstrip / rstrip as the
// tokenizers library's AddedVocabulary::find_matches does.
void splitAdded(std::string_view s, const TokenTrie& trie, const std::vector<AddedToken>& tokens,
                std::vector<Segment>& out) {
  out.clear();
  size_t startOffset = 0, pos = 0;
  while (pos < s.size()) {
    if (!trie.mayStart(uint8_t(s[pos]))) {
      ++pos;
      continue;
    }
    size_t len = 0;
    int32_t idx = trie.longestAt(s, pos, &len);
    if (idx < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens[size_t(idx)];
    size_t start = pos, stop = pos + len;
    pos = stop;
    if (tok.singleWord) {
      bool wordBefore = false, wordAfter = false;
      if (start > 0) {
        size_t p = prevCharStart(s, start);
        wordBefore = isWordChar(utf8::next(s, p));
      }
      if (stop < s.size()) {
        size_t p = stop;
        wordAfter = isWordChar(utf8::next(s, p));
      }
      if (wordBefore || wordAfter) continue;
    }
    if (tok.lstrip) {
      size_t b = start;
      while (b > 0) {
        size_t p = prevCharStart(s, b), q = p;
        if (!utf8::isWhiteSpace(utf8::next(s, q))) break;
        b = p;
      }
      start = std::max(b, startOffset);
    }
    if (tok.rstrip) {
      while (stop < s.size()) {
        size_t q = stop;
        if (!utf8::isWhiteSpace(utf8::next(s, q))) break;
        stop = q;
      }
      pos = stop;
    }
    if (startOffset < start) out.push_back({startOffset, start, -1});
    out.push_back({start, stop, tok.id});
    startOffset = stop;
  }
  if (startOffset < s.size()) out.push_back({startOffset, s.size(), -1});
}

std::string tokenString(const Json& j, const std::string& what, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return {};
  const Json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail("{}: '{}' must be a string or an object with 'content'", what, key);
}

}  // namespace

struct Tokenizer::Impl {
  std::string what;  // source path, for errors
  bool tiktoken = false;

  // Hugging Face pipeline.
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre;
  std::unique_ptr<BpeModel> bpe;
  // tiktoken.
  TiktokenFiles tik;
  std::unique_ptr<Regex> pattern;
  mutable WordCache tikCache;

  std::vector<AddedToken> added;
  TokenTrie rawTrie, normTrie;  // added tokens matched before / after normalization
  StringIdMap addedByText;

  DecoderChain decoder;
  std::vector<int32_t> prefix, suffix;  // added around the text when addSpecial

  std::vector<std::string> idText;  // [vocabSize]
  std::vector<uint8_t> idState;     // [vocabSize] 0: no token, 1: token, 2: special token

  std::string bosToken, eosToken;
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;

  std::optional<int32_t> lookup(std::string_view text) const {
    auto it = addedByText.find(text);
    if (it != addedByText.end()) return it->second;
    if (bpe) return bpe->tokenId(text);
    auto r = tik.ranks.find(text);
    if (r != tik.ranks.end()) return r->second;
    return std::nullopt;
  }

  void checkId(int32_t id) const {
    if (id < 0 || size_t(id) >= idState.size() || idState[size_t(id)] == 0)
      fail("{}: token id {} is not in the vocabulary (size {})", what, id, idState.size());
  }

  void encodePieces(std::string text, bool atStart, std::vector<int32_t>& ids) const {
    if (text.empty()) return;
    if (!pre) {
      bpe->encodeWord(text, ids);
      return;
    }
    std::vector<Piece> pieces;
    pieces.push_back({std::move(text), atStart});
    pre->apply(pieces);
    for (const Piece& p : pieces) bpe->encodeWord(p.text, ids);
  }

  void encodeStretch(std::string_view raw, bool atStart, std::vector<int32_t>& ids) const {
    if (tiktoken) {
      std::vector<int32_t> tmp;
      pattern->forEachMatch(raw, [&](size_t s, size_t e) {
        std::string_view piece = raw.substr(s, e - s);
        if (piece.empty() || tikCache.get(piece, ids)) return;
        tmp.clear();
        tiktokenEncodePiece(tik, piece, tmp);
        tikCache.put(piece, tmp);
        ids.insert(ids.end(), tmp.begin(), tmp.end());
      });
      return;
    }
    std::string s(raw);
    if (normalizer) normalizer->normalize(s);
    if (normTrie.empty()) {
      encodePieces(std::move(s), atStart, ids);
      return;
    }
    std::vector<Segment> segs;
    splitAdded(s, normTrie, added, segs);
    for (const Segment& g : segs) {
      if (g.id >= 0)
        ids.push_back(g.id);
      else
        encodePieces(s.substr(g.start, g.end - g.start), atStart && g.start == 0, ids);
    }
  }

  // Builds idText / idState from the model's tokens and the added tokens.
  void buildIdTable(size_t modelSize, const std::function<const std::string*(int32_t)>& modelText) {
    size_t n = modelSize;
    for (const AddedToken& t : added) n = std::max(n, size_t(t.id) + 1);
    idText.assign(n, {});
    idState.assign(n, 0);
    for (size_t i = 0; i < modelSize; ++i)
      if (const std::string* s = modelText(int32_t(i))) {
        idText[i] = *s;
        idState[i] = 1;
      }
    for (const AddedToken& t : added) {
      idText[size_t(t.id)] = t.content;
      idState[size_t(t.id)] = t.special ? 2 : 1;
    }
  }

  // tokenizer_config.json / generation_config.json beside the tokenizer.
  void readConfigs(const fs::path& dir) {
    fs::path cfgPath = dir / "tokenizer_config.json";
    std::optional<bool> addBos, addEos;
    if (fs::exists(cfgPath)) {
      Json cfg = readJsonFile(cfgPath.string());
      if (!cfg.is_object()) fail("{}: expected a JSON object", cfgPath.string());
      bosToken = tokenString(cfg, cfgPath.string(), "bos_token");
      eosToken = tokenString(cfg, cfgPath.string(), "eos_token");
      if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) addBos = cfg["add_bos_token"].get<bool>();
      if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) addEos = cfg["add_eos_token"].get<bool>();
    }
    std::optional<int32_t> cfgBos = bosToken.empty() ? std::nullopt : lookup(bosToken);
    std::optional<int32_t> cfgEos = eosToken.empty() ? std::nullopt : lookup(eosToken);
    if (addBos && cfgBos) {
      bool has = !prefix.empty() && prefix.front() == *cfgBos;
      if (*addBos && !has) prefix.insert(prefix.begin(), *cfgBos);
      if (!*addBos && has) prefix.erase(prefix.begin());
    }
    if (addEos && cfgEos) {
      bool has = !suffix.empty() && suffix.back() == *cfgEos;
      if (*addEos && !has) suffix.push_back(*cfgEos);
      if (!*addEos && has) suffix.pop_back();
    }
    if (!prefix.empty())
      bos = prefix.front();
    else
      bos = cfgBos;
    if (cfgEos) eos.push_back(*cfgEos);

    fs::path genPath = dir / "generation_config.json";
    if (fs::exists(genPath)) {
      Json gen = readJsonFile(genPath.string());
      if (gen.is_object() && gen.contains("eos_token_id")) {
        const Json& e = gen["eos_token_id"];
        std::vector<int64_t> ids;
        if (e.is_number_integer())
          ids.push_back(e.get<int64_t>());
        else if (e.is_array())
          for (const Json& x : e)
            if (x.is_number_integer()) ids.push_back(x.get<int64_t>());
        for (int64_t id : ids) {
          if (id < 0 || size_t(id) >= idState.size() || idState[size_t(id)] == 0)
            fail("{}: eos_token_id {} is not in the vocabulary (size {})", genPath.string(), id, idState.size());
          if (std::find(eos.begin(), eos.end(), int32_t(id)) == eos.end()) eos.push_back(int32_t(id));
        }
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// Loading

namespace {

// The ids the post-processor puts before / after a single sequence.
void readPostProcessor(const Json& j, const std::string& what, Tokenizer::Impl& impl) {
  if (j.is_null()) return;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail("{}: post_processor must be an object with a 'type'", what);
  const std::string type = j["type"];
  const std::string ctx = what + ": post_processor " + type;
  try {
    if (type == "Sequence") {
      if (!j.contains("processors") || !j["processors"].is_array()) fail("{}: 'processors' must be an array", ctx);
      for (const Json& p : j["processors"]) readPostProcessor(p, what, impl);
      return;
    }
    if (type == "ByteLevel") return;  // only adjusts offsets
    if (type == "TemplateProcessing") {
      if (!j.contains("single") || !j["single"].is_array()) fail("{}: 'single' must be an array", ctx);
      const Json& specials = j.contains("special_tokens") ? j["special_tokens"] : Json::object();
      std::vector<int32_t> before, after;
      bool seenSequence = false;
      for (const Json& item : j["single"]) {
        if (item.contains("Sequence")) {
          seenSequence = true;
          continue;
        }
        if (!item.contains("SpecialToken")) fail("{}: template item must be SpecialToken or Sequence", ctx);
        std::string name = item["SpecialToken"].at("id").get<std::string>();
        if (!specials.contains(name)) fail("{}: template names special token '{}' missing from special_tokens", ctx, name);
        for (const Json& id : specials[name].at("ids")) {
          int64_t v = id.get<int64_t>();
          if (v < 0 || v >= INT32_MAX) fail("{}: special token '{}' has id {} out of range", ctx, name, v);
          (seenSequence ? after : before).push_back(int32_t(v));
        }
      }
      // A later processor wraps what earlier ones produced.
      impl.prefix.insert(impl.prefix.begin(), before.begin(), before.end());
      impl.suffix.insert(impl.suffix.end(), after.begin(), after.end());
      return;
    }
    if (type == "BertProcessing" || type == "RobertaProcessing") {
      int64_t cls = j.at("cls").at(1).get<int64_t>(), sep = j.at("sep").at(1).get<int64_t>();
      if (cls < 0 || sep < 0 || cls >= INT32_MAX || sep >= INT32_MAX) fail("{}: cls / sep id out of range", ctx);
      impl.prefix.insert(impl.prefix.begin(), int32_t(cls));
      impl.suffix.push_back(int32_t(sep));
      return;
    }
  } catch (const Json::exception& e) {
    fail("{}: {}", ctx, e.what());
  }
  fail("{} is not supported (supported: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, "
       "Sequence)",
       ctx);
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::fromDir(const std::string& dir) {
  fs::path d(dir);
  if (fs::is_regular_file(d / "tokenizer.json")) return fromJsonFile((d / "tokenizer.json").string());
  if (fs::is_regular_file(d / "tiktoken.model"))
    return fromTiktoken((d / "tiktoken.model").string(), (d / "tiktoken_config.json").string());
  fail("{}: no tokenizer.json or tiktoken.model", dir);
}

std::unique_ptr<Tokenizer> Tokenizer::fromJsonFile(const std::string& path) {
  Json j = readJsonFile(path);
  auto impl = std::make_unique<Impl>();
  impl->what = path;
  if (!j.is_object()) fail("{}: expected a JSON object", path);
  if (!j.contains("model")) fail("{}: missing 'model'", path);
  static const Json null;
  auto get = [&](const char* key) -> const Json& { return j.contains(key) ? j[key] : null; };

  impl->bpe = std::make_unique<BpeModel>(j["model"], path);
  impl->normalizer = makeNormalizer(get("normalizer"), path);
  impl->pre = makePreTokenizer(get("pre_tokenizer"), path);
  impl->decoder = DecoderChain::fromJson(get("decoder"), path);

  // Added tokens.
  const Json& added = get("added_tokens");
  if (!added.is_null() && !added.is_array()) fail("{}: 'added_tokens' must be an array", path);
  if (added.is_array()) {
    for (const Json& a : added) {
      AddedToken t;
      try {
        int64_t id = a.at("id").get<int64_t>();
        if (id < 0 || id >= INT32_MAX) fail("{}: added token id {} out of range", path, id);
        t.id = int32_t(id);
        t.content = a.at("content").get<std::string>();
        t.special = a.value("special", false);
        t.lstrip = a.value("lstrip", false);
        t.rstrip = a.value("rstrip", false);
        t.singleWord = a.value("single_word", false);
        t.normalized = a.value("normalized", !t.special);
      } catch (const Json::exception& e) {
        fail("{}: added_tokens: {}", path, e.what());
      }
      if (t.content.empty()) fail("{}: added token {} has empty content", path, t.id);
      if (utf8::firstInvalid(t.content) != utf8::kValid) fail("{}: added token {} is not UTF-8", path, t.id);
      impl->added.push_back(std::move(t));
    }
  }
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const AddedToken& t = impl->added[i];
    impl->addedByText.emplace(t.content, t.id);
    if (t.normalized) {
      std::string n = t.content;
      if (impl->normalizer) impl->normalizer->normalize(n);
      impl->normTrie.add(n, int32_t(i));
    } else {
      impl->rawTrie.add(t.content, int32_t(i));
    }
  }
  const BpeModel& model = *impl->bpe;
  impl->buildIdTable(size_t(model.size()), [&](int32_t id) { return model.tokenText(id); });

  readPostProcessor(get("post_processor"), path, *impl);
  for (int32_t id : impl->prefix) impl->checkId(id);
  for (int32_t id : impl->suffix) impl->checkId(id);
  impl->readConfigs(fs::path(path).parent_path());
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::unique_ptr<Tokenizer> Tokenizer::fromTiktoken(const std::string& modelPath, const std::string& configPath) {
  auto impl = std::make_unique<Impl>();
  impl->what = modelPath;
  impl->tiktoken = true;
  readTiktokenModel(modelPath, impl->tik);
  fs::path dir = fs::path(modelPath).parent_path();
  if (fs::exists(configPath)) {
    readTiktokenConfig(configPath, impl->tik);
  } else if (fs::exists(dir / "tokenizer_config.json")) {
    kimiDefaults((dir / "tokenizer_config.json").string(), impl->tik);
  } else {
    fail("{}: no {} (nor tokenizer_config.json beside it) for the split pattern and special tokens", modelPath,
         configPath);
  }
  impl->pattern = std::make_unique<Regex>(impl->tik.pattern, configPath + ": pat_str");
  for (const auto& [text, id] : impl->tik.specials) {
    if (text.empty() || utf8::firstInvalid(text) != utf8::kValid)
      fail("{}: special token {} must be non-empty UTF-8", configPath, id);
    AddedToken t;
    t.content = text;
    t.id = id;
    t.special = true;
    impl->added.push_back(std::move(t));
  }
  for (size_t i = 0; i < impl->added.size(); ++i) {
    impl->addedByText.emplace(impl->added[i].content, impl->added[i].id);
    impl->rawTrie.add(impl->added[i].content, int32_t(i));
  }
  const TiktokenFiles& tik = impl->tik;
  impl->buildIdTable(tik.tokens.size(), [&](int32_t id) -> const std::string* {
    const std::string& s = tik.tokens[size_t(id)];
    return s.empty() ? nullptr : &s;
  });
  impl->decoder = DecoderChain::rawBytes();
  impl->readConfigs(dir);
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

// ---------------------------------------------------------------------------------------------------
// Encoding / decoding

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool addSpecial) const {
  const Impl& m = *impl_;
  size_t bad = utf8::firstInvalid(text);
  if (bad != utf8::kValid) fail("invalid UTF-8 at byte {}", bad);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  if (addSpecial) ids = m.prefix;
  std::vector<Segment> segs;
  if (m.rawTrie.empty()) {
    m.encodeStretch(text, true, ids);
  } else {
    splitAdded(text, m.rawTrie, m.added, segs);
    for (const Segment& g : segs) {
      if (g.id >= 0)
        ids.push_back(g.id);
      else
        m.encodeStretch(text.substr(g.start, g.end - g.start), g.start == 0, ids);
    }
  }
  if (addSpecial) ids.insert(ids.end(), m.suffix.begin(), m.suffix.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skipSpecial) const {
  const Impl& m = *impl_;
  std::vector<std::string_view> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    m.checkId(id);
    if (skipSpecial && m.idState[size_t(id)] == 2) continue;
    toks.push_back(m.idText[size_t(id)]);
  }
  return m.decoder.run(toks, true, true).text;
}

int32_t Tokenizer::vocabSize() const { return int32_t(impl_->idState.size()); }

std::optional<int32_t> Tokenizer::tokenId(std::string_view tokenText) const { return impl_->lookup(tokenText); }

std::string Tokenizer::tokenText(int32_t id) const {
  impl_->checkId(id);
  return impl_->idText[size_t(id)];
}

bool Tokenizer::isSpecial(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->idState.size() && impl_->idState[size_t(id)] == 2;
}

std::optional<int32_t> Tokenizer::bosId() const { return impl_->bos; }
std::vector<int32_t> Tokenizer::eosIds() const { return impl_->eos; }
const std::string& Tokenizer::bosToken() const { return impl_->bosToken; }
const std::string& Tokenizer::eosToken() const { return impl_->eosToken; }

// ---------------------------------------------------------------------------------------------------
// StreamDecoder

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skipSpecial)
    : tok_(tokenizer), skipSpecial_(skipSpecial) {}

std::string StreamDecoder::push(int32_t id) {
  const Tokenizer::Impl& m = *tok_.impl_;
  m.checkId(id);
  if (skipSpecial_ && m.idState[size_t(id)] == 2) return {};
  window_.push_back(m.idText[size_t(id)]);
  // A trailing run of <0xNN> tokens may still grow (ByteFallback validates a run as a whole).
  size_t ready = window_.size();
  if (m.decoder.hasByteFallback())
    while (ready > 0 && DecoderChain::isByteToken(window_[ready - 1])) --ready;
  DecoderChain::Output o =
      m.decoder.run(std::vector<std::string_view>(window_.begin(), window_.begin() + long(ready)), atStart_, false);
  if (o.text.size() < emitted_) fail("StreamDecoder: internal error: decoded text shrank");
  std::string out = o.text.substr(emitted_);
  emitted_ = o.text.size();
  // Everything so far is final: start a new window.
  if (ready == window_.size() && o.pendingBytes == 0 && (!atStart_ || o.startSettled)) {
    window_.clear();
    emitted_ = 0;
    atStart_ = false;
  }
  return out;
}

std::string StreamDecoder::flush() {
  if (window_.empty()) return {};
  const Tokenizer::Impl& m = *tok_.impl_;
  DecoderChain::Output o =
      m.decoder.run(std::vector<std::string_view>(window_.begin(), window_.end()), atStart_, true);
  std::string out = o.text.size() > emitted_ ? o.text.substr(emitted_) : std::string();
  window_.clear();
  emitted_ = 0;
  atStart_ = false;
  return out;
}

}  // namespace doppler
