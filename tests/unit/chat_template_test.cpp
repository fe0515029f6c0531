// Chat templates (src/tokenizer/chat_template.h): the fixture models' templates, real-world templates from
// the Hub (tests/data/chat_templates/*.jinja) and tokenizer_config.json parsing. Expected strings are what
// transformers' apply_chat_template(tokenize=False) renders: Jinja2 3.1 with trim_blocks / lstrip_blocks.
#include <gtest/gtest.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <unistd.h>

#include "core/error.h"
#include "tokenizer/chat_template.h"

using namespace doppler;
using OJ = nlohmann::ordered_json;

namespace {

std::string dataPath(const std::string& file) { return std::string(DOPPLER_TEST_DATA) + "/chat_templates/" + file; }

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ChatTemplate load(const std::string& file, const std::string& bos, const std::string& eos) {
  return ChatTemplate(readFile(dataPath(file)), bos, eos);
}

void expectError(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected doppler::Error containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// A temporary file that is removed at the end of the test.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& text) {
    static int counter = 0;
    path = (std::filesystem::temp_directory_path() /
            ("doppler_chat_template_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".json"))
               .string();
    std::ofstream(path, std::ios::binary) << text;
  }
  ~TempFile() { std::remove(path.c_str()); }
};

const char* kThreeMessages =
    R"([{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": " What is 2+2?\n"},
        {"role": "assistant", "content": "2+2 equals 4."}])";

}  // namespace

// ---- The fixture models' tokenizer_config.json (copied from the shared fixtures) ----

TEST(ChatTemplateFixture, LlamaThreeMessagesWithGenerationPrompt) {
  auto t = ChatTemplate::fromTokenizerConfig(dataPath("llama_tokenizer_config.json"));
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->bosToken(), "<|begin_of_text|>");
  EXPECT_EQ(t->eosToken(), "<|eot_id|>");
  nlohmann::json messages = nlohmann::json::parse(kThreeMessages);
  // The template trims each message and puts a blank line after every header.
  EXPECT_EQ(t->apply(messages, true),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n2+2 equals 4.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(t->apply(messages, false),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n2+2 equals 4.<|eot_id|>");
}

TEST(ChatTemplateFixture, MixtralThreeMessages) {
  auto t = ChatTemplate::fromTokenizerConfig(dataPath("mixtral_tokenizer_config.json"));
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->bosToken(), "<s>");
  EXPECT_EQ(t->eosToken(), "</s>");
  nlohmann::json messages = nlohmann::json::parse(kThreeMessages);
  // Not trimmed; a system message goes through the template's else-branch like an assistant turn; the
  // template ignores add_generation_prompt.
  const std::string expected = "<s>You are a helpful assistant.</s>[INST]  What is 2+2?\n [/INST]2+2 equals 4.</s>";
  EXPECT_EQ(t->apply(messages, true), expected);
  EXPECT_EQ(t->apply(messages, false), expected);
}

// ---- tokenizer_config.json parsing ----

TEST(ChatTemplateConfig, NamedTemplateListTakesDefaultAndTokenObjects) {
  TempFile f(R"({"bos_token": {"__type": "AddedToken", "content": "<B>", "lstrip": false},
                 "eos_token": {"content": "<E>"},
                 "chat_template": [{"name": "tool_use", "template": "TOOLS"},
                                   {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]})");
  auto t = ChatTemplate::fromTokenizerConfig(f.path);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->apply(nlohmann::json::parse(R"([{"role": "user", "content": "hi"}])"), false), "<B>hi<E>");
}

TEST(ChatTemplateConfig, MissingTemplateIsNullopt) {
  TempFile f(R"({"bos_token": "<s>", "eos_token": null})");
  EXPECT_FALSE(ChatTemplate::fromTokenizerConfig(f.path).has_value());
  TempFile g(R"({"chat_template": null})");
  EXPECT_FALSE(ChatTemplate::fromTokenizerConfig(g.path).has_value());
}

