// Chat templates from tokenizer_config.json, rendered like transformers' apply_chat_template(tokenize=False).
//
// The template sees: messages, add_generation_prompt, bos_token, eos_token, tools (none), documents (none),
// then the members of extraContext (which may override any of them, e.g. tools, date_string,
// enable_thinking). Rendering uses src/tokenizer/jinja.h with trim_blocks and lstrip_blocks on.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "tokenizer/jinja.h"

namespace doppler {

class ChatTemplate {
 public:
  // Reads "chat_template" (a string, or a list of {name, template} from which "default" is taken) and
  // bos_token / eos_token (a string or an {"content": ...} object). nullopt when the config has no template;
  // doppler::Error when the file is unreadable or the template does not parse.
  static std::optional<ChatTemplate> fromTokenizerConfig(const std::string& tokenizerConfigPath);

  ChatTemplate(std::string source, std::string bosToken, std::string eosToken);

  // messages: a JSON array of {"role", "content", ...} objects. Use the ordered_json overload to keep the
  // key order of nested objects (it shows in templates that print tool calls with tojson).
  std::string apply(const nlohmann::json& messages, bool addGenerationPrompt,
                    const nlohmann::json& extraContext = nlohmann::json::object()) const;
  std::string apply(const nlohmann::ordered_json& messages, bool addGenerationPrompt,
                    const nlohmann::ordered_json& extraContext) const;

  const std::string& source() const { return source_; }
  const std::string& bosToken() const { return bos_; }
  const std::string& eosToken() const { return eos_; }

 private:
  template <class J>
  std::string applyImpl(const J& messages, bool addGenerationPrompt, const J& extraContext) const;

  std::string source_;
  std::string bos_;
  std::string eos_;
  jinja::Template template_;
};

}  // namespace doppler
