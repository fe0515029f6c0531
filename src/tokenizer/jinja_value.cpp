// Python semantics of interpreter values: see jinja_value.h.
#include "tokenizer/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace doppler::jinja {

void renderFail(const std::string& message) { throw RenderError(message); }

void checkSize(size_t n) {
  if (n > kMaxSize) renderFail("result of " + std::to_string(n) + " bytes/items exceeds the 256 MiB limit");
}

// ---------------------------------------------------------------------------------------------------------
// Construction

Value Value::undefined(std::string hint) {
  Value v;
  v.s_ = std::move(hint);
  return v;
}
Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::Bool;
  v.b_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}
Value Value::number(double f) {
  Value v;
  v.kind_ = Kind::Float;
  v.f_ = f;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::String;
  v.s_ = std::move(s);
  return v;
}
Value Value::list(std::vector<Value> items, bool tuple) {
  Value v;
  v.kind_ = Kind::List;
  v.l_ = std::make_shared<ListData>();
  v.l_->items = std::move(items);
  v.l_->tuple = tuple;
  return v;
}
Value Value::dict() {
  Value v;
  v.kind_ = Kind::Dict;
  v.d_ = std::make_shared<DictData>();
  return v;
}
Value Value::callable(std::string name, NativeFn fn) {
  Value v;
  v.kind_ = Kind::Callable;
  v.c_ = std::make_shared<CallableData>(CallableData{std::move(name), std::move(fn)});
  return v;
}

bool Value::sameObject(const Value& o) const {
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case Kind::List: return l_ == o.l_;
    case Kind::Dict: return d_ == o.d_;
    case Kind::Callable: return c_ == o.c_;
    case Kind::String: return s_ == o.s_;
    default: return equals(*this, o);
  }
}

const Value* DictData::find(const Value& key) const {
  for (const auto& [k, v] : items)
    if (equals(k, key)) return &v;
  return nullptr;
}
const Value* DictData::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k.isString() && k.stringValue() == key) return &v;
  return nullptr;
}
void DictData::set(Value key, Value value) {
  for (auto& [k, v] : items)
    if (equals(k, key)) {
      v = std::move(value);
      return;
    }
  items.emplace_back(std::move(key), std::move(value));
}

// ---------------------------------------------------------------------------------------------------------
// UTF-8

void utf8Append(std::string& out, char32_t c) {
  if (c >= 0xDC80 && c <= 0xDCFF) {  // an undecodable byte, passed through
    out.push_back(char(c - 0xDC00));
  } else if (c < 0x80) {
    out.push_back(char(c));
  } else if (c < 0x800) {
    out.push_back(char(0xC0 | (c >> 6)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(char(0xE0 | (c >> 12)));
    out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (c >> 18)));
    out.push_back(char(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  }
}

std::u32string utf8Decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    if (c < 0x80) {
      out.push_back(c);
      ++i;
      continue;
    }
    int n = (c >= 0xC2 && c <= 0xDF) ? 1 : (c >= 0xE0 && c <= 0xEF) ? 2 : (c >= 0xF0 && c <= 0xF4) ? 3 : -1;
    char32_t cp = n == 3 ? (c & 0x07) : n == 2 ? (c & 0x0F) : (c & 0x1F);
    bool ok = n > 0 && i + n < s.size();
    if (ok) {
      for (int k = 1; k <= n; ++k) {
        unsigned char cc = s[i + k];
        if ((cc & 0xC0) != 0x80) {
          ok = false;
          break;
        }
        cp = (cp << 6) | (cc & 0x3F);
      }
    }
    if (ok) {
      // reject overlong forms, surrogates and values past U+10FFFF
      if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        ok = false;
    }
    if (!ok) {
      out.push_back(0xDC00 + c);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += n + 1;
  }
  return out;
}

std::string utf8Encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8Append(out, c);
  return out;
}

bool isAscii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

bool pyIsSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Case mapping for ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (other scripts are left unchanged).
char32_t pyLower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if ((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177))
    return (c % 2 == 0) ? c + 1 : c;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c % 2 == 1) ? c + 1 : c;
  if (c == 0x178) return 0xFF;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}