TEST(ChatTemplateConfig, MissingTokensAreEmptyAndToolsAreNone) {
  TempFile f(R"({"chat_template": "[{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}]"})");
  auto t = ChatTemplate::fromTokenizerConfig(f.path);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->apply(nlohmann::json::array(), true), "[||True|True|True]");
  // extraContext overrides the defaults and adds variables.
  EXPECT_EQ(t->apply(nlohmann::json::array(), false, {{"tools", {1}}, {"bos_token", "B"}}), "[B||False|True|False]");
}

TEST(ChatTemplateConfig, BadConfigsAreErrors) {
  expectError([] { ChatTemplate::fromTokenizerConfig(dataPath("does_not_exist.json")); }, "does_not_exist.json");
  TempFile notJson("{ not json");
  expectError([&] { ChatTemplate::fromTokenizerConfig(notJson.path); }, "invalid JSON");
  TempFile noDefault(R"({"chat_template": [{"name": "tool_use", "template": "x"}]})");
  expectError([&] { ChatTemplate::fromTokenizerConfig(noDefault.path); }, "no entry named 'default'");
  TempFile badType(R"({"chat_template": 5})");
  expectError([&] { ChatTemplate::fromTokenizerConfig(badType.path); }, "'chat_template' must be");
  TempFile badToken(R"({"chat_template": "x", "bos_token": 3})");
  expectError([&] { ChatTemplate::fromTokenizerConfig(badToken.path); }, "'bos_token'");
  TempFile badSyntax(R"({"chat_template": "{% for m in messages %}"})");
  expectError([&] { ChatTemplate::fromTokenizerConfig(badSyntax.path); }, "chat template: line 1: unexpected end of template");
}

TEST(ChatTemplateConfig, BadMessagesAreErrors) {
  ChatTemplate t("{{ messages }}", "", "");
  expectError([&] { t.apply(nlohmann::json::object(), true); }, "messages must be a JSON array");
  expectError([&] { t.apply(nlohmann::json::array(), true, nlohmann::json::array()); }, "extra context must be a JSON object");
}

TEST(ChatTemplateConfig, NestedKeyOrderFollowsTheJsonType) {
  ChatTemplate t("{{ messages[0] | tojson }}", "", "");
  const char* text = R"([{"role": "user", "content": "x"}])";
  EXPECT_EQ(t.apply(OJ::parse(text), false, OJ::object()), R"({"role": "user", "content": "x"})");
  EXPECT_EQ(t.apply(nlohmann::json::parse(text), false), R"({"content": "x", "role": "user"})");  // std::map order
}

// ---- Real-world templates (written from the Hub's tokenizer_config.json files) ----

TEST(ChatTemplateReal, Llama32StrftimeNowGivesTodaysDate) {
  ChatTemplate t = load("llama3_2.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"([{"role": "user", "content": "hi"}])");
  std::string out = t.apply(messages, false, OJ::object());
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char date[64];
  std::strftime(date, sizeof date, "%d %b %Y", &tm);
  EXPECT_EQ(out, std::string("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                             "December 2023\nToday Date: ") +
                     date + "\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
}

TEST(ChatTemplateReal, Llama31ThreeMessages) {
  ChatTemplate t = load("llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|begin_of_text|><|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

You are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>

What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

2+2 equals 4.<|eot_id|><|start_header_id|>assistant<|end_header_id|>

)x");
}

TEST(ChatTemplateReal, Llama31DateStringNoGenerationPrompt) {
  ChatTemplate t = load("llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({"date_string": "01 Jan 2025"})x");
  EXPECT_EQ(t.apply(messages, false, extra), R"x(<|begin_of_text|><|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 01 Jan 2025

You are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>

What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

2+2 equals 4.<|eot_id|>)x");
}

TEST(ChatTemplateReal, Llama31ToolsInUserMessage) {
  ChatTemplate t = load("llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Weather in Zürich?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}, {"role": "assistant", "content": "It is 21 °C in Zürich."}])x");
  OJ extra = OJ::parse(R"x({"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|begin_of_text|><|start_header_id|>system<|end_header_id|>

Environment: ipython
Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.

{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string",
                    "description": "City name, e.g. Paris"
                },
                "unit": {
                    "type": "string",
                    "enum": [
                        "celsius",
                        "fahrenheit"
                    ]
                }
            },
            "required": [
                "city"
            ]
        }
    }
}

Weather in Zürich?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

{"name": "get_weather", "parameters": {"city": "Zürich", "unit": "celsius"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>

"{\"temp\": 21}"<|eot_id|><|start_header_id|>assistant<|end_header_id|>

It is 21 °C in Zürich.<|eot_id|><|start_header_id|>assistant<|end_header_id|>

)x");
}

TEST(ChatTemplateReal, Llama31ToolsInSystemMessage) {
  ChatTemplate t = load("llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Weather in Zürich?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}, {"role": "assistant", "content": "It is 21 °C in Zürich."}])x");
  OJ extra = OJ::parse(R"x({"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}], "tools_in_user_message": false})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|begin_of_text|><|start_header_id|>system<|end_header_id|>

