// A small Jinja2 interpreter for Hugging Face chat templates (tokenizer_config.json "chat_template").
//
// It follows Jinja2 3.1 as transformers runs it (ImmutableSandboxedEnvironment with trim_blocks=True,
// lstrip_blocks=True, the loopcontrols extension, and the globals raise_exception / strftime_now and a
// tojson filter that keeps non-ASCII characters). Supported:
//   {{ }} {% %} {# #}, `-`/`+` whitespace control, raw blocks;
//   if/elif/else, for (else, `if` filter, tuple unpacking, loop.*), break/continue, set (tuples,
//   `ns.attr`, block form), macro / call / caller, filter blocks, generation blocks;
//   literals, attribute / subscript / slice access, arithmetic, ~, comparisons, in, and/or/not, ternary,
//   `is` tests, filters, str / dict / list methods, range / namespace / dict / raise_exception /
//   strftime_now.
// Not supported: include / import / extends / block / with / recursive loops / *args in calls.
//
// A missing attribute or key is undefined (prints as ""), using an undefined value in arithmetic or
// accessing an attribute of it is an error, as in Jinja. Every syntax or runtime error is a doppler::Error
// "<name>: line L: <what>" (name defaults to "chat template"); work, nesting and sizes are bounded, so no
// input crashes or hangs the interpreter.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace doppler::jinja {

struct Program;

struct Options {
  bool trimBlocks = true;    // drop the first newline after a block or comment tag
  bool lstripBlocks = true;  // drop spaces/tabs before a block or comment tag at the start of a line
  std::string name = "chat template";  // prefix of error messages
};

// A parsed template: parse once, render many times (render is const and thread-compatible).
class Template {
 public:
  explicit Template(std::string_view source, Options options = {});

  // context: a JSON object whose members become template variables.
  std::string render(const nlohmann::json& context) const;
  std::string render(const nlohmann::ordered_json& context) const;
  std::string render(const std::vector<std::pair<std::string, Value>>& variables) const;

 private:
  std::shared_ptr<const Program> program_;
  Options options_;
};

std::string render(std::string_view templ, const nlohmann::json& context, const Options& options = {});

}  // namespace doppler::jinja
