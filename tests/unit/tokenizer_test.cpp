#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/json_util.h"
#include "format/safetensors.h"
#include "test_util.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/regex.h"
#include "tokenizer/tiktoken.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

using namespace doppler;
using doppler::test::dataPath;
using doppler::test::TempDir;

namespace {

std::string tokDir(const std::string& kind) { return dataPath("tokenizers/" + kind); }

std::vector<int32_t> idsOf(const Json& j) { return j.get<std::vector<int32_t>>(); }

// Everything a StreamDecoder returns for ids, one push at a time, then flush; checks that no chunk
// splits a UTF-8 character.
std::string streamed(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skipSpecial = false) {
  StreamDecoder dec(tok, skipSpecial);
  std::string all;
  for (int32_t id : ids) {
    std::string chunk = dec.push(id);
    EXPECT_EQ(utf8::firstInvalid(chunk), utf8::kValid) << "chunk splits a character";
    all += chunk;
  }
  std::string rest = dec.flush();
  EXPECT_EQ(utf8::firstInvalid(rest), utf8::kValid);
  return all + rest;
}

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

std::string errorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ----------------------------------------------------------------------------------------------------
// Reference cases (transformers / tiktoken ids)

void checkCases(const std::string& kind, bool hasWithSpecial) {
  auto tok = Tokenizer::fromDir(tokDir(kind));
  Json cases = readJsonFile(tokDir(kind) + "/cases.json");
  ASSERT_EQ(cases.size(), 18u);
  for (const Json& c : cases) {
    const std::string text = c["text"];
    SCOPED_TRACE(kind + ": " + text);
    const std::vector<int32_t> ids = idsOf(c["ids"]);
    EXPECT_EQ(tok->encode(text, false), ids);
    // tiktoken's cases have no ids_with_special: its tokenizer adds nothing, so both modes give `ids`.
    EXPECT_EQ(tok->encode(text, true), hasWithSpecial ? idsOf(c["ids_with_special"]) : ids);
    EXPECT_EQ(tok->decode(ids), c["decoded"].get<std::string>());
    EXPECT_EQ(streamed(*tok, ids), tok->decode(ids));
    if (hasWithSpecial) {
      const std::vector<int32_t> withSpecial = idsOf(c["ids_with_special"]);
      EXPECT_EQ(streamed(*tok, withSpecial), tok->decode(withSpecial));
      EXPECT_EQ(streamed(*tok, withSpecial, true), tok->decode(withSpecial, true));
      std::vector<int32_t> plain;
      for (int32_t id : withSpecial)
        if (!tok->isSpecial(id)) plain.push_back(id);
      EXPECT_EQ(tok->decode(withSpecial, true), tok->decode(plain));
    }
  }
}

TEST(Tokenizer, ByteLevelCasesMatchTransformers) { checkCases("bytelevel", true); }
TEST(Tokenizer, MetaspaceByteFallbackCasesMatchTransformers) { checkCases("spm", true); }
TEST(Tokenizer, TiktokenCasesMatchTiktoken) { checkCases("tiktoken", false); }

TEST(Tokenizer, TrainedModelPromptIdsMatchReference) {
  // models/qwen3moe-code-9m: reference.safetensors prompt_ids for "def fibonacci(n):\n" (no BOS).
  auto tok = Tokenizer::fromDir(std::string(DOPPLER_SOURCE_DIR) + "/models/qwen3moe-code-9m");
  const std::vector<int32_t> expected = {331, 283, 597, 261, 1780, 3787, 763, 336};
  EXPECT_EQ(tok->encode("def fibonacci(n):\n", true), expected);
  EXPECT_EQ(tok->encode("def fibonacci(n):\n", false), expected);
  EXPECT_EQ(tok->decode(expected), "def fibonacci(n):\n");
  EXPECT_EQ(tok->vocabSize(), 4096);
  EXPECT_FALSE(tok->bosId().has_value());
  EXPECT_EQ(tok->eosIds(), std::vector<int32_t>{4094});
  EXPECT_EQ(tok->eosToken(), "<|endoftext|>");
  EXPECT_EQ(tok->bosToken(), "");
  EXPECT_TRUE(tok->isSpecial(4094));
}

TEST(Tokenizer, ModelFixturePromptIdsMatchReference) {
  // Each model fixture's reference.safetensors holds its prompt (metadata prompt_text) tokenized by
  // transformers with BOS: byte-level (llama, qwen3_moe, gpt_oss, deepseek_v3) and metaspace (mixtral, phimoe).
  for (const std::string arch : {"llama", "mixtral", "qwen3_moe", "gpt_oss", "phimoe", "deepseek_v3"}) {
    SCOPED_TRACE(arch);
    const std::string dir = dataPath("hf/" + arch);
    SafetensorsFile ref(dir + "/reference.safetensors");
    const SafetensorInfo* t = ref.find("prompt_ids");
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->dtype, DType::I32);
    std::span<const uint8_t> bytes = ref.bytes(*t);
    std::vector<int32_t> expected(bytes.size() / 4);
    std::memcpy(expected.data(), bytes.data(), bytes.size());
    ASSERT_GT(expected.size(), 30u);
    auto tok = Tokenizer::fromDir(dir);
    const std::string text = ref.metadata().at("prompt_text");
    EXPECT_EQ(tok->encode(text, true), expected);
    EXPECT_EQ(tok->bosId(), expected[0]);
    EXPECT_EQ(streamed(*tok, expected, true), text);
  }
}