Environment: ipython
Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

You have access to the following functions. To call a function, please respond with JSON for a function call.Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.

{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string",
                    "description": "City name, e.g. Paris"
                },
                "unit": {
                    "type": "string",
                    "enum": [
                        "celsius",
                        "fahrenheit"
                    ]
                }
            },
            "required": [
                "city"
            ]
        }
    }
}

Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>

Weather in Zürich?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

{"name": "get_weather", "parameters": {"city": "Zürich", "unit": "celsius"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>

"{\"temp\": 21}"<|eot_id|><|start_header_id|>assistant<|end_header_id|>

It is 21 °C in Zürich.<|eot_id|><|start_header_id|>assistant<|end_header_id|>

)x");
}

TEST(ChatTemplateReal, Llama31BuiltinToolCall) {
  ChatTemplate t = load("llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": {"name": "brave_search", "arguments": {"query": "x"}}}]}])x");
  OJ extra = OJ::parse(R"x({"builtin_tools": ["brave_search", "code_interpreter"]})x");
  EXPECT_EQ(t.apply(messages, false, extra), R"x(<|begin_of_text|><|start_header_id|>system<|end_header_id|>

Environment: ipython
Tools: brave_search

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

<|eot_id|><|start_header_id|>user<|end_header_id|>

hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>

<|python_tag|>brave_search.call(query="x")<|eom_id|>)x");
}

TEST(ChatTemplateReal, Llama31ToolsWithoutUserMessageRaises) {
  ChatTemplate t = load("llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "s"}])x");
  OJ extra = OJ::parse(R"x({"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]})x");
  expectError([&] { t.apply(messages, false, extra); }, "Cannot put tools in the first user message when there's no first user message!");
}

TEST(ChatTemplateReal, Llama31MultipleToolCallsRaise) {
  ChatTemplate t = load("llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [1, 2]}])x");
  OJ extra = OJ::parse(R"x({})x");
  expectError([&] { t.apply(messages, false, extra); }, "This model only supports single tool-calls at once!");
}

TEST(ChatTemplateReal, Llama32DateString) {
  ChatTemplate t = load("llama3_2.jinja", "<|begin_of_text|>", "<|eot_id|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({"date_string": "05 Mar 2025"})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|begin_of_text|><|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 05 Mar 2025

You are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>

What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

2+2 equals 4.<|eot_id|><|start_header_id|>assistant<|end_header_id|>

)x");
}

TEST(ChatTemplateReal, MistralUserAssistant) {
  ChatTemplate t = load("mistral_instruct.jinja", "<s>", "</s>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<s>[INST] What is 2+2? [/INST]2+2 equals 4.</s>)x");
}

