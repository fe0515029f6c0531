// Values of the Jinja interpreter (src/tokenizer/jinja.h) and the Python semantics they follow: str()/repr()
// formatting, truthiness, equality and ordering, json.dumps, UTF-8 code-point helpers.
//
// A Value is undefined, none, bool, int (int64), float (double), string (UTF-8), list (or tuple), dict
// (insertion-ordered; also used for namespace() objects) or callable (builtin, bound method or macro).
// Lists and dicts are shared by reference like Python objects: copying a Value copies the pointer, so
// `list.append(x)` and `set ns.attr = v` are seen through every copy.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace doppler::jinja {

// A failure while rendering (type error, undefined value, raise_exception). The interpreter turns it into
// doppler::Error "<template name>: line L: <message>" with the line of the node being evaluated.
class RenderError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
[[noreturn]] void renderFail(const std::string& message);

class Value;
class Renderer;

struct ListData {
  std::vector<Value> items;
  bool tuple = false;  // prints as (a, b) instead of [a, b]
};

struct DictData {
  std::vector<std::pair<Value, Value>> items;  // insertion order; keys are unique under equals()
  bool ns = false;                             // a namespace() object: attribute assignment allowed
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

using NativeFn = std::function<Value(Renderer&, CallArgs&)>;
struct CallableData {
  std::string name;
  NativeFn fn;
};

class Value {
 public:
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Callable };

  Value() = default;  // undefined
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double f);
  static Value string(std::string s);
  static Value list(std::vector<Value> items = {}, bool tuple = false);
  static Value dict();
  static Value callable(std::string name, NativeFn fn);

  // From JSON (nlohmann::json or nlohmann::ordered_json); objects keep the order the json type iterates.
  template <class J>
  static Value fromJson(const J& j);

  Kind kind() const { return kind_; }
  bool isUndefined() const { return kind_ == Kind::Undefined; }
  bool isNone() const { return kind_ == Kind::None; }
  bool isBool() const { return kind_ == Kind::Bool; }
  bool isInt() const { return kind_ == Kind::Int; }
  bool isFloat() const { return kind_ == Kind::Float; }
  bool isIntegral() const { return kind_ == Kind::Int || kind_ == Kind::Bool; }  // Python: bool is an int
  bool isNumber() const { return isIntegral() || kind_ == Kind::Float; }
  bool isString() const { return kind_ == Kind::String; }
  bool isList() const { return kind_ == Kind::List; }
  bool isDict() const { return kind_ == Kind::Dict; }
  bool isNamespace() const { return kind_ == Kind::Dict && d_->ns; }
  bool isCallable() const { return kind_ == Kind::Callable; }

  bool boolValue() const { return b_; }
  int64_t intValue() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }  // Int or Bool
  double numberValue() const { return kind_ == Kind::Float ? f_ : double(intValue()); }
  const std::string& stringValue() const { return s_; }         // String
  const std::string& undefinedHint() const { return s_; }       // Undefined: "'x' is undefined"
  ListData& listData() const { return *l_; }
  DictData& dictData() const { return *d_; }
  const CallableData& callableData() const { return *c_; }
  bool sameObject(const Value& o) const;  // Python `is` for containers/callables, equality for scalars

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<ListData> l_;
  std::shared_ptr<DictData> d_;
  std::shared_ptr<CallableData> c_;
};

// ---- Python semantics ----
std::string typeName(const Value& v);          // 'int', 'str', 'dict', 'NoneType', 'Undefined', ...
std::string toStr(const Value& v);             // str(v); undefined -> ""
std::string repr(const Value& v);              // repr(v): strings quoted
std::string pyFloatRepr(double d);             // repr(float): 1.0, 0.1, 1e+16, 1.5e-05, inf, nan
std::string pyStringRepr(std::string_view s);  // 'it' / "it's"
bool truthy(const Value& v);
bool equals(const Value& a, const Value& b);
int compare(const Value& a, const Value& b, const char* op = "<");  // -1/0/1, or RenderError for mixed types
void failIfUndefined(const Value& v);                                // RenderError with the undefined's hint
std::vector<Value> iterate(const Value& v);  // list items, dict keys, string chars; undefined -> empty
int64_t length(const Value& v);              // len(): code points of a string, items, keys

struct JsonOptions {
  bool ensureAscii = false;
  std::string indent;  // used when hasIndent
  bool hasIndent = false;
  std::string itemSep = ", ";
  std::string keySep = ": ";
  bool sortKeys = false;
};
std::string toJson(const Value& v, const JsonOptions& opt);  // json.dumps(v, ...)

// ---- UTF-8 ----
// Invalid bytes decode to U+DC80..U+DCFF (like Python's surrogateescape) and encode back unchanged.
std::u32string utf8Decode(std::string_view s);
std::string utf8Encode(std::u32string_view s);
void utf8Append(std::string& out, char32_t cp);
bool isAscii(std::string_view s);
bool pyIsSpace(char32_t c);  // str.isspace() / regex \s
char32_t pyLower(char32_t c);
char32_t pyUpper(char32_t c);
bool pyIsAlpha(char32_t c);
bool pyIsDigit(char32_t c);

// Checks that a string / list about to be built stays under the interpreter's size limit.
void checkSize(size_t n);
constexpr size_t kMaxSize = size_t(256) << 20;

template <class J>
Value Value::fromJson(const J& j) {
  switch (j.type()) {
    case J::value_t::null: return none();
    case J::value_t::boolean: return boolean(j.template get<bool>());
    case J::value_t::number_integer: return integer(j.template get<int64_t>());
    case J::value_t::number_unsigned: {
      uint64_t u = j.template get<uint64_t>();
      if (u <= uint64_t(INT64_MAX)) return integer(int64_t(u));
      return number(double(u));
    }
    case J::value_t::number_float: return number(j.template get<double>());
    case J::value_t::string: return string(j.template get<std::string>());
    case J::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(fromJson(e));
      return list(std::move(items));
    }
    case J::value_t::object: {
      Value d = dict();
      d.dictData().items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) d.dictData().items.emplace_back(string(it.key()), fromJson(it.value()));
      return d;
    }
    default: return none();  // binary / discarded: not produced by JSON text
  }
}

}  // namespace doppler::jinja