// ----------------------------------------------------------------------------------------------------
// Special tokens, configs, API

TEST(Tokenizer, SpecialTokensInTextMapToTheirIds) {
  auto tok = Tokenizer::fromDir(tokDir("bytelevel"));
  EXPECT_EQ(tok->encode("<|eot_id|>", false), std::vector<int32_t>{1021});
  EXPECT_EQ(tok->encode("<|eot_id|>", true), (std::vector<int32_t>{1017, 1021}));
  std::vector<int32_t> ids = tok->encode("a<|start_header_id|>b<|end_header_id|>", false);
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[1], 1019);
  EXPECT_EQ(ids[3], 1020);
  EXPECT_EQ(tok->decode(ids), "a<|start_header_id|>b<|end_header_id|>");
  EXPECT_EQ(tok->decode(ids, true), "ab");
  // A prefix of a special token is plain text.
  std::vector<int32_t> partial = tok->encode("<|eot_id", false);
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 1021), 0);
  EXPECT_EQ(tok->decode(partial), "<|eot_id");

  auto spm = Tokenizer::fromDir(tokDir("spm"));
  EXPECT_EQ(spm->encode("</s>", false), std::vector<int32_t>{2});
  auto tik = Tokenizer::fromDir(tokDir("tiktoken"));
  EXPECT_EQ(tik->encode("x<|eot_id|>", false).back(), 1021);
}

TEST(Tokenizer, VocabularyAndConfigAccessors) {
  auto tok = Tokenizer::fromDir(tokDir("bytelevel"));
  EXPECT_EQ(tok->vocabSize(), 1024);
  EXPECT_EQ(tok->bosId(), 1017);
  EXPECT_EQ(tok->bosToken(), "<|begin_of_text|>");
  EXPECT_EQ(tok->eosToken(), "<|eot_id|>");
  EXPECT_EQ(tok->eosIds(), std::vector<int32_t>{1021});
  EXPECT_EQ(tok->tokenId("<|eot_id|>"), 1021);
  EXPECT_EQ(tok->tokenText(1021), "<|eot_id|>");
  EXPECT_EQ(tok->tokenText(220), "\xC4\xA0");  // "Ġ", byte-level space
  EXPECT_EQ(tok->tokenId("\xC4\xA0"), 220);
  EXPECT_FALSE(tok->tokenId("no such token").has_value());
  EXPECT_TRUE(tok->isSpecial(1017));
  EXPECT_FALSE(tok->isSpecial(220));
  EXPECT_FALSE(tok->isSpecial(-1));
  EXPECT_THROW(tok->tokenText(5000), Error);
  EXPECT_THROW(tok->decode(std::vector<int32_t>{39, 1024}), Error);
  EXPECT_THROW(tok->decode(std::vector<int32_t>{-1}), Error);

  auto spm = Tokenizer::fromDir(tokDir("spm"));
  EXPECT_EQ(spm->bosId(), 1);
  EXPECT_EQ(spm->eosIds(), std::vector<int32_t>{2});
  EXPECT_EQ(spm->tokenId("<0x0A>"), 13);
  EXPECT_EQ(spm->encode("\n", false), (std::vector<int32_t>{438, 260}));  // "▁" "\n"

  auto tik = Tokenizer::fromDir(tokDir("tiktoken"));
  EXPECT_EQ(tik->vocabSize(), 1024);
  EXPECT_FALSE(tik->bosId().has_value());
  EXPECT_TRUE(tik->isSpecial(1022));
  EXPECT_FALSE(tik->isSpecial(64));
  EXPECT_EQ(tik->tokenText(64), "a");
  EXPECT_EQ(tik->tokenId("<|im_end|>"), 1023);
}