TEST(ChatTemplateReal, MistralSystemRoleRaises) {
  ChatTemplate t = load("mistral_instruct.jinja", "<s>", "</s>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  expectError([&] { t.apply(messages, true, extra); }, "Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(ChatTemplateReal, MistralWrongRoleOrderRaises) {
  ChatTemplate t = load("mistral_instruct.jinja", "<s>", "</s>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])x");
  OJ extra = OJ::parse(R"x({})x");
  expectError([&] { t.apply(messages, true, extra); }, "Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(ChatTemplateReal, MixtralSystemMessageFolded) {
  ChatTemplate t = load("mixtral_instruct.jinja", "<s>", "</s>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}, {"role": "user", "content": "And 3+3?"}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<s> [INST] You are a helpful assistant.

What is 2+2? [/INST] 2+2 equals 4.</s> [INST] And 3+3? [/INST])x");
}

TEST(ChatTemplateReal, MixtralWrongRoleOrderRaises) {
  ChatTemplate t = load("mixtral_instruct.jinja", "<s>", "</s>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])x");
  OJ extra = OJ::parse(R"x({})x");
  expectError([&] { t.apply(messages, true, extra); }, "After the optional system message, conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(ChatTemplateReal, MixtralToolRoleRaises) {
  ChatTemplate t = load("mixtral_instruct.jinja", "<s>", "</s>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])x");
  OJ extra = OJ::parse(R"x({})x");
  expectError([&] { t.apply(messages, true, extra); }, "Only user and assistant roles are supported, with the exception of an initial optional system message!");
}

TEST(ChatTemplateReal, ChatMlGenerationPrompt) {
  ChatTemplate t = load("chatml.jinja", "", "<|im_end|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is 2+2?<|im_end|>
<|im_start|>assistant
2+2 equals 4.<|im_end|>
<|im_start|>assistant
)x");
}

TEST(ChatTemplateReal, ChatMlNoGenerationPrompt) {
  ChatTemplate t = load("chatml.jinja", "", "<|im_end|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, false, extra), R"x(<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is 2+2?<|im_end|>
<|im_start|>assistant
2+2 equals 4.<|im_end|>
)x");
}

TEST(ChatTemplateReal, Phi35GenerationPrompt) {
  ChatTemplate t = load("phi3_5.jinja", "<s>", "<|endoftext|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|system|>
You are a helpful assistant.<|end|>
<|user|>
What is 2+2?<|end|>
<|assistant|>
2+2 equals 4.<|end|>
<|assistant|>
)x");
}

TEST(ChatTemplateReal, Phi35EosWithoutGenerationPrompt) {
  ChatTemplate t = load("phi3_5.jinja", "<s>", "<|endoftext|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, false, extra), R"x(<|system|>
You are a helpful assistant.<|end|>
<|user|>
What is 2+2?<|end|>
<|assistant|>
2+2 equals 4.<|end|>
<|endoftext|>)x");
}

TEST(ChatTemplateReal, Qwen3ThreeMessages) {
  ChatTemplate t = load("qwen3.jinja", "", "<|im_end|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is 2+2?<|im_end|>
<|im_start|>assistant
<think>

</think>

2+2 equals 4.<|im_end|>
<|im_start|>assistant
)x");
}

TEST(ChatTemplateReal, Qwen3DropsOldThinking) {
  ChatTemplate t = load("qwen3.jinja", "", "<|im_end|>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"}, {"role": "user", "content": "2+2?"}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|im_start|>user
Hi<|im_end|>
<|im_start|>assistant
Hello!<|im_end|>
<|im_start|>user
2+2?<|im_end|>
<|im_start|>assistant
)x");
}

TEST(ChatTemplateReal, Qwen3KeepsLastThinking) {
  ChatTemplate t = load("qwen3.jinja", "", "<|im_end|>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, false, extra), R"x(<|im_start|>user
Hi<|im_end|>
<|im_start|>assistant
<think>
Greet back.
</think>

Hello!<|im_end|>
)x");
}

TEST(ChatTemplateReal, Qwen3EnableThinkingFalse) {
  ChatTemplate t = load("qwen3.jinja", "", "<|im_end|>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"}, {"role": "user", "content": "2+2?"}])x");
  OJ extra = OJ::parse(R"x({"enable_thinking": false})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|im_start|>user
Hi<|im_end|>
<|im_start|>assistant
Hello!<|im_end|>
<|im_start|>user
2+2?<|im_end|>
<|im_start|>assistant
<think>

</think>

)x");
}

TEST(ChatTemplateReal, Qwen3Tools) {
  ChatTemplate t = load("qwen3.jinja", "", "<|im_end|>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Weather in Zürich?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}, {"role": "assistant", "content": "It is 21 °C in Zürich."}])x");
  OJ extra = OJ::parse(R"x({"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|im_start|>system
  Be brief.  

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
<|im_start|>user
Weather in Zürich?<|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
{"temp": 21}
</tool_response><|im_end|>
<|im_start|>assistant
<think>

</think>

It is 21 °C in Zürich.<|im_end|>
<|im_start|>assistant
)x");
}

TEST(ChatTemplateReal, Qwen3ReasoningContentAndToolResponses) {
  ChatTemplate t = load("qwen3.jinja", "", "<|im_end|>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "\nr\n"}, {"role": "tool", "content": "t1"}, {"role": "tool", "content": "t2"}, {"role": "assistant", "content": "done", "tool_calls": [{"name": "f", "arguments": "{\"a\":1}"}]}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, false, extra), R"x(<|im_start|>user
q<|im_end|>
<|im_start|>assistant
<think>
r
</think>

a<|im_end|>
<|im_start|>user
<tool_response>
t1
</tool_response>
<tool_response>
t2
</tool_response><|im_end|>
<|im_start|>assistant
<think>

</think>

done
<tool_call>
{"name": "f", "arguments": {"a":1}}
</tool_call><|im_end|>
)x");
}

TEST(ChatTemplateReal, DeepSeekV3ThreeMessages) {
  ChatTemplate t = load("deepseek_v3.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜>2+2 equals 4.<｜end▁of▁sentence｜><｜Assistant｜>)x");
}

TEST(ChatTemplateReal, DeepSeekV3ToolCalls) {
  ChatTemplate t = load("deepseek_v3.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "sys"}, {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}, {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}, {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "noon"}, {"role": "assistant", "content": "Sunny at noon."}, {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "<think>ok</think>You're welcome."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<｜begin▁of▁sentence｜>sys<｜User｜>Weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
```json
{"city": "Paris"}
```<｜tool▁call▁end｜>
<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time
```json
{}
```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜><｜tool▁output▁begin｜>noon<｜tool▁output▁end｜><｜tool▁outputs▁end｜>Sunny at noon.<｜end▁of▁sentence｜><｜User｜>Thanks<｜Assistant｜>You're welcome.<｜end▁of▁sentence｜><｜Assistant｜>)x");
}

TEST(ChatTemplateReal, DeepSeekV3EndsInToolOutputs) {
  ChatTemplate t = load("deepseek_v3.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "sys"}, {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}, {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}, {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "noon"}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<｜begin▁of▁sentence｜>sys<｜User｜>Weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
```json
{"city": "Paris"}
```<｜tool▁call▁end｜>
<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time
```json
{}
```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜><｜tool▁output▁begin｜>noon<｜tool▁output▁end｜><｜tool▁outputs▁end｜>)x");
}

TEST(ChatTemplateReal, KimiK2ThreeMessages) {
  ChatTemplate t = load("kimi_k2.jinja", "[BOS]", "[EOS]");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|im_system|>system<|im_middle|>You are a helpful assistant.<|im_end|><|im_user|>user<|im_middle|>What is 2+2?<|im_end|><|im_assistant|>assistant<|im_middle|>2+2 equals 4.<|im_end|><|im_assistant|>assistant<|im_middle|>)x");
}

TEST(ChatTemplateReal, KimiK2ToolsDefaultSystem) {
  ChatTemplate t = load("kimi_k2.jinja", "[BOS]", "[EOS]");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|im_system|>tool_declare<|im_middle|>[{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]<|im_end|><|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|><|im_user|>user<|im_middle|>What is 2+2?<|im_end|><|im_assistant|>assistant<|im_middle|>2+2 equals 4.<|im_end|><|im_assistant|>assistant<|im_middle|>)x");
}

TEST(ChatTemplateReal, KimiK2MultimodalAndToolCall) {
  ChatTemplate t = load("kimi_k2.jinja", "[BOS]", "[EOS]");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image", "image": "x.png"}]}, {"role": "assistant", "content": "Sure", "tool_calls": [{"id": "functions.get_weather:0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}, {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sunny"}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|><|im_user|>user<|im_middle|>Describe<|media_start|>image<|media_content|><|media_pad|><|media_end|>
<|im_end|><|im_assistant|>assistant<|im_middle|>Sure<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|><|im_end|><|im_system|>tool<|im_middle|>## Return of functions.get_weather:0
sunny<|im_end|><|im_assistant|>assistant<|im_middle|>)x");
}