char32_t pyUpper(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 32;
  if (c == 0xFF) return 0x178;
  if ((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177))
    return (c % 2 == 1) ? c - 1 : c;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c % 2 == 0) ? c - 1 : c;
  if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) return c - 32;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  return c;
}

bool pyIsAlpha(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (c >= 0xDC80 && c <= 0xDCFF) return false;
  if (pyLower(c) != c || pyUpper(c) != c || c == 0xDF) return true;
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3040 && c <= 0x30FF) || (c >= 0xAC00 && c <= 0xD7A3) ||
         (c >= 0x0600 && c <= 0x06FF && !(c >= 0x0660 && c <= 0x0669));
}

bool pyIsDigit(char32_t c) { return c >= '0' && c <= '9'; }

// ---------------------------------------------------------------------------------------------------------
// str() / repr()

std::string pyFloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);  // shortest round-trip
  std::string sci(buf, res.ptr);
  bool neg = false;
  size_t p = 0;
  if (sci[0] == '-') {
    neg = true;
    p = 1;
  }
  size_t e = sci.find('e');
  std::string digits;
  for (size_t i = p; i < e; ++i)
    if (sci[i] != '.') digits.push_back(sci[i]);
  int exp = std::stoi(sci.substr(e + 1));
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {  // Python's repr uses exponent notation outside [1e-4, 1e16)
    if (exp >= 0) {
      std::string intPart = digits.substr(0, std::min<size_t>(digits.size(), size_t(exp) + 1));
      while (intPart.size() < size_t(exp) + 1) intPart.push_back('0');
      std::string frac = digits.size() > size_t(exp) + 1 ? digits.substr(size_t(exp) + 1) : "0";
      return out + intPart + "." + frac;
    }
    return out + "0." + std::string(size_t(-exp - 1), '0') + digits;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char eb[16];
  std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  return out + eb;
}

static bool pyIsPrintable(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return false;
  if ((c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x206F)) return false;
  if (c == 0x1680 || c == 0x3000 || c == 0xFEFF || (c >= 0xD800 && c <= 0xDFFF) || (c >= 0xE000 && c <= 0xF8FF))
    return false;
  return c <= 0x10FFFF;
}

std::string pyStringRepr(std::string_view s) {
  bool hasSingle = s.find('\'') != std::string_view::npos;
  bool hasDouble = s.find('"') != std::string_view::npos;
  char q = (hasSingle && !hasDouble) ? '"' : '\'';
  std::string out(1, q);
  for (char32_t c : utf8Decode(s)) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == char32_t(q)) {
      out += '\\';
      out += q;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (pyIsPrintable(c)) {
      utf8Append(out, c);
    } else {
      char buf[16];
      if (c < 0x100)
        std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(c));
      else if (c < 0x10000)
        std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
      else
        std::snprintf(buf, sizeof buf, "\\U%08x", unsigned(c));
      out += buf;
    }
  }
  out += q;
  return out;
}

std::string typeName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::None: return "NoneType";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::String: return "str";
    case Value::Kind::List: return v.listData().tuple ? "tuple" : "list";
    case Value::Kind::Dict: return v.isNamespace() ? "Namespace" : "dict";
    case Value::Kind::Callable: return "function";
  }
  return "?";
}

static void appendStr(std::string& out, const Value& v, bool asRepr);

static void appendContainer(std::string& out, const Value& v) {
  if (v.isList()) {
    const auto& l = v.listData();
    out += l.tuple ? '(' : '[';
    for (size_t i = 0; i < l.items.size(); ++i) {
      if (i) out += ", ";
      appendStr(out, l.items[i], true);
      checkSize(out.size());
    }
    if (l.tuple && l.items.size() == 1) out += ',';
    out += l.tuple ? ')' : ']';
    return;
  }
  const auto& d = v.dictData();
  if (d.ns) out += "<Namespace ";
  out += '{';
  for (size_t i = 0; i < d.items.size(); ++i) {
    if (i) out += ", ";
    appendStr(out, d.items[i].first, true);
    out += ": ";
    appendStr(out, d.items[i].second, true);
    checkSize(out.size());
  }
  out += '}';
  if (d.ns) out += '>';
}