TEST(Tokenizer, AddBosTokenFromTokenizerConfig) {
  TempDir tmp;
  std::filesystem::copy_file(tokDir("spm") + "/tokenizer.json", tmp / "tokenizer.json");
  writeFile(tmp / "tokenizer_config.json", R"({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false,
      "add_eos_token": true})");
  auto tok = Tokenizer::fromDir(tmp.path());
  std::vector<int32_t> plain = tok->encode("Hello", false);
  std::vector<int32_t> withSpecial = tok->encode("Hello", true);
  plain.push_back(2);
  EXPECT_EQ(withSpecial, plain);
  EXPECT_EQ(tok->bosId(), 1);  // tokenizer_config.json's bos_token, though not added
}

// ----------------------------------------------------------------------------------------------------
// Errors

TEST(Tokenizer, InvalidUtf8IsAnError) {
  auto tok = Tokenizer::fromDir(tokDir("bytelevel"));
  EXPECT_EQ(errorOf([&] { tok->encode("abc\xFF"); }), "invalid UTF-8 at byte 3");
  EXPECT_EQ(errorOf([&] { tok->encode("ok \xE2\x82"); }), "invalid UTF-8 at byte 3");      // truncated
  EXPECT_EQ(errorOf([&] { tok->encode("\xC0\x80"); }), "invalid UTF-8 at byte 0");         // overlong
  EXPECT_EQ(errorOf([&] { tok->encode("x\xED\xA0\x80"); }), "invalid UTF-8 at byte 1");    // surrogate
  auto tik = Tokenizer::fromDir(tokDir("tiktoken"));
  EXPECT_EQ(errorOf([&] { tik->encode("\xF4\x90\x80\x80"); }), "invalid UTF-8 at byte 0");  // > U+10FFFF
}

TEST(Tokenizer, MissingTokenizerNamesTheDirectory) {
  TempDir tmp;
  std::string msg = errorOf([&] { Tokenizer::fromDir(tmp.path()); });
  EXPECT_EQ(msg, tmp.path() + ": no tokenizer.json or tiktoken.model");
}