TEST(ChatTemplateReal, MacroTemplateThreeMessages) {
  ChatTemplate t = load("macros.jinja", "<s>", "</s>");
  OJ messages = OJ::parse(R"x([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({})x");
  EXPECT_EQ(t.apply(messages, true, extra), R"x(<s><|system|>
You are a helpful assistant.
<|user|>
What is 2+2?
<|assistant|>
2+2 equals 4.
<|assistant|>
)x");
}

TEST(ChatTemplateReal, MacroTemplateTools) {
  ChatTemplate t = load("macros.jinja", "<s>", "</s>");
  OJ messages = OJ::parse(R"x([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."}])x");
  OJ extra = OJ::parse(R"x({"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}, {"name": "lookup", "description": "  Look up.\n", "parameters": {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "integer"}}, "flag": {"type": "boolean"}}}, "returns": "list"}], "default_system": ""})x");
  EXPECT_EQ(t.apply(messages, false, extra), R"x(<s><|tools|>
def get_weather(city: str, unit: "celsius" | "fahrenheit" = None) -> dict:
    """Get the current weather in a city."""

def lookup(flag: bool = None, ids: list[int] = None) -> list:
    """Look up."""

<|/tools|>
<|system|>
You are a helpful assistant.<|user|>
What is 2+2?
<|assistant|>
2+2 equals 4.
)x");
}


