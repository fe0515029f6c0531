#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "core/json_util.h"

namespace doppler {

namespace {

// A special token in tokenizer_config.json: "<s>", {"content": "<s>", ...} (AddedToken), or null.
std::string tokenText(const Json& config, const char* key, const std::string& path) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  fail("{}: '{}' must be a string or an object with a string 'content', got {}", path, key, it->type_name());
}

}  // namespace

std::optional<ChatTemplate> ChatTemplate::fromTokenizerConfig(const std::string& path) {
  Json config = readJsonFile(path);
  if (!config.is_object()) fail("{}: expected a JSON object, got {}", path, config.type_name());
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::nullopt;
  std::string source;
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {
    bool found = false;
    for (const auto& entry : *it) {
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") || !entry["name"].is_string() ||
          !entry["template"].is_string())
        fail("{}: 'chat_template' list entries must be {{\"name\": string, \"template\": string}}", path);
      if (entry["name"] == "default") {
        source = entry["template"].get<std::string>();
        found = true;
      }
    }
    if (!found) fail("{}: 'chat_template' list has no entry named 'default'", path);
  } else {
    fail("{}: 'chat_template' must be a string or a list of named templates, got {}", path, it->type_name());
  }
  try {
    return ChatTemplate(std::move(source), tokenText(config, "bos_token", path), tokenText(config, "eos_token", path));
  } catch (const Error& e) {
    rethrowWithContext(path, e);
  }
}

ChatTemplate::ChatTemplate(std::string source, std::string bosToken, std::string eosToken)
    : source_(std::move(source)), bos_(std::move(bosToken)), eos_(std::move(eosToken)), template_(source_) {}

template <class J>
std::string ChatTemplate::applyImpl(const J& messages, bool addGenerationPrompt, const J& extraContext) const {
  if (!messages.is_array()) fail("chat template: messages must be a JSON array, got {}", messages.type_name());
  if (!extraContext.is_object())
    fail("chat template: the extra context must be a JSON object, got {}", extraContext.type_name());
  using jinja::Value;
  std::vector<std::pair<std::string, Value>> vars = {
      {"messages", Value::fromJson(messages)},
      {"add_generation_prompt", Value::boolean(addGenerationPrompt)},
      {"bos_token", Value::string(bos_)},
      {"eos_token", Value::string(eos_)},
      {"tools", Value::none()},
      {"documents", Value::none()},
  };
  for (auto it = extraContext.begin(); it != extraContext.end(); ++it) {
    Value v = Value::fromJson(it.value());
    bool replaced = false;
    for (auto& [k, old] : vars)
      if (k == it.key()) {
        old = v;
        replaced = true;
      }
    if (!replaced) vars.emplace_back(it.key(), std::move(v));
  }
  return template_.render(vars);
}

std::string ChatTemplate::apply(const nlohmann::json& messages, bool addGenerationPrompt,
                                const nlohmann::json& extraContext) const {
  return applyImpl(messages, addGenerationPrompt, extraContext);
}

std::string ChatTemplate::apply(const nlohmann::ordered_json& messages, bool addGenerationPrompt,
                                const nlohmann::ordered_json& extraContext) const {
  return applyImpl(messages, addGenerationPrompt, extraContext);
}

}  // namespace doppler