TEST(Tokenizer, MalformedTokenizerJsonIsAnError) {
  TempDir tmp;
  std::string path = tmp / "tokenizer.json";
  writeFile(path, "{\"model\": {\"type\": \"BPE\", ");
  EXPECT_NE(errorOf([&] { Tokenizer::fromJsonFile(path); }).find("invalid JSON"), std::string::npos);

  Json j = readJsonFile(tokDir("bytelevel") + "/tokenizer.json");
  j["model"]["merges"].push_back(Json::array({"\xC4\xA0", "nosuchtoken"}));
  writeFile(path, j.dump());
  std::string msg = errorOf([&] { Tokenizer::fromJsonFile(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown token 'nosuchtoken'"), std::string::npos) << msg;

  j = readJsonFile(tokDir("spm") + "/tokenizer.json");
  j["model"]["merges"][0] = "\xE2\x96\x81 nosuchtoken";
  writeFile(path, j.dump());
  EXPECT_NE(errorOf([&] { Tokenizer::fromJsonFile(path); }).find("unknown token 'nosuchtoken'"), std::string::npos);

  j = readJsonFile(tokDir("spm") + "/tokenizer.json");
  j["model"]["type"] = "Unigram";
  writeFile(path, j.dump());
  EXPECT_NE(errorOf([&] { Tokenizer::fromJsonFile(path); }).find("model type Unigram is not supported"),
            std::string::npos);

  j = readJsonFile(tokDir("spm") + "/tokenizer.json");
  j["normalizer"] = Json{{"type", "NFKC"}};
  writeFile(path, j.dump());
  EXPECT_NE(errorOf([&] { Tokenizer::fromJsonFile(path); }).find("normalizer NFKC is not supported"),
            std::string::npos);

  j = readJsonFile(tokDir("bytelevel") + "/tokenizer.json");
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  writeFile(path, j.dump());
  EXPECT_NE(errorOf([&] { Tokenizer::fromJsonFile(path); }).find("cannot compile regex"), std::string::npos);

  j = readJsonFile(tokDir("bytelevel") + "/tokenizer.json");
  j["model"]["vocab"]["duplicate"] = 5;
  writeFile(path, j.dump());
  EXPECT_NE(errorOf([&] { Tokenizer::fromJsonFile(path); }).find("vocab id 5 is used by both"), std::string::npos);

  j = readJsonFile(tokDir("spm") + "/tokenizer.json");
  j["decoder"]["decoders"].push_back(Json{{"type", "ByteFallback"}});  // after Fuse
  writeFile(path, j.dump());
  EXPECT_NE(errorOf([&] { Tokenizer::fromJsonFile(path); }).find("after Fuse"), std::string::npos);
}

TEST(Tokenizer, MalformedTiktokenIsAnError) {
  TempDir tmp;
  std::filesystem::copy_file(tokDir("tiktoken") + "/tiktoken_config.json", tmp / "tiktoken_config.json");
  writeFile(tmp / "tiktoken.model", "IQ== 0\nIg== 1\n!!notbase64 2\n");
  EXPECT_EQ(errorOf([&] { Tokenizer::fromDir(tmp.path()); }),
            tmp / "tiktoken.model" + ":3: invalid base64 '!!notbase64'");
  writeFile(tmp / "tiktoken.model", "IQ== 0\nIg== x\n");
  EXPECT_EQ(errorOf([&] { Tokenizer::fromDir(tmp.path()); }), tmp / "tiktoken.model" + ":2: invalid rank 'x'");
  writeFile(tmp / "tiktoken.model", "IQ== 0\nIQ== 1\n");
  EXPECT_NE(errorOf([&] { Tokenizer::fromDir(tmp.path()); }).find(":2: token with rank 1 repeats rank 0"),
            std::string::npos);
  // Without tiktoken_config.json nor tokenizer_config.json there is no split pattern.
  std::filesystem::remove(tmp / "tiktoken_config.json");
  writeFile(tmp / "tiktoken.model", "IQ== 0\n");
  EXPECT_NE(errorOf([&] { Tokenizer::fromDir(tmp.path()); }).find("tiktoken_config.json"), std::string::npos);
  // A byte without a token cannot be encoded.
  std::filesystem::copy_file(tokDir("tiktoken") + "/tiktoken_config.json", tmp / "tiktoken_config.json");
  auto tok = Tokenizer::fromDir(tmp.path());
  EXPECT_EQ(tok->encode("!", false), std::vector<int32_t>{0});
  EXPECT_NE(errorOf([&] { tok->encode("z", false); }).find("no token for byte 0x7A"), std::string::npos);
}

TEST(Tokenizer, KimiDefaultsWithoutTiktokenConfig) {
  // Kimi K2 ships tiktoken.model + tokenizer_config.json (added_tokens_decoder) only.
  TempDir tmp;
  std::filesystem::copy_file(tokDir("tiktoken") + "/tiktoken.model", tmp / "tiktoken.model");
  writeFile(tmp / "tokenizer_config.json", R"({"bos_token": "[BOS]", "eos_token": "[EOS]",
      "added_tokens_decoder": {"1017": {"content": "[BOS]", "special": true},
                               "1018": {"content": "[EOS]", "special": true}}})");
  auto tok = Tokenizer::fromDir(tmp.path());
  EXPECT_EQ(tok->vocabSize(), 1017 + 256);
  EXPECT_EQ(tok->bosId(), 1017);
  EXPECT_EQ(tok->eosIds(), std::vector<int32_t>{1018});
  EXPECT_EQ(tok->tokenId("<|reserved_token_1019|>"), 1019);
  EXPECT_EQ(tok->encode("[EOS]", false), std::vector<int32_t>{1018});
  EXPECT_TRUE(tok->isSpecial(1272));
  // The same text as the fixture case, split by Kimi's pattern (same pieces for plain English).
  EXPECT_EQ(tok->encode("Hello world", false), (std::vector<int32_t>{39, 68, 75, 338, 310, 267, 545}));
}

Json tinyMetaspaceTokenizer(const std::string& scheme) {
  return Json::parse(R"({
    "version": "1.0",
    "added_tokens": [
      {"id": 0, "content": "<unk>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false},
      {"id": 7, "content": "<x>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false},
      {"id": 9, "content": "[M]", "special": false, "normalized": false, "lstrip": true, "rstrip": true, "single_word": false},
      {"id": 10, "content": "cc", "special": false, "normalized": true, "lstrip": false, "rstrip": false, "single_word": true}
    ],
    "normalizer": null,
    "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": ")" + scheme + R"(", "split": true},
    "post_processor": null,
    "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": ")" + scheme + R"(", "split": true},
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false,
      "vocab": {"<unk>": 0, "\u2581": 1, "a": 2, "b": 3, "c": 4, "\u2581a": 5, "\u2581ab": 6, "<x>": 7, "ab": 8},
      "merges": [["\u2581", "a"], ["\u2581a", "b"], "a b"]}
  })");
}