// ---- Robustness: truncated and mutated templates never crash or hang; they render or raise Error ----

TEST(ChatTemplateFuzz, TruncationsAndMutationsOfTheTestTemplates) {
  const char* files[] = {"llama3_1.jinja", "llama3_2.jinja",     "mistral_instruct.jinja", "mixtral_instruct.jinja",
                         "chatml.jinja",   "phi3_5.jinja",       "qwen3.jinja",            "deepseek_v3.jinja",
                         "kimi_k2.jinja",  "macros.jinja"};
  OJ messages = OJ::parse(R"([{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
      {"role": "assistant", "content": "<think>t</think>yo", "tool_calls": [{"type": "function", "id": "c1",
       "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "r"}])");
  OJ extra = OJ::parse(R"({"tools": [{"type": "function", "function": {"name": "f", "description": "d",
      "parameters": {"type": "object", "properties": {}}}}]})");
  std::mt19937 rng(1234);
  int rendered = 0, failed = 0;
  for (const char* file : files) {
    const std::string src = readFile(dataPath(file));
    std::vector<std::string> variants;
    for (size_t cut = 0; cut < src.size(); cut += 1 + src.size() / 150) variants.push_back(src.substr(0, cut));
    for (int i = 0; i < 60; ++i) {
      std::string m = src;
      for (int k = 0; k < 3; ++k) {
        size_t pos = rng() % m.size();
        switch (rng() % 3) {
          case 0: m.erase(pos, 1 + rng() % 8); break;
          case 1: m.insert(pos, std::string(1, "{}%#-+()[]|.'\"\n x"[rng() % 17])); break;
          default: m[pos] = char(rng() % 256); break;
        }
        if (m.empty()) m = "x";
      }
      variants.push_back(m);
    }
    for (const auto& v : variants) {
      try {
        ChatTemplate t(v, "<s>", "</s>");
        t.apply(messages, true, extra);
        ++rendered;
      } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).rfind("chat template: line ", 0), 0u) << e.what();
        ++failed;
      }
    }
  }
  EXPECT_GT(rendered, 30);  // some mutations still render (in text or comments, say)
  EXPECT_GT(failed, 1000);
}