static void appendStr(std::string& out, const Value& v, bool asRepr) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
      if (asRepr) out += "Undefined";
      return;
    case Value::Kind::None: out += "None"; return;
    case Value::Kind::Bool: out += v.boolValue() ? "True" : "False"; return;
    case Value::Kind::Int: out += std::to_string(v.intValue()); return;
    case Value::Kind::Float: out += pyFloatRepr(v.numberValue()); return;
    case Value::Kind::String:
      if (asRepr)
        out += pyStringRepr(v.stringValue());
      else
        out += v.stringValue();
      return;
    case Value::Kind::List:
    case Value::Kind::Dict: appendContainer(out, v); return;
    case Value::Kind::Callable: out += "<function " + v.callableData().name + ">"; return;
  }
}

std::string toStr(const Value& v) {
  if (v.isString()) return v.stringValue();
  std::string out;
  appendStr(out, v, false);
  return out;
}

std::string repr(const Value& v) {
  std::string out;
  appendStr(out, v, true);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Truthiness, equality, ordering

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return false;
    case Value::Kind::Bool: return v.boolValue();
    case Value::Kind::Int: return v.intValue() != 0;
    case Value::Kind::Float: return v.numberValue() != 0.0;
    case Value::Kind::String: return !v.stringValue().empty();
    case Value::Kind::List: return !v.listData().items.empty();
    case Value::Kind::Dict: return v.isNamespace() || !v.dictData().items.empty();
    case Value::Kind::Callable: return true;
  }
  return false;
}

bool equals(const Value& a, const Value& b) {
  if (a.isNumber() && b.isNumber()) {
    if (a.isIntegral() && b.isIntegral()) return a.intValue() == b.intValue();
    return a.numberValue() == b.numberValue();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return true;
    case Value::Kind::String: return a.stringValue() == b.stringValue();
    case Value::Kind::List: {
      const auto& x = a.listData();
      const auto& y = b.listData();
      if (&x == &y) return true;
      if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
      for (size_t i = 0; i < x.items.size(); ++i)
        if (!equals(x.items[i], y.items[i])) return false;
      return true;
    }
    case Value::Kind::Dict: {
      const auto& x = a.dictData();
      const auto& y = b.dictData();
      if (&x == &y) return true;
      if (x.ns || y.ns || x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* o = y.find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    }
    case Value::Kind::Callable: return a.sameObject(b);
    default: return false;
  }
}

void failIfUndefined(const Value& v) {
  if (v.isUndefined()) renderFail(v.undefinedHint().empty() ? "value is undefined" : v.undefinedHint());
}

int compare(const Value& a, const Value& b, const char* op) {
  failIfUndefined(a);
  failIfUndefined(b);
  if (a.isNumber() && b.isNumber()) {
    if (a.isIntegral() && b.isIntegral()) return a.intValue() < b.intValue() ? -1 : a.intValue() > b.intValue();
    double x = a.numberValue(), y = b.numberValue();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.isString() && b.isString()) {
    int c = a.stringValue().compare(b.stringValue());  // UTF-8 byte order is code point order
    return c < 0 ? -1 : c > 0;
  }
  if (a.isList() && b.isList() && a.listData().tuple == b.listData().tuple) {
    const auto& x = a.listData().items;
    const auto& y = b.listData().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equals(x[i], y[i])) continue;
      return compare(x[i], y[i], op);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size();
  }
  renderFail(std::string("'") + op + "' not supported between instances of '" + typeName(a) + "' and '" +
             typeName(b) + "'");
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.listData().items;
    case Value::Kind::Dict: {
      if (v.isNamespace()) break;
      std::vector<Value> keys;
      keys.reserve(v.dictData().items.size());
      for (const auto& kv : v.dictData().items) keys.push_back(kv.first);
      return keys;
    }
    case Value::Kind::String: {
      std::vector<Value> chars;
      const std::string& s = v.stringValue();
      if (isAscii(s)) {
        chars.reserve(s.size());
        for (char c : s) chars.push_back(Value::string(std::string(1, c)));
      } else {
        for (char32_t c : utf8Decode(s)) {
          std::string one;
          utf8Append(one, c);
          chars.push_back(Value::string(std::move(one)));
        }
      }
      return chars;
    }
    default: break;
  }
  renderFail("'" + typeName(v) + "' object is not iterable");
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: {
      const std::string& s = v.stringValue();
      return isAscii(s) ? int64_t(s.size()) : int64_t(utf8Decode(s).size());
    }
    case Value::Kind::List: return int64_t(v.listData().items.size());
    case Value::Kind::Dict:
      if (!v.isNamespace()) return int64_t(v.dictData().items.size());
      break;
    default: break;
  }
  renderFail("object of type '" + typeName(v) + "' has no len()");
}