std::unique_ptr<Tokenizer> loadJson(const TempDir& tmp, const Json& j) {
  writeFile(tmp / "tokenizer.json", j.dump());
  return Tokenizer::fromJsonFile(tmp / "tokenizer.json");
}

// ----------------------------------------------------------------------------------------------------
// Streaming

TEST(StreamDecoder, HoldsBackSplitCharactersAndByteRuns) {
  auto spm = Tokenizer::fromDir(tokDir("spm"));
  // "€" has no token in this vocabulary: it becomes <0xE2> <0x82> <0xAC>.
  std::vector<int32_t> ids = spm->encode("a€ b", false);
  int32_t e2 = *spm->tokenId("<0xE2>"), x82 = *spm->tokenId("<0x82>"), ac = *spm->tokenId("<0xAC>");
  auto at = std::find(ids.begin(), ids.end(), e2);
  ASSERT_NE(at, ids.end());
  ASSERT_LT(at + 3, ids.end());
  ASSERT_EQ(*(at + 1), x82);
  ASSERT_EQ(*(at + 2), ac);
  StreamDecoder dec(*spm);
  std::string out;
  for (auto it = ids.begin(); it != ids.end(); ++it) {
    std::string chunk = dec.push(*it);
    if (it >= at && it < at + 3) {
      EXPECT_EQ(chunk, "") << "byte run emitted before it ended";
    }
    if (it == at + 3) {
      EXPECT_EQ(chunk.substr(0, 3), "€");
    }
    out += chunk;
  }
  out += dec.flush();
  EXPECT_EQ(out, "a€ b");

  auto bl = Tokenizer::fromDir(tokDir("bytelevel"));
  ids = bl->encode("🙂", false);  // 4 bytes over several tokens
  ASSERT_GT(ids.size(), 1u);
  StreamDecoder d2(*bl);
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    EXPECT_EQ(d2.push(ids[i]), "");
  }
  EXPECT_EQ(d2.push(ids.back()), "🙂");
  // A character left unfinished becomes U+FFFD at flush, as decode() does.
  StreamDecoder d3(*bl);
  EXPECT_EQ(d3.push(ids[0]), "");
  EXPECT_EQ(d3.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(bl->decode(std::vector<int32_t>{ids[0]}), "\xEF\xBF\xBD");
}

TEST(StreamDecoder, LeadingSpaceOfMetaspaceStrippedOnlyAtStart) {
  auto spm = Tokenizer::fromDir(tokDir("spm"));
  std::vector<int32_t> ids = spm->encode("Hello world", false);
  StreamDecoder dec(*spm);
  std::vector<std::string> chunks;
  for (int32_t id : ids) chunks.push_back(dec.push(id));
  // ids[0] is "▁" alone: nothing is certain until the next token shows the space is the leading one.
  EXPECT_EQ(spm->tokenText(ids[0]), "\xE2\x96\x81");
  EXPECT_EQ(chunks[0], "");
  EXPECT_EQ(chunks[1], "H");
  std::string all;
  for (auto& c : chunks) all += c;
  EXPECT_EQ(all + dec.flush(), "Hello world");
}