// ---------------------------------------------------------------------------------------------------------
// json.dumps

static void jsonString(std::string& out, std::string_view s, bool ensureAscii) {
  out += '"';
  auto hex4 = [&](unsigned c) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "\\u%04x", c & 0xFFFFu);
    out += buf;
  };
  for (char32_t c : utf8Decode(s)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ensureAscii && c >= 0x7F && !(c >= 0xDC80 && c <= 0xDCFF))) {
          if (c >= 0x10000) {
            char32_t v = c - 0x10000;
            hex4(unsigned(0xD800 + (v >> 10)));
            hex4(unsigned(0xDC00 + (v & 0x3FF)));
          } else {
            hex4(unsigned(c));
          }
        } else {
          utf8Append(out, c);
        }
    }
  }
  out += '"';
}

static std::string jsonFloat(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return pyFloatRepr(d);
}

static std::string jsonKey(const Value& k) {
  switch (k.kind()) {
    case Value::Kind::String: return k.stringValue();
    case Value::Kind::Int: return std::to_string(k.intValue());
    case Value::Kind::Float: return jsonFloat(k.numberValue());
    case Value::Kind::Bool: return k.boolValue() ? "true" : "false";
    case Value::Kind::None: return "null";
    default: renderFail("tojson: keys must be str, int, float, bool or None, not " + typeName(k));
  }
}

static void jsonValue(std::string& out, const Value& v, const JsonOptions& opt, int level) {
  checkSize(out.size());
  if (level > 512) renderFail("tojson: value nested too deeply");
  auto newline = [&](int lvl) {
    out += '\n';
    for (int i = 0; i < lvl; ++i) out += opt.indent;
  };
  switch (v.kind()) {
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.boolValue() ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.intValue()); return;
    case Value::Kind::Float: out += jsonFloat(v.numberValue()); return;
    case Value::Kind::String: jsonString(out, v.stringValue(), opt.ensureAscii); return;
    case Value::Kind::List: {
      const auto& items = v.listData().items;
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += opt.itemSep;
        if (opt.hasIndent) newline(level + 1);
        jsonValue(out, items[i], opt, level + 1);
      }
      if (opt.hasIndent) newline(level);
      out += ']';
      return;
    }
    case Value::Kind::Dict: {
      if (v.isNamespace()) break;
      std::vector<std::pair<std::string, const Value*>> items;
      for (const auto& [k, val] : v.dictData().items) items.emplace_back(jsonKey(k), &val);
      if (items.empty()) {
        out += "{}";
        return;
      }
      if (opt.sortKeys)
        std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      out += '{';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += opt.itemSep;
        if (opt.hasIndent) newline(level + 1);
        jsonString(out, items[i].first, opt.ensureAscii);
        out += opt.keySep;
        jsonValue(out, *items[i].second, opt, level + 1);
      }
      if (opt.hasIndent) newline(level);
      out += '}';
      return;
    }
    default: break;
  }
  renderFail("Object of type " + typeName(v) + " is not JSON serializable");
}

std::string toJson(const Value& v, const JsonOptions& opt) {
  std::string out;
  jsonValue(out, v, opt, 0);
  return out;
}

}  // namespace doppler::jinja