TEST(StreamDecoder, StripOfSeveralLeadingCharacters) {
  // Strip(start=2) after Fuse: a first token that is only one space must not end the stream's start.
  TempDir tmp;
  Json j = tinyMetaspaceTokenizer("always");
  j["decoder"] = Json::parse(R"({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 2, "stop": 0}]})");
  auto tok = loadJson(tmp, j);
  const std::vector<int32_t> ids = {1, 1, 1, 2};  // "▁" "▁" "▁" "a"
  EXPECT_EQ(tok->decode(ids), " a");
  EXPECT_EQ(streamed(*tok, ids), " a");
  EXPECT_EQ(streamed(*tok, {1, 2}), "a");
  EXPECT_EQ(streamed(*tok, {1}), "");
}

TEST(StreamDecoder, RandomSequencesEqualDecode) {
  std::mt19937 rng(1234);
  for (const std::string kind : {"bytelevel", "spm", "tiktoken"}) {
    auto tok = Tokenizer::fromDir(tokDir(kind));
    std::vector<int32_t> valid;
    for (int32_t id = 0; id < tok->vocabSize(); ++id) {
      try {
        tok->tokenText(id);
        valid.push_back(id);
      } catch (const Error&) {
      }
    }
    ASSERT_GT(valid.size(), 1000u);
    // Byte tokens and specials are where streaming is subtle: draw them often.
    std::vector<int32_t> subtle;
    for (int32_t id : valid)
      if (tok->isSpecial(id) || DecoderChain::isByteToken(tok->tokenText(id)) || tok->tokenText(id).size() == 1 ||
          utf8::firstInvalid(tok->tokenText(id)) != utf8::kValid)
        subtle.push_back(id);
    for (int round = 0; round < 400; ++round) {
      std::vector<int32_t> ids(1 + rng() % 24);
      for (int32_t& id : ids)
        id = (rng() % 2 && !subtle.empty()) ? subtle[rng() % subtle.size()] : valid[rng() % valid.size()];
      for (bool skip : {false, true}) {
        std::string want = tok->decode(ids, skip);
        ASSERT_EQ(streamed(*tok, ids, skip), want) << kind << " round " << round;
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------------
// Pipeline pieces on a hand-made tokenizer (expected ids worked out by hand from the merges)

TEST(Tokenizer, MetaspaceAddedTokenOptionsAndUnk) {
  TempDir tmp;
  auto tok = loadJson(tmp, tinyMetaspaceTokenizer("first"));
  using V = std::vector<int32_t>;
  EXPECT_EQ(tok->encode("ab ab", false), (V{6, 6}));  // "▁ab" "▁ab"
  EXPECT_EQ(tok->decode(V{6, 6}), "ab ab");
  EXPECT_EQ(tok->encode("<x>ab", false), (V{7, 8}));  // prepend_scheme first: no ▁ after <x>
  EXPECT_EQ(tok->decode(V{7, 8}), "<x>ab");
  EXPECT_EQ(tok->encode("a  [M]  b", false), (V{5, 9, 3}));  // lstrip + rstrip eat the spaces
  EXPECT_EQ(tok->encode("cc ccc", false), (V{10, 1, 4, 4, 4}));  // single_word: "cc" inside "ccc" is not it
  EXPECT_EQ(tok->encode("a \xC3\xA9\xC3\xA9", false), (V{5, 1, 0}));  // unknown "éé" fused into one <unk>
  EXPECT_EQ(tok->decode(V{1, 2}), "a");  // the first token's ▁ is dropped
  EXPECT_EQ(tok->decode(V{2, 1, 2}), "a a");

  auto always = loadJson(tmp, tinyMetaspaceTokenizer("always"));
  EXPECT_EQ(always->encode("<x>ab", false), (V{7, 6}));
  auto never = loadJson(tmp, tinyMetaspaceTokenizer("never"));
  EXPECT_EQ(never->encode("ab ab", false), (V{8, 6}));
  EXPECT_EQ(never->decode(V{1, 2}), " a");

  Json j = tinyMetaspaceTokenizer("first");
  j["model"]["fuse_unk"] = false;
  EXPECT_EQ(loadJson(tmp, j)->encode("a \xC3\xA9\xC3\xA9", false), (V{5, 1, 0, 0}));
  j["model"]["ignore_merges"] = true;
  j["model"]["merges"] = Json::array();
  // Without merges only whole-word vocabulary hits produce multi-character tokens.
  EXPECT_EQ(loadJson(tmp, j)->encode("ab ab", false), (V{6, 6}));
  EXPECT_EQ(loadJson(tmp, j)->encode("abab", false), (V{1, 2, 3, 2, 3}));
}

TEST(PreTokenizer, SplitBehaviors) {
  auto run = [](const std::string& behavior, bool invert, const std::string& text) {
    Json j = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
    auto pre = makePreTokenizer(j, "test");
    std::vector<Piece> pieces{{text, true}};
    pre->apply(pieces);
    std::vector<std::string> out;
    for (auto& p : pieces) out.push_back(p.text);
    return out;
  };
  using S = std::vector<std::string>;
  EXPECT_EQ(run("Removed", false, "a-b--c"), (S{"a", "b", "c"}));
  EXPECT_EQ(run("Isolated", false, "a-b--c"), (S{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(run("MergedWithPrevious", false, "a-b--c"), (S{"a-", "b-", "-", "c"}));
  EXPECT_EQ(run("MergedWithNext", false, "a-b--c"), (S{"a", "-b", "-", "-c"}));
  EXPECT_EQ(run("Contiguous", false, "a-b--c"), (S{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(run("Removed", true, "a-b--c"), (S{"-", "-", "-"}));
  EXPECT_EQ(run("Isolated", false, ""), S{});

  auto pieces = [](const Json& j, const std::string& text) {
    auto pre = makePreTokenizer(j, "test");
    std::vector<Piece> p{{text, true}};
    pre->apply(p);
    S out;
    for (auto& x : p) out.push_back(x.text);
    return out;
  };
  EXPECT_EQ(pieces({{"type", "Digits"}, {"individual_digits", true}}, "ab123c4"), (S{"ab", "1", "2", "3", "c", "4"}));
  EXPECT_EQ(pieces({{"type", "Digits"}, {"individual_digits", false}}, "ab123c4"), (S{"ab", "123", "c", "4"}));
  EXPECT_EQ(pieces({{"type", "ByteLevel"}, {"add_prefix_space", true}}, "hello world"),
            (S{"\xC4\xA0hello", "\xC4\xA0world"}));
  EXPECT_EQ(pieces({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}, "a b\n"),
            (S{"a\xC4\xA0" "b\xC4\x8A"}));
  EXPECT_EQ(pieces({{"type", "WhitespaceSplit"}}, " a  b\tc "), (S{"a", "b", "c"}));
  EXPECT_EQ(pieces({{"type", "Whitespace"}}, "hi, you!"), (S{"hi", ",", "you", "!"}));
  EXPECT_EQ(pieces({{"type", "Metaspace"}, {"prepend_scheme", "always"}, {"split", false}}, "a b"),
            (S{"\xE2\x96\x81" "a\xE2\x96\x81" "b"}));
  EXPECT_THROW(makePreTokenizer({{"type", "Punctuation"}}, "test"), Error);
}

TEST(Regex, LlamaThreeAndKimiPatterns) {
  auto split = [](const std::string& pattern, const std::string& text) {
    Regex re(pattern, "test");
    std::vector<std::string> out;
    re.forEachMatch(text, [&](size_t s, size_t e) { out.push_back(text.substr(s, e - s)); });
    return out;
  };
  using S = std::vector<std::string>;
  const std::string llama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  // Expected pieces computed with Python's `regex` module. U+180E is not White_Space; U+0085 is.
  EXPECT_EQ(split(llama3, "Hello world\xE1\xA0\x8E  x\xC2\x85y  "),
            (S{"Hello", " world", "\xE1\xA0\x8E", " ", " x", "\xC2\x85y", "  "}));
  EXPECT_EQ(split(llama3, "WE'RE 12345"), (S{"WE", "'RE", " ", "123", "45"}));
  EXPECT_EQ(split(kKimiPattern, "Hello世界World's HTTPServer 12345 日本語のテキスト  x"),
            (S{"Hello", "世界", "World's", " HTTPServer", " ", "123", "45", " ", "日本語", "のテキスト", " ", " x"}));
  EXPECT_EQ(Regex::translate(R"([\p{L}&&[^\p{Han}]]+)"), R"((?:(?=[^\p{Han}])[\p{L}])+)");
  // Oniguruma's \uHHHH escape (DeepSeek-V3's kana / CJK split).
  EXPECT_EQ(split(R"([\u3040-\u309F]+|\\u)", "ab\xE3\x81\xB2\xE3\x82\x89" "c\\u"), (S{"\xE3\x81\xB2\xE3\x82\x89", "\\u"}));
  EXPECT_THROW(Regex("(", "test"), Error);
}

// ----------------------------------------------------------------------------------------------------
// Decoders, UTF-8, NFC

TEST(Decoder, ByteFallbackRunsAndStrip) {
  Json spm = readJsonFile(tokDir("spm") + "/tokenizer.json");
  DecoderChain d = DecoderChain::fromJson(spm["decoder"], "test");
  EXPECT_EQ(d.run({"\xE2\x96\x81Hello", "<0xE2>", "<0x82>", "<0xAC>", "\xE2\x96\x81", "<0xFF>"}, true, true).text,
            "Hello\xE2\x82\xAC \xEF\xBF\xBD");
  // An invalid run turns every byte of the run into U+FFFD.
  EXPECT_EQ(d.run({"<0xE2>", "<0x82>", "a"}, true, true).text, "\xEF\xBF\xBD\xEF\xBF\xBD" "a");
  EXPECT_EQ(d.run({"\xE2\x96\x81" "a"}, false, true).text, " a");  // not the first token: space kept
  DecoderChain none = DecoderChain::fromJson(Json(), "test");
  EXPECT_EQ(none.run({"a", "b"}, true, true).text, "a b");
}

TEST(Utf8, ValidationAndLossyConversion) {
  EXPECT_EQ(utf8::firstInvalid("plain ascii text, long enough for the fast path"), utf8::kValid);
  EXPECT_EQ(utf8::firstInvalid("\xF0\x9F\x99\x82"), utf8::kValid);
  EXPECT_EQ(utf8::firstInvalid("0123456789\x80"), 10u);
  auto lossy = [](const std::string& s) {
    std::string o;
    utf8::appendLossy(o, s);
    return o;
  };
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("\xE2\x82" "A"), r + "A");    // a cut character is one maximal subpart
  EXPECT_EQ(lossy("\xC0\xAF"), r + r);           // C0 never starts a sequence
  EXPECT_EQ(lossy("\xED\xA0\x80"), r + r + r);   // surrogates are not characters
  EXPECT_EQ(lossy("a\xF0\x9F\x98"), "a" + r);
  EXPECT_EQ(utf8::incompleteTail("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(utf8::incompleteTail("a\xE2\x82\xAC"), 0u);
  EXPECT_EQ(utf8::incompleteTail("a\xE0\x80"), 0u);  // invalid whatever follows
  EXPECT_EQ(utf8::charToByte(0x120), ' ');           // "Ġ"
  EXPECT_EQ(utf8::charToByte(0x100), 0);
  EXPECT_EQ(utf8::byteToChar()[' '], char32_t(0x120));
  EXPECT_EQ(utf8::charToByte('A'), 'A');
}

TEST(Normalizer, NfcMatchesPythonUnicodedata) {
  // Expected strings from Python's unicodedata.normalize('NFC', ...), Unicode 14.0.
  EXPECT_EQ(toNfc("e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(toNfc("\xE1\xB8\x8B\xCC\xA3"), "\xE1\xB8\x8D\xCC\x87");          // reordering, then composition
  EXPECT_EQ(toNfc("q\xCC\x87\xCC\xA3"), "q\xCC\xA3\xCC\x87");                // reordering only
  EXPECT_EQ(toNfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // Hangul L V T
  EXPECT_EQ(toNfc("\xE2\x84\xAB"), "\xC3\x85");                              // singleton: Angstrom sign
  EXPECT_EQ(toNfc("\xE0\xA5\x98"), "\xE0\xA4\x95\xE0\xA4\xBC");              // composition exclusion
  EXPECT_EQ(toNfc("A\xCC\x8A\xCC\x81"), "\xC7\xBA");                         // two-step composition
  EXPECT_EQ(toNfc("plain"), "plain");
  // Through tokenizer.json.
  auto n = makeNormalizer({{"type", "Sequence"},
                           {"normalizers",
                            {{{"type", "NFC"}},
                             {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", " "}},
                             {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
                             {{"type", "Prepend"}, {"prepend", ">"}}}}},
                          "test");
  std::string s = "  e\xCC\x81  x\t ";
  n->normalize(s);
  EXPECT_EQ(s, ">\xC3\xA9 x");
}

}  // namespace
