// Builtins of the Jinja interpreter: filters, tests, str / list / dict methods, globals, and Python
// arithmetic / formatting helpers. Semantics follow Jinja2 3.1 and Python 3 (see jinja_runtime.h).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <unordered_map>

#include "tokenizer/jinja_runtime.h"

namespace doppler::jinja {

// ---------------------------------------------------------------------------------------------------------
// Argument helpers

std::vector<std::optional<Value>> bindArgs(const CallArgs& a, std::initializer_list<std::string_view> names,
                                           std::string_view what) {
  std::vector<std::optional<Value>> out(names.size());
  if (a.pos.size() > names.size())
    renderFail(fmt::format("{}() takes at most {} argument(s) ({} given)", what, names.size(), a.pos.size()));
  for (size_t i = 0; i < a.pos.size(); ++i) out[i] = a.pos[i];
  for (const auto& [k, v] : a.kw) {
    size_t idx = 0;
    for (std::string_view n : names) {
      if (n == k) break;
      ++idx;
    }
    if (idx == names.size()) renderFail(fmt::format("{}() got an unexpected keyword argument '{}'", what, k));
    if (out[idx]) renderFail(fmt::format("{}() got multiple values for argument '{}'", what, k));
    out[idx] = v;
  }
  return out;
}

namespace {

using Args = std::vector<std::optional<Value>>;

bool present(const std::optional<Value>& v) { return v && !v->isNone(); }

int64_t intArg(const std::optional<Value>& v, int64_t def, std::string_view what) {
  if (!present(v)) return def;
  if (!v->isIntegral()) renderFail(fmt::format("{}: expected an integer, got {}", what, typeName(*v)));
  return v->intValue();
}

bool boolArg(const std::optional<Value>& v, bool def) { return v ? truthy(*v) : def; }

std::string strArg(const std::optional<Value>& v, std::string_view what) {
  if (!v || !v->isString()) renderFail(fmt::format("{}: expected a string argument", what));
  return v->stringValue();
}

void noArgs(const CallArgs& a, std::string_view what) { bindArgs(a, {}, what); }

const std::string& needString(const Value& v, std::string_view what) {
  failIfUndefined(v);
  if (!v.isString()) renderFail(fmt::format("{}: expected a string, got {}", what, typeName(v)));
  return v.stringValue();
}

// Code-point helpers over UTF-8 strings.
std::string mapChars(const std::string& s, char32_t (*f)(char32_t)) {
  if (isAscii(s)) {
    std::string out = s;
    for (char& c : out) c = char(f(static_cast<unsigned char>(c)));
    return out;
  }
  std::u32string cps = utf8Decode(s);
  for (char32_t& c : cps) c = f(c);
  return utf8Encode(cps);
}

std::string lowerStr(const std::string& s) { return mapChars(s, pyLower); }
std::string upperStr(const std::string& s) { return mapChars(s, pyUpper); }

bool isCased(char32_t c) { return pyLower(c) != c || pyUpper(c) != c; }

std::string capitalizeStr(const std::string& s) {
  std::u32string cps = utf8Decode(s);
  for (size_t i = 0; i < cps.size(); ++i) cps[i] = i == 0 ? pyUpper(cps[i]) : pyLower(cps[i]);
  return utf8Encode(cps);
}

// str.title(): a cased character after an uncased one is upper-cased, the others lower-cased.
std::string pyTitle(const std::string& s) {
  std::u32string cps = utf8Decode(s);
  bool prevCased = false;
  for (char32_t& c : cps) {
    bool cased = isCased(c);
    if (cased) c = prevCased ? pyLower(c) : pyUpper(c);
    prevCased = cased || pyIsAlpha(c);
  }
  return utf8Encode(cps);
}

// Jinja's title filter: words split at whitespace, '-', '(', '{', '[', '<'; each capitalized.
std::string jinjaTitle(const std::string& s) {
  std::u32string cps = utf8Decode(s);
  bool start = true;
  for (char32_t& c : cps) {
    bool sep = pyIsSpace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) {
      start = true;
      continue;
    }
    c = start ? pyUpper(c) : pyLower(c);
    start = false;
  }
  return utf8Encode(cps);
}

// str.strip / lstrip / rstrip with optional chars (None: whitespace).
std::string stripStr(const std::string& s, const std::optional<Value>& chars, bool left, bool right) {
  std::u32string cps = utf8Decode(s);
  std::u32string set;
  bool ws = !present(chars);
  if (!ws) set = utf8Decode(needString(*chars, "strip"));
  auto strip = [&](char32_t c) { return ws ? pyIsSpace(c) : set.find(c) != std::u32string::npos; };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip(cps[b])) ++b;
  if (right)
    while (e > b && strip(cps[e - 1])) --e;
  return utf8Encode(std::u32string_view(cps).substr(b, e - b));
}

Value strList(std::vector<std::string> parts) {
  std::vector<Value> v;
  v.reserve(parts.size());
  for (auto& p : parts) v.push_back(Value::string(std::move(p)));
  return Value::list(std::move(v));
}

// str.split / str.rsplit
std::vector<std::string> splitStr(const std::string& s, const std::optional<Value>& sepArg, int64_t maxsplit,
                                  bool fromRight) {
  std::vector<std::string> out;
  if (present(sepArg)) {
    const std::string& sep = needString(*sepArg, "split");
    if (sep.empty()) renderFail("split: empty separator");
    if (!fromRight) {
      size_t pos = 0;
      while (maxsplit < 0 || int64_t(out.size()) < maxsplit) {
        size_t f = s.find(sep, pos);
        if (f == std::string::npos) break;
        out.push_back(s.substr(pos, f - pos));
        pos = f + sep.size();
      }
      out.push_back(s.substr(pos));
    } else {
      size_t end = s.size();
      std::vector<std::string> rev;
      while (maxsplit < 0 || int64_t(rev.size()) < maxsplit) {
        if (end < sep.size()) break;
        size_t f = s.rfind(sep, end - sep.size());
        if (f == std::string::npos) break;
        rev.push_back(s.substr(f + sep.size(), end - f - sep.size()));
        end = f;
      }
      rev.push_back(s.substr(0, end));
      out.assign(rev.rbegin(), rev.rend());
    }
    return out;
  }
  // Whitespace split: runs of whitespace separate, leading/trailing whitespace ignored.
  std::u32string cps = utf8Decode(s);
  if (!fromRight) {
    size_t i = 0, n = cps.size();
    while (true) {
      while (i < n && pyIsSpace(cps[i])) ++i;
      if (i >= n) break;
      if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) {
        out.push_back(utf8Encode(std::u32string_view(cps).substr(i)));
        break;
      }
      size_t j = i;
      while (j < n && !pyIsSpace(cps[j])) ++j;
      out.push_back(utf8Encode(std::u32string_view(cps).substr(i, j - i)));
      i = j;
    }
  } else {
    size_t e = cps.size();
    std::vector<std::string> rev;
    while (true) {
      while (e > 0 && pyIsSpace(cps[e - 1])) --e;
      if (e == 0) break;
      if (maxsplit >= 0 && int64_t(rev.size()) >= maxsplit) {
        rev.push_back(utf8Encode(std::u32string_view(cps).substr(0, e)));
        break;
      }
      size_t b = e;
      while (b > 0 && !pyIsSpace(cps[b - 1])) --b;
      rev.push_back(utf8Encode(std::u32string_view(cps).substr(b, e - b)));
      e = b;
    }
    out.assign(rev.rbegin(), rev.rend());
  }
  return out;
}

bool isLineBreak(char32_t c) {
  return c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

std::vector<std::string> splitLines(const std::string& s, bool keepEnds) {
  std::u32string cps = utf8Decode(s);
  std::vector<std::string> out;
  size_t i = 0, start = 0, n = cps.size();
  while (i < n) {
    if (!isLineBreak(cps[i])) {
      ++i;
      continue;
    }
    size_t eol = i + ((cps[i] == '\r' && i + 1 < n && cps[i + 1] == '\n') ? 2 : 1);
    out.push_back(utf8Encode(std::u32string_view(cps).substr(start, (keepEnds ? eol : i) - start)));
    start = i = eol;
  }
  if (start < n) out.push_back(utf8Encode(std::u32string_view(cps).substr(start)));
  return out;
}

std::string replaceStr(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every character
    std::u32string cps = utf8Decode(s);
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      if (i < cps.size()) utf8Append(out, cps[i]);
      checkSize(out.size());
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t f = s.find(from, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += to;
    checkSize(out.size());
    pos = f + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// Code-point [start, end) of a str method's optional start/end arguments (Python slice clamping).
std::pair<size_t, size_t> spanArgs(size_t n, const std::optional<Value>& start, const std::optional<Value>& end) {
  auto clamp = [n](int64_t i) -> size_t {
    if (i < 0) i += int64_t(n);
    return size_t(std::clamp<int64_t>(i, 0, int64_t(n)));
  };
  size_t b = present(start) ? clamp(intArg(start, 0, "start")) : 0;
  size_t e = present(end) ? clamp(intArg(end, 0, "end")) : n;
  return {b, e};
}

// str.find / rfind / count / index in code points.
int64_t findStr(const std::string& s, const std::string& sub, const std::optional<Value>& start,
                const std::optional<Value>& end, bool fromRight) {
  std::u32string cps = utf8Decode(s);
  std::u32string needle = utf8Decode(sub);
  auto [b, e] = spanArgs(cps.size(), start, end);
  if (e < b || e - b < needle.size()) return -1;
  std::u32string_view hay = std::u32string_view(cps).substr(b, e - b);
  size_t f = fromRight ? hay.rfind(needle) : hay.find(needle);
  return f == std::u32string_view::npos ? -1 : int64_t(b + f);
}

int64_t countStr(const std::string& s, const std::string& sub, const std::optional<Value>& start,
                 const std::optional<Value>& end) {
  std::u32string cps = utf8Decode(s);
  std::u32string needle = utf8Decode(sub);
  auto [b, e] = spanArgs(cps.size(), start, end);
  if (e < b) return 0;
  std::u32string_view hay = std::u32string_view(cps).substr(b, e - b);
  if (needle.empty()) return int64_t(hay.size()) + 1;
  int64_t count = 0;
  for (size_t f = hay.find(needle); f != std::u32string_view::npos; f = hay.find(needle, f + needle.size())) ++count;
  return count;
}

// str.startswith / endswith with a string or a tuple/list of strings.
bool affixMatch(const std::string& s, const Value& affix, const std::optional<Value>& start,
                const std::optional<Value>& end, bool prefix) {
  std::vector<std::string> options;
  if (affix.isList()) {
    for (const auto& v : affix.listData().items) options.push_back(needString(v, prefix ? "startswith" : "endswith"));
  } else {
    options.push_back(needString(affix, prefix ? "startswith" : "endswith"));
  }
  std::string hay = s;
  if (present(start) || present(end)) {
    std::u32string cps = utf8Decode(s);
    auto [b, e] = spanArgs(cps.size(), start, end);
    if (e < b) return false;
    hay = utf8Encode(std::u32string_view(cps).substr(b, e - b));
  }
  for (const auto& o : options) {
    if (o.size() > hay.size()) continue;
    if (prefix ? hay.compare(0, o.size(), o) == 0 : hay.compare(hay.size() - o.size(), o.size(), o) == 0) return true;
  }
  return false;
}

std::string padStr(const std::string& s, int64_t width, const std::string& fill, char how) {
  std::u32string f = utf8Decode(fill);
  if (f.size() != 1) renderFail("the fill character must be exactly one character long");
  int64_t n = length(Value::string(s));
  if (width <= n) return s;
  checkSize(size_t(width));
  int64_t pad = width - n;
  int64_t left = how == 'l' ? 0 : how == 'r' ? pad : pad / 2 + (pad & width & 1);
  std::string l, r;
  for (int64_t i = 0; i < left; ++i) utf8Append(l, f[0]);
  for (int64_t i = 0; i < pad - left; ++i) utf8Append(r, f[0]);
  return l + s + r;
}

// str.format with {}, {0}, {name} and {{ }} (no format specs).
std::string pyFormat(const std::string& fmtStr, const CallArgs& a) {
  std::string out;
  size_t autoIdx = 0;
  for (size_t i = 0; i < fmtStr.size(); ++i) {
    char c = fmtStr[i];
    if (c == '{' && i + 1 < fmtStr.size() && fmtStr[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (c == '}' && i + 1 < fmtStr.size() && fmtStr[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (c == '{') {
      size_t e = fmtStr.find('}', i);
      if (e == std::string::npos) renderFail("format: single '{' encountered in format string");
      std::string field = fmtStr.substr(i + 1, e - i - 1);
      bool asRepr = false;
      if (field.size() >= 2 && field[field.size() - 2] == '!') {
        asRepr = field.back() == 'r';
        field.resize(field.size() - 2);
      }
      if (field.find(':') != std::string::npos) renderFail("format: format specs are not supported");
      const Value* v = nullptr;
      if (field.empty()) {
        if (autoIdx >= a.pos.size()) renderFail("format: not enough positional arguments");
        v = &a.pos[autoIdx++];
      } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
        size_t idx = std::strtoul(field.c_str(), nullptr, 10);
        if (idx >= a.pos.size()) renderFail("format: replacement index " + field + " out of range");
        v = &a.pos[idx];
      } else {
        for (const auto& [k, val] : a.kw)
          if (k == field) v = &val;
        if (!v) renderFail("format: missing keyword argument '" + field + "'");
      }
      out += asRepr ? repr(*v) : toStr(*v);
      i = e;
    } else if (c == '}') {
      renderFail("format: single '}' encountered in format string");
    } else {
      out += c;
    }
    checkSize(out.size());
  }
  return out;
}

std::string joinValues(Renderer& r, const std::vector<Value>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += toStr(items[i]);
    checkSize(out.size());
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Methods of str / dict / list values

using MethodFn = Value (*)(Renderer&, const Value& self, CallArgs& a);

Value strMethod(Renderer& r, const Value& self, CallArgs& a, std::string_view name) {
  const std::string& s = self.stringValue();
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Args p = bindArgs(a, {"chars"}, name);
    return Value::string(stripStr(s, p[0], name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    Args p = bindArgs(a, {"sep", "maxsplit"}, name);
    return strList(splitStr(s, p[0], intArg(p[1], -1, "maxsplit"), name == "rsplit"));
  }
  if (name == "splitlines") {
    Args p = bindArgs(a, {"keepends"}, name);
    return strList(splitLines(s, boolArg(p[0], false)));
  }
  if (name == "startswith" || name == "endswith") {
    Args p = bindArgs(a, {"affix", "start", "end"}, name);
    if (!p[0]) renderFail(std::string(name) + "() takes at least 1 argument");
    return Value::boolean(affixMatch(s, *p[0], p[1], p[2], name == "startswith"));
  }
  if (name == "upper") return noArgs(a, name), Value::string(upperStr(s));
  if (name == "lower") return noArgs(a, name), Value::string(lowerStr(s));
  if (name == "title") return noArgs(a, name), Value::string(pyTitle(s));
  if (name == "capitalize") return noArgs(a, name), Value::string(capitalizeStr(s));
  if (name == "replace") {
    Args p = bindArgs(a, {"old", "new", "count"}, name);
    return Value::string(replaceStr(s, strArg(p[0], "replace"), strArg(p[1], "replace"), intArg(p[2], -1, "count")));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    Args p = bindArgs(a, {"sub", "start", "end"}, name);
    int64_t f = findStr(s, strArg(p[0], name), p[1], p[2], name[0] == 'r');
    if (f < 0 && (name == "index" || name == "rindex")) renderFail("substring not found");
    return Value::integer(f);
  }
  if (name == "count") {
    Args p = bindArgs(a, {"sub", "start", "end"}, name);
    return Value::integer(countStr(s, strArg(p[0], "count"), p[1], p[2]));
  }
  if (name == "format") return Value::string(pyFormat(s, a));
  if (name == "join") {
    Args p = bindArgs(a, {"iterable"}, name);
    if (!p[0]) renderFail("join() takes exactly one argument");
    std::vector<Value> items = iterate(*p[0]);
    for (const auto& v : items)
      if (!v.isString()) renderFail("join: sequence item: expected str instance, " + typeName(v) + " found");
    return Value::string(joinValues(r, items, s));
  }
  if (name == "removeprefix" || name == "removesuffix") {
    Args p = bindArgs(a, {"affix"}, name);
    std::string x = strArg(p[0], name);
    if (name == "removeprefix" && s.compare(0, x.size(), x) == 0) return Value::string(s.substr(x.size()));
    if (name == "removesuffix" && x.size() <= s.size() && s.compare(s.size() - x.size(), x.size(), x) == 0)
      return Value::string(s.substr(0, s.size() - x.size()));
    return self;
  }
  if (name == "center" || name == "ljust" || name == "rjust") {
    Args p = bindArgs(a, {"width", "fillchar"}, name);
    std::string fill = p[1] ? strArg(p[1], name) : " ";
    return Value::string(padStr(s, intArg(p[0], 0, name), fill, name == "center" ? 'c' : name[0]));
  }
  // is* predicates
  noArgs(a, name);
  std::u32string cps = utf8Decode(s);
  auto all = [&](auto pred) { return !cps.empty() && std::all_of(cps.begin(), cps.end(), pred); };
  if (name == "isdigit" || name == "isnumeric" || name == "isdecimal") return Value::boolean(all(pyIsDigit));
  if (name == "isalpha") return Value::boolean(all(pyIsAlpha));
  if (name == "isalnum") return Value::boolean(all([](char32_t c) { return pyIsAlpha(c) || pyIsDigit(c); }));
  if (name == "isspace") return Value::boolean(all(pyIsSpace));
  bool anyCased = std::any_of(cps.begin(), cps.end(), isCased);
  if (name == "isupper")
    return Value::boolean(anyCased && std::none_of(cps.begin(), cps.end(), [](char32_t c) { return pyUpper(c) != c; }));
  if (name == "islower")
    return Value::boolean(anyCased && std::none_of(cps.begin(), cps.end(), [](char32_t c) { return pyLower(c) != c; }));
  renderFail("unknown str method " + std::string(name));
}

constexpr std::string_view kStrMethods[] = {
    "strip",      "lstrip",     "rstrip",     "split",   "rsplit",      "splitlines",   "startswith",
    "endswith",   "upper",      "lower",      "title",   "capitalize",  "replace",      "find",
    "rfind",      "index",      "rindex",     "count",   "format",      "join",         "removeprefix",
    "removesuffix", "center",   "ljust",      "rjust",   "isdigit",     "isnumeric",    "isdecimal",
    "isalpha",    "isalnum",    "isspace",    "isupper", "islower"};

Value dictMethod(Renderer&, const Value& self, CallArgs& a, std::string_view name) {
  const DictData& d = self.dictData();
  if (name == "items") {
    noArgs(a, name);
    std::vector<Value> out;
    for (const auto& [k, v] : d.items) out.push_back(Value::list({k, v}, true));
    return Value::list(std::move(out));
  }
  if (name == "keys" || name == "values") {
    noArgs(a, name);
    std::vector<Value> out;
    for (const auto& [k, v] : d.items) out.push_back(name == "keys" ? k : v);
    return Value::list(std::move(out));
  }
  if (name == "get") {
    Args p = bindArgs(a, {"key", "default"}, name);
    if (!p[0]) renderFail("get() takes at least 1 argument");
    if (const Value* v = d.find(*p[0])) return *v;
    return p[1] ? *p[1] : Value::none();
  }
  if (name == "copy") {
    noArgs(a, name);
    Value c = Value::dict();
    c.dictData().items = d.items;
    return c;
  }
  renderFail("dict method '" + std::string(name) + "' is not supported (the sandbox forbids changing a dict)");
}

// Python's dict attributes: these names resolve to methods before keys (`d.items` is the method).
constexpr std::string_view kDictMethods[] = {"items",  "keys",    "values",     "get",   "copy", "update",
                                             "pop",    "popitem", "setdefault", "clear", "fromkeys"};

Value listMethod(Renderer&, const Value& self, CallArgs& a, std::string_view name) {
  auto& items = self.listData().items;
  if (name == "append") {
    if (self.listData().tuple) renderFail("'tuple' object has no attribute 'append'");
    Args p = bindArgs(a, {"object"}, name);
    if (!p[0]) renderFail("append() takes exactly one argument");
    checkSize(items.size() + 1);
    items.push_back(*p[0]);
    return Value::none();
  }
  if (name == "index" || name == "count") {
    Args p = bindArgs(a, {"value"}, name);
    if (!p[0]) renderFail(std::string(name) + "() takes exactly one argument");
    int64_t count = 0;
    for (size_t i = 0; i < items.size(); ++i)
      if (equals(items[i], *p[0])) {
        if (name == "index") return Value::integer(int64_t(i));
        ++count;
      }
    if (name == "index") renderFail(repr(*p[0]) + " is not in list");
    return Value::integer(count);
  }
  renderFail("list method '" + std::string(name) + "' is not supported");
}

constexpr std::string_view kListMethods[] = {"append", "index", "count", "extend", "pop",
                                             "insert", "remove", "sort", "reverse", "clear"};

template <size_t N>
bool inTable(const std::string_view (&table)[N], std::string_view name) {
  return std::find(std::begin(table), std::end(table), name) != std::end(table);
}

}  // namespace

std::optional<Value> methodOf(const Value& obj, const std::string& name) {
  using Impl = Value (*)(Renderer&, const Value&, CallArgs&, std::string_view);
  Impl impl = nullptr;
  if (obj.isString() && inTable(kStrMethods, name))
    impl = strMethod;
  else if (obj.isDict() && !obj.isNamespace() && inTable(kDictMethods, name))
    impl = dictMethod;
  else if (obj.isList() && inTable(kListMethods, name))
    impl = listMethod;
  if (!impl) return std::nullopt;
  return Value::callable(typeName(obj) + "." + name,
                         [impl, obj, name](Renderer& r, CallArgs& a) { return impl(r, obj, a, name); });
}

// ---------------------------------------------------------------------------------------------------------
// Arithmetic and formatting

static std::string opSymbol(BinOp op) {
  switch (op) {
    case BinOp::Add: return "+";
    case BinOp::Sub: return "-";
    case BinOp::Mul: return "*";
    case BinOp::Div: return "/";
    case BinOp::FloorDiv: return "//";
    case BinOp::Mod: return "%";
    case BinOp::Pow: return "**";
  }
  return "?";
}

[[noreturn]] static void unsupported(BinOp op, const Value& a, const Value& b) {
  renderFail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", opSymbol(op), typeName(a), typeName(b)));
}

static Value repeat(const Value& seq, int64_t n) {
  if (n <= 0) return seq.isString() ? Value::string("") : Value::list({}, seq.listData().tuple);
  if (seq.isString()) {
    const std::string& s = seq.stringValue();
    if (!s.empty() && uint64_t(n) > kMaxSize / s.size()) checkSize(kMaxSize + 1);
    std::string out;
    out.reserve(s.size() * size_t(n));
    for (int64_t i = 0; i < n; ++i) out += s;
    return Value::string(std::move(out));
  }
  const auto& items = seq.listData().items;
  if (!items.empty() && uint64_t(n) > kMaxSize / 64 / items.size()) checkSize(kMaxSize + 1);
  std::vector<Value> out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), items.begin(), items.end());
  return Value::list(std::move(out), seq.listData().tuple);
}

static void checkOverflow(bool overflow) {
  if (overflow) renderFail("integer overflow");
}

Value arithmetic(BinOp op, const Value& a, const Value& b) {
  failIfUndefined(a);
  failIfUndefined(b);
  const bool ints = a.isIntegral() && b.isIntegral();
  const bool nums = a.isNumber() && b.isNumber();
  int64_t r = 0;
  switch (op) {
    case BinOp::Add:
      if (ints) {
        checkOverflow(__builtin_add_overflow(a.intValue(), b.intValue(), &r));
        return Value::integer(r);
      }
      if (nums) return Value::number(a.numberValue() + b.numberValue());
      if (a.isString() && b.isString()) {
        checkSize(a.stringValue().size() + b.stringValue().size());
        return Value::string(a.stringValue() + b.stringValue());
      }
      if (a.isList() && b.isList() && a.listData().tuple == b.listData().tuple) {
        std::vector<Value> items = a.listData().items;
        checkSize(items.size() + b.listData().items.size());
        items.insert(items.end(), b.listData().items.begin(), b.listData().items.end());
        return Value::list(std::move(items), a.listData().tuple);
      }
      if (a.isString())
        renderFail("can only concatenate str (not \"" + typeName(b) + "\") to str");
      unsupported(op, a, b);
    case BinOp::Sub:
      if (ints) {
        checkOverflow(__builtin_sub_overflow(a.intValue(), b.intValue(), &r));
        return Value::integer(r);
      }
      if (nums) return Value::number(a.numberValue() - b.numberValue());
      unsupported(op, a, b);
    case BinOp::Mul:
      if (ints) {
        checkOverflow(__builtin_mul_overflow(a.intValue(), b.intValue(), &r));
        return Value::integer(r);
      }
      if (nums) return Value::number(a.numberValue() * b.numberValue());
      if ((a.isString() || a.isList()) && b.isIntegral()) return repeat(a, b.intValue());
      if (a.isIntegral() && (b.isString() || b.isList())) return repeat(b, a.intValue());
      unsupported(op, a, b);
    case BinOp::Div:
      if (!nums) unsupported(op, a, b);
      if (b.numberValue() == 0) renderFail("division by zero");
      return Value::number(a.numberValue() / b.numberValue());
    case BinOp::FloorDiv:
    case BinOp::Mod:
      if (ints) {
        int64_t x = a.intValue(), y = b.intValue();
        if (y == 0) renderFail("integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) {
          if (op == BinOp::Mod) return Value::integer(0);
          renderFail("integer overflow");
        }
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
          --q;
          m += y;
        }
        return Value::integer(op == BinOp::FloorDiv ? q : m);
      }
      if (nums) {
        double x = a.numberValue(), y = b.numberValue();
        if (y == 0) renderFail(op == BinOp::Mod ? "float modulo" : "float floor division by zero");
        // Python's float divmod
        double m = std::fmod(x, y);
        double div = (x - m) / y;
        if (m != 0 && ((y < 0) != (m < 0))) {
          m += y;
          div -= 1.0;
        }
        if (op == BinOp::Mod) return Value::number(m == 0 ? std::copysign(0.0, y) : m);
        double fl = std::copysign(0.0, x / y);
        if (div != 0) {
          fl = std::floor(div);
          if (div - fl > 0.5) fl += 1.0;
        }
        return Value::number(fl);
      }
      if (op == BinOp::Mod && a.isString()) {
        std::vector<Value> args;
        if (b.isList() && b.listData().tuple)
          args = b.listData().items;
        else
          args.push_back(b);
        return Value::string(percentFormat(a.stringValue(), args));
      }
      unsupported(op, a, b);
    case BinOp::Pow:
      if (ints && b.intValue() >= 0) {
        int64_t base = a.intValue(), e = b.intValue(), acc = 1;
        while (e > 0) {
          if (e & 1) checkOverflow(__builtin_mul_overflow(acc, base, &acc));
          e >>= 1;
          if (e > 0) checkOverflow(__builtin_mul_overflow(base, base, &base));
        }
        return Value::integer(acc);
      }
      if (nums) {
        if (a.numberValue() == 0 && b.numberValue() < 0) renderFail("0.0 cannot be raised to a negative power");
        return Value::number(std::pow(a.numberValue(), b.numberValue()));
      }
      unsupported(op, a, b);
  }
  unsupported(op, a, b);
}

bool contains(const Value& haystack, const Value& needle) {
  switch (haystack.kind()) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::String:
      if (!needle.isString())
        renderFail("'in <string>' requires string as left operand, not " + typeName(needle));
      return haystack.stringValue().find(needle.stringValue()) != std::string::npos;
    case Value::Kind::List:
      for (const auto& v : haystack.listData().items)
        if (equals(v, needle)) return true;
      return false;
    case Value::Kind::Dict:
      if (haystack.isNamespace()) break;
      return haystack.dictData().find(needle) != nullptr;
    default: break;
  }
  renderFail("argument of type '" + typeName(haystack) + "' is not iterable");
}

std::string percentFormat(const std::string& f, const std::vector<Value>& args) {
  std::string out;
  size_t next = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] != '%') {
      out += f[i];
      continue;
    }
    if (++i >= f.size()) renderFail("incomplete format");
    if (f[i] == '%') {
      out += '%';
      continue;
    }
    std::string spec = "%";
    while (i < f.size() && std::string_view("-+ 0#").find(f[i]) != std::string_view::npos) spec += f[i++];
    while (i < f.size() && f[i] >= '0' && f[i] <= '9' && spec.size() < 8) spec += f[i++];
    if (i < f.size() && f[i] == '.') {
      spec += f[i++];
      while (i < f.size() && f[i] >= '0' && f[i] <= '9' && spec.size() < 12) spec += f[i++];
    }
    while (i < f.size() && (f[i] == 'l' || f[i] == 'h' || f[i] == 'L')) ++i;
    if (i >= f.size()) renderFail("incomplete format");
    char conv = f[i];
    if (next >= args.size()) renderFail("not enough arguments for format string");
    const Value& v = args[next++];
    char buf[512];
    if (conv == 's' || conv == 'r' || conv == 'a') {
      std::string s = conv == 's' ? toStr(v) : repr(v);
      // Width and precision count characters (snprintf would count bytes).
      size_t k = 1;
      while (k < spec.size() && std::string_view("-+ 0#").find(spec[k]) != std::string_view::npos) ++k;
      const bool leftAlign = spec.substr(1, k - 1).find('-') != std::string::npos;
      const std::string rest = spec.substr(k);
      const size_t width = rest.empty() || rest[0] == '.' ? 0 : std::strtoul(rest.c_str(), nullptr, 10);
      std::u32string cps = utf8Decode(s);
      if (size_t dot = rest.find('.'); dot != std::string::npos)
        cps = cps.substr(0, std::strtoul(rest.c_str() + dot + 1, nullptr, 10));
      std::string body = utf8Encode(cps);
      std::string pad(width > cps.size() ? width - cps.size() : 0, ' ');
      out += leftAlign ? body + pad : pad + body;
    } else if (conv == 'd' || conv == 'i' || conv == 'u' || conv == 'x' || conv == 'X' || conv == 'o') {
      failIfUndefined(v);
      if (!v.isNumber()) renderFail(fmt::format("%{} format: a real number is required, not {}", conv, typeName(v)));
      if ((conv == 'x' || conv == 'X' || conv == 'o') && v.isFloat())
        renderFail(fmt::format("%{} format: an integer is required, not float", conv));
      int64_t n = v.isFloat() ? int64_t(std::trunc(v.numberValue())) : v.intValue();
      char c = conv == 'u' || conv == 'i' ? 'd' : conv;
      std::snprintf(buf, sizeof buf, (spec + "ll" + c).c_str(), static_cast<long long>(n));
      out += buf;
    } else if (std::string_view("fFeEgG").find(conv) != std::string_view::npos) {
      failIfUndefined(v);
      if (!v.isNumber()) renderFail(fmt::format("%{} format: a real number is required, not {}", conv, typeName(v)));
      std::snprintf(buf, sizeof buf, (spec + conv).c_str(), v.numberValue());
      out += buf;
    } else if (conv == 'c') {
      if (v.isIntegral() && v.intValue() >= 0 && v.intValue() <= 0x10FFFF)
        utf8Append(out, char32_t(v.intValue()));
      else if (v.isString() && length(v) == 1)
        out += v.stringValue();
      else
        renderFail("%c requires an int or a single character");
    } else {
      renderFail(fmt::format("unsupported format character '{}'", conv));
    }
    checkSize(out.size());
  }
  if (next < args.size()) renderFail("not all arguments converted during string formatting");
  return out;
}

Value slice(const Value& obj, const Value& start, const Value& stop, const Value& stepV) {
  failIfUndefined(obj);
  if (!obj.isString() && !obj.isList()) renderFail("'" + typeName(obj) + "' object is not subscriptable");
  auto bound = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.isUndefined() || v.isNone()) return std::nullopt;
    if (!v.isIntegral()) renderFail(std::string("slice indices must be integers or None, got ") + what);
    return v.intValue();
  };
  std::optional<int64_t> b = bound(start, "start"), e = bound(stop, "stop"), s = bound(stepV, "step");
  int64_t step = s.value_or(1);
  if (step == 0) renderFail("slice step cannot be zero");
  std::u32string cps;
  const bool str = obj.isString();
  if (str) cps = utf8Decode(obj.stringValue());
  const int64_t n = str ? int64_t(cps.size()) : int64_t(obj.listData().items.size());
  auto adjust = [n, step](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t i = *v;
    if (i < 0) i += n;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  int64_t lo = adjust(b, step > 0 ? 0 : n - 1);
  int64_t hi = adjust(e, step > 0 ? n : -1);
  std::vector<int64_t> idx;
  if (step > 0)
    for (int64_t i = lo; i < hi; i += step) idx.push_back(i);
  else
    for (int64_t i = lo; i > hi; i += step) idx.push_back(i);
  if (str) {
    std::u32string out;
    for (int64_t i : idx) out.push_back(cps[size_t(i)]);
    return Value::string(utf8Encode(out));
  }
  std::vector<Value> out;
  for (int64_t i : idx) out.push_back(obj.listData().items[size_t(i)]);
  return Value::list(std::move(out), obj.listData().tuple);
}

// ---------------------------------------------------------------------------------------------------------
// Filters

namespace {

// Jinja's attribute paths ("a.b", "items.0"): each part looked up as an item, integers as indices.
Value attrPath(Renderer& r, Value v, const Value& path) {
  if (path.isIntegral()) return r.getItem(v, path);
  const std::string& p = needString(path, "attribute");
  size_t pos = 0;
  while (true) {
    size_t dot = p.find('.', pos);
    std::string part = p.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    v = r.getItem(v, digits ? Value::integer(std::strtoll(part.c_str(), nullptr, 10)) : Value::string(part));
    if (dot == std::string::npos) return v;
    pos = dot + 1;
  }
}

Value sortKey(const Value& v, bool caseSensitive) {
  if (!caseSensitive && v.isString()) return Value::string(lowerStr(v.stringValue()));
  return v;
}

Value f_abs(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "abs");
  if (!in.isNumber()) renderFail("bad operand type for abs(): '" + typeName(in) + "'");
  if (in.isFloat()) return Value::number(std::fabs(in.numberValue()));
  if (in.intValue() == INT64_MIN) renderFail("integer overflow");
  return Value::integer(std::llabs(in.intValue()));
}

Value f_attr(Renderer& r, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"name"}, "attr");
  std::string name = strArg(p[0], "attr");
  failIfUndefined(in);
  if (in.isNamespace()) return r.getAttr(in, name);  // attributes only: dict keys are not attributes
  if (auto m = methodOf(in, name)) return *m;
  return Value::undefined(fmt::format("'{} object' has no attribute '{}'", typeName(in), name));
}

Value f_batch(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"linecount", "fill_with"}, "batch");
  int64_t n = intArg(p[0], 0, "batch");
  if (n <= 0) renderFail("batch: linecount must be positive");
  std::vector<Value> items = iterate(in), out, cur;
  for (auto& v : items) {
    cur.push_back(std::move(v));
    if (int64_t(cur.size()) == n) out.push_back(Value::list(std::exchange(cur, {})));
  }
  if (!cur.empty()) {
    if (present(p[1]))
      while (int64_t(cur.size()) < n) cur.push_back(*p[1]);
    out.push_back(Value::list(std::move(cur)));
  }
  return Value::list(std::move(out));
}

Value f_capitalize(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "capitalize");
  return Value::string(capitalizeStr(toStr(in)));
}

Value f_center(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"width"}, "center");
  return Value::string(padStr(toStr(in), intArg(p[0], 80, "center"), " ", 'c'));
}

Value f_default(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"default_value", "boolean"}, "default");
  bool useDefault = in.isUndefined() || (boolArg(p[1], false) && !truthy(in));
  if (!useDefault) return in;
  return p[0] ? *p[0] : Value::string("");
}

Value f_dictsort(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"case_sensitive", "by", "reverse"}, "dictsort");
  failIfUndefined(in);
  if (!in.isDict() || in.isNamespace()) renderFail("dictsort: expected a mapping, got " + typeName(in));
  bool cs = boolArg(p[0], false);
  std::string by = p[1] ? strArg(p[1], "dictsort") : "key";
  if (by != "key" && by != "value") renderFail("dictsort: 'by' must be 'key' or 'value'");
  size_t pos = by == "key" ? 0 : 1;
  std::vector<Value> items;
  for (const auto& [k, v] : in.dictData().items) items.push_back(Value::list({k, v}, true));
  bool rev = boolArg(p[2], false);
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    int c = compare(sortKey(x.listData().items[pos], cs), sortKey(y.listData().items[pos], cs));
    return rev ? c > 0 : c < 0;
  });
  return Value::list(std::move(items));
}

std::string htmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

Value f_escape(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "escape");
  return Value::string(htmlEscape(toStr(in)));
}

Value f_first(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "first");
  std::vector<Value> items = iterate(in);
  if (items.empty()) return Value::undefined("first: the sequence is empty");
  return items.front();
}

Value f_last(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "last");
  std::vector<Value> items = iterate(in);
  if (items.empty()) return Value::undefined("last: the sequence is empty");
  return items.back();
}

// Python float(str): optional sign, digits with single underscores, inf / nan; surrounding whitespace.
std::optional<double> parsePyFloat(const std::string& s) {
  std::string t = stripStr(s, std::nullopt, true, true);
  std::string clean;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == '_') {
      bool ok = i > 0 && i + 1 < t.size() && std::isdigit(static_cast<unsigned char>(t[i - 1])) &&
                std::isdigit(static_cast<unsigned char>(t[i + 1]));
      if (!ok) return std::nullopt;
      continue;
    }
    clean += t[i];
  }
  if (clean.empty()) return std::nullopt;
  std::string low = lowerStr(clean);
  std::string body = (low[0] == '+' || low[0] == '-') ? low.substr(1) : low;
  if (body == "inf" || body == "infinity" || body == "nan") {
    double v = body == "nan" ? NAN : INFINITY;
    return low[0] == '-' ? -v : v;
  }
  for (char c : body)
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' || c == '-'))
      return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(clean.c_str(), &end);
  if (end != clean.c_str() + clean.size()) return std::nullopt;
  return v;
}

// Python int(str, base).
std::optional<int64_t> parsePyInt(const std::string& s, int64_t base) {
  std::string t = stripStr(s, std::nullopt, true, true);
  bool neg = false;
  size_t i = 0;
  if (i < t.size() && (t[i] == '+' || t[i] == '-')) neg = t[i++] == '-';
  std::string low = lowerStr(t.substr(i));
  auto prefixed = [&](char p) { return low.size() > 2 && low[0] == '0' && low[1] == p; };
  if ((base == 16 || base == 0) && prefixed('x')) {
    base = 16;
    low = low.substr(2);
    if (!low.empty() && low[0] == '_') low = low.substr(1);
  } else if ((base == 8 || base == 0) && prefixed('o')) {
    base = 8;
    low = low.substr(2);
    if (!low.empty() && low[0] == '_') low = low.substr(1);
  } else if ((base == 2 || base == 0) && prefixed('b')) {
    base = 2;
    low = low.substr(2);
    if (!low.empty() && low[0] == '_') low = low.substr(1);
  } else if (base == 0) {
    base = 10;
    if (low.size() > 1 && low[0] == '0' && low.find_first_not_of("0_") != std::string::npos) return std::nullopt;
  }
  if (base < 2 || base > 36 || low.empty()) return std::nullopt;
  int64_t v = 0;
  for (size_t k = 0; k < low.size(); ++k) {
    char c = low[k];
    if (c == '_') {
      if (k == 0 || k + 1 == low.size() || low[k + 1] == '_') return std::nullopt;
      continue;
    }
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
    if (d >= base) return std::nullopt;
    if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v)) return std::nullopt;
  }
  return neg ? -v : v;
}

Value f_float(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"default"}, "float");
  Value def = p[0] ? *p[0] : Value::number(0.0);
  failIfUndefined(in);
  if (in.isNumber()) return Value::number(in.numberValue());
  if (in.isString())
    if (auto v = parsePyFloat(in.stringValue())) return Value::number(*v);
  return def;
}

Value f_int(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"default", "base"}, "int");
  Value def = p[0] ? *p[0] : Value::integer(0);
  failIfUndefined(in);
  if (in.isIntegral()) return Value::integer(in.intValue());
  if (in.isFloat()) {
    double d = in.numberValue();
    if (std::isnan(d) || std::isinf(d) || std::fabs(d) >= 9.2e18) return def;
    return Value::integer(int64_t(std::trunc(d)));
  }
  if (in.isString()) {
    if (auto v = parsePyInt(in.stringValue(), intArg(p[1], 10, "int"))) return Value::integer(*v);
    if (auto d = parsePyFloat(in.stringValue()))
      if (!std::isnan(*d) && !std::isinf(*d) && std::fabs(*d) < 9.2e18) return Value::integer(int64_t(std::trunc(*d)));
  }
  return def;
}

Value f_format(Renderer&, const Value& in, CallArgs& a) {
  if (!a.kw.empty()) renderFail("format: keyword arguments are not supported");
  return Value::string(percentFormat(toStr(in), a.pos));
}

Value f_indent(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"width", "first", "blank"}, "indent");
  std::string ind;
  if (p[0] && p[0]->isString())
    ind = p[0]->stringValue();
  else
    ind = std::string(size_t(std::clamp<int64_t>(intArg(p[0], 4, "indent"), 0, 4096)), ' ');
  bool first = boolArg(p[1], false), blank = boolArg(p[2], false);
  failIfUndefined(in);
  std::vector<std::string> lines = splitLines(toStr(in) + "\n", false);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) {
      out += '\n';
      if (blank || !lines[i].empty()) out += ind;
    }
    out += lines[i];
    checkSize(out.size());
  }
  if (first) out = ind + out;
  return Value::string(std::move(out));
}

Value f_items(Renderer& r, const Value& in, CallArgs& a) {
  noArgs(a, "items");
  if (in.isUndefined()) return Value::list();
  if (!in.isDict() || in.isNamespace()) renderFail("items: can only get item pairs from a mapping, got " + typeName(in));
  CallArgs none;
  return dictMethod(r, in, none, "items");
}

Value f_join(Renderer& r, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"d", "attribute"}, "join");
  std::string sep = p[0] ? toStr(*p[0]) : "";
  std::vector<Value> items = iterate(in);
  if (present(p[1]))
    for (auto& v : items) v = attrPath(r, v, *p[1]);
  return Value::string(joinValues(r, items, sep));
}

Value f_keys(Renderer& r, const Value& in, CallArgs& a) {
  noArgs(a, "keys");
  if (in.isUndefined()) return Value::list();
  if (!in.isDict() || in.isNamespace()) renderFail("keys: expected a mapping, got " + typeName(in));
  CallArgs none;
  return dictMethod(r, in, none, "keys");
}

Value f_values(Renderer& r, const Value& in, CallArgs& a) {
  noArgs(a, "values");
  if (in.isUndefined()) return Value::list();
  if (!in.isDict() || in.isNamespace()) renderFail("values: expected a mapping, got " + typeName(in));
  CallArgs none;
  return dictMethod(r, in, none, "values");
}

Value f_length(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "length");
  return Value::integer(length(in));
}

Value f_list(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "list");
  return Value::list(iterate(in));
}

Value f_lower(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "lower");
  return Value::string(lowerStr(toStr(in)));
}

Value f_upper(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "upper");
  return Value::string(upperStr(toStr(in)));
}

Value f_map(Renderer& r, const Value& in, CallArgs& a) {
  std::vector<Value> items = iterate(in);
  std::optional<Value> attribute, def;
  for (const auto& [k, v] : a.kw) {
    if (k == "attribute")
      attribute = v;
    else if (k == "default")
      def = v;
  }
  if (attribute) {
    for (auto& v : items) {
      v = attrPath(r, v, *attribute);
      if (v.isUndefined() && def) v = *def;
    }
    return Value::list(std::move(items));
  }
  if (a.pos.empty()) renderFail("map: needs a filter name or attribute=");
  std::string name = needString(a.pos[0], "map");
  CallArgs rest;
  rest.pos.assign(a.pos.begin() + 1, a.pos.end());
  rest.kw = a.kw;
  for (auto& v : items) {
    r.step();
    CallArgs copy = rest;
    v = r.applyFilter(name, v, copy);
  }
  return Value::list(std::move(items));
}

Value minMax(Renderer& r, const Value& in, CallArgs& a, bool wantMax) {
  Args p = bindArgs(a, {"case_sensitive", "attribute"}, wantMax ? "max" : "min");
  bool cs = boolArg(p[0], false);
  std::vector<Value> items = iterate(in);
  if (items.empty()) return Value::undefined(std::string(wantMax ? "max" : "min") + ": the sequence is empty");
  size_t best = 0;
  auto key = [&](const Value& v) { return sortKey(present(p[1]) ? attrPath(r, v, *p[1]) : v, cs); };
  Value bestKey = key(items[0]);
  for (size_t i = 1; i < items.size(); ++i) {
    Value k = key(items[i]);
    int c = compare(k, bestKey);
    if (wantMax ? c > 0 : c < 0) {
      best = i;
      bestKey = std::move(k);
    }
  }
  return items[best];
}
Value f_max(Renderer& r, const Value& in, CallArgs& a) { return minMax(r, in, a, true); }
Value f_min(Renderer& r, const Value& in, CallArgs& a) { return minMax(r, in, a, false); }

Value f_replace(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"old", "new", "count"}, "replace");
  if (!p[0] || !p[1]) renderFail("replace: needs the old and new strings");
  return Value::string(replaceStr(toStr(in), toStr(*p[0]), toStr(*p[1]), intArg(p[2], -1, "replace")));
}

Value f_reverse(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "reverse");
  if (in.isString()) {
    std::u32string cps = utf8Decode(in.stringValue());
    std::reverse(cps.begin(), cps.end());
    return Value::string(utf8Encode(cps));
  }
  std::vector<Value> items = iterate(in);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

// Python round(x, n) for floats: correctly rounded to n decimals, ties to even.
double pyRound(double x, int64_t n) {
  if (std::isnan(x) || std::isinf(x)) return x;
  if (n >= 0) {
    if (n > 300) return x;
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", int(std::min<int64_t>(n, 340)), x);
    return std::strtod(buf, nullptr);
  }
  if (n < -308) return 0.0 * x;
  double p = std::pow(10.0, double(-n));
  return std::nearbyint(x / p) * p;
}

Value f_round(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"precision", "method"}, "round");
  int64_t prec = intArg(p[0], 0, "round");
  std::string method = p[1] ? strArg(p[1], "round") : "common";
  failIfUndefined(in);
  if (!in.isNumber()) renderFail("round: expected a number, got " + typeName(in));
  if (method == "common") {
    if (in.isIntegral()) {
      int64_t v = in.intValue();
      if (prec >= 0) return Value::integer(v);
      if (prec < -18) return Value::integer(0);
      int64_t m = 1;
      for (int64_t i = 0; i < -prec; ++i) m *= 10;
      int64_t q = v / m, rem = v % m;
      if (rem < 0) {
        rem += m;
        --q;
      }
      if (rem * 2 > m || (rem * 2 == m && (q % 2 != 0))) ++q;
      return Value::integer(q * m);
    }
    return Value::number(pyRound(in.numberValue(), prec));
  }
  if (method != "ceil" && method != "floor") renderFail("round: method must be 'common', 'ceil' or 'floor'");
  double m = std::pow(10.0, double(prec));
  double v = in.numberValue() * m;
  return Value::number((method == "ceil" ? std::ceil(v) : std::floor(v)) / m);
}

Value f_safe(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "safe");
  return Value::string(toStr(in));
}

// select / reject / selectattr / rejectattr
Value selectImpl(Renderer& r, const Value& in, CallArgs& a, bool byAttr, bool keep) {
  const char* what = byAttr ? (keep ? "selectattr" : "rejectattr") : (keep ? "select" : "reject");
  if (!a.kw.empty()) renderFail(std::string(what) + ": keyword arguments are not supported");
  size_t i = 0;
  Value attr;
  if (byAttr) {
    if (a.pos.empty()) renderFail(std::string(what) + ": needs an attribute name");
    attr = a.pos[i++];
  }
  std::optional<std::string> test;
  if (i < a.pos.size()) test = needString(a.pos[i++], what);
  CallArgs testArgs;
  testArgs.pos.assign(a.pos.begin() + long(i), a.pos.end());
  std::vector<Value> out;
  for (auto& v : iterate(in)) {
    r.step();
    Value x = byAttr ? attrPath(r, v, attr) : v;
    bool ok;
    if (test) {
      CallArgs copy = testArgs;
      ok = r.applyTest(*test, x, copy);
    } else {
      ok = truthy(x);
    }
    if (ok == keep) out.push_back(std::move(v));
  }
  return Value::list(std::move(out));
}
Value f_select(Renderer& r, const Value& in, CallArgs& a) { return selectImpl(r, in, a, false, true); }
Value f_reject(Renderer& r, const Value& in, CallArgs& a) { return selectImpl(r, in, a, false, false); }
Value f_selectattr(Renderer& r, const Value& in, CallArgs& a) { return selectImpl(r, in, a, true, true); }
Value f_rejectattr(Renderer& r, const Value& in, CallArgs& a) { return selectImpl(r, in, a, true, false); }

Value f_sort(Renderer& r, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"reverse", "case_sensitive", "attribute"}, "sort");
  bool rev = boolArg(p[0], false), cs = boolArg(p[1], false);
  std::vector<Value> items = iterate(in);
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& v : items) keyed.emplace_back(sortKey(present(p[2]) ? attrPath(r, v, *p[2]) : v, cs), v);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    int c = compare(x.first, y.first);
    return rev ? c > 0 : c < 0;
  });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return Value::list(std::move(out));
}

Value f_string(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "string");
  return Value::string(toStr(in));
}

Value f_sum(Renderer& r, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"attribute", "start"}, "sum");
  Value acc = p[1] ? *p[1] : Value::integer(0);
  for (auto& v : iterate(in)) acc = arithmetic(BinOp::Add, acc, present(p[0]) ? attrPath(r, v, *p[0]) : v);
  return acc;
}

Value f_title(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "title");
  return Value::string(jinjaTitle(toStr(in)));
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
Value f_tojson(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, "tojson");
  JsonOptions o;
  o.ensureAscii = boolArg(p[0], false);
  if (present(p[1])) {
    o.hasIndent = true;
    if (p[1]->isString())
      o.indent = p[1]->stringValue();
    else
      o.indent = std::string(size_t(std::clamp<int64_t>(intArg(p[1], 0, "tojson indent"), 0, 4096)), ' ');
    o.itemSep = ",";
  }
  if (present(p[2])) {
    const Value& s = *p[2];
    if (!s.isList() || s.listData().items.size() != 2 || !s.listData().items[0].isString() ||
        !s.listData().items[1].isString())
      renderFail("tojson: separators must be a pair of strings");
    o.itemSep = s.listData().items[0].stringValue();
    o.keySep = s.listData().items[1].stringValue();
  }
  o.sortKeys = boolArg(p[3], false);
  return Value::string(toJson(in, o));
}

Value f_trim(Renderer&, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"chars"}, "trim");
  return Value::string(stripStr(toStr(in), p[0], true, true));
}

Value f_unique(Renderer& r, const Value& in, CallArgs& a) {
  Args p = bindArgs(a, {"case_sensitive", "attribute"}, "unique");
  bool cs = boolArg(p[0], false);
  std::vector<Value> seen, out;
  for (auto& v : iterate(in)) {
    Value k = sortKey(present(p[1]) ? attrPath(r, v, *p[1]) : v, cs);
    bool dup = false;
    for (const auto& s : seen)
      if (equals(s, k)) {
        dup = true;
        break;
      }
    if (!dup) {
      seen.push_back(std::move(k));
      out.push_back(std::move(v));
    }
  }
  return Value::list(std::move(out));
}

Value f_wordcount(Renderer&, const Value& in, CallArgs& a) {
  noArgs(a, "wordcount");
  int64_t n = 0;
  bool inWord = false;
  for (char32_t c : utf8Decode(toStr(in))) {
    bool w = pyIsAlpha(c) || pyIsDigit(c) || c == '_' || (c >= 0x80 && !pyIsSpace(c) && c < 0xDC80);
    if (w && !inWord) ++n;
    inWord = w;
  }
  return Value::integer(n);
}

const std::unordered_map<std::string_view, FilterFn>& filterTable() {
  static const std::unordered_map<std::string_view, FilterFn> table = {
      {"abs", f_abs},          {"attr", f_attr},         {"batch", f_batch},
      {"capitalize", f_capitalize}, {"center", f_center}, {"count", f_length},
      {"d", f_default},        {"default", f_default},   {"dictsort", f_dictsort},
      {"e", f_escape},         {"escape", f_escape},     {"first", f_first},
      {"float", f_float},      {"format", f_format},     {"indent", f_indent},
      {"int", f_int},          {"items", f_items},       {"join", f_join},
      {"keys", f_keys},        {"last", f_last},         {"length", f_length},
      {"list", f_list},        {"lower", f_lower},       {"map", f_map},
      {"max", f_max},          {"min", f_min},           {"reject", f_reject},
      {"rejectattr", f_rejectattr}, {"replace", f_replace}, {"reverse", f_reverse},
      {"round", f_round},      {"safe", f_safe},         {"select", f_select},
      {"selectattr", f_selectattr}, {"sort", f_sort},    {"string", f_string},
      {"sum", f_sum},          {"title", f_title},       {"tojson", f_tojson},
      {"trim", f_trim},        {"unique", f_unique},     {"upper", f_upper},
      {"values", f_values},    {"wordcount", f_wordcount},
  };
  return table;
}

// ---------------------------------------------------------------------------------------------------------
// Tests

Value oneArg(CallArgs& a, const char* what) {
  Args p = bindArgs(a, {"other"}, what);
  if (!p[0]) renderFail(std::string(what) + " test needs an argument");
  return *p[0];
}

bool t_defined(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "defined"), !v.isUndefined(); }
bool t_undefined(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "undefined"), v.isUndefined(); }
bool t_none(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "none"), v.isNone(); }
bool t_boolean(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "boolean"), v.isBool(); }
bool t_true(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "true"), v.isBool() && v.boolValue(); }
bool t_false(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "false"), v.isBool() && !v.boolValue(); }
bool t_integer(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "integer"), v.isInt(); }
bool t_float(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "float"), v.isFloat(); }
bool t_number(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "number"), v.isNumber(); }
bool t_string(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "string"), v.isString(); }
bool t_mapping(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "mapping"), v.isDict() && !v.isNamespace(); }
bool t_callable(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "callable"), v.isCallable(); }
bool t_iterable(Renderer&, const Value& v, CallArgs& a) {
  noArgs(a, "iterable");
  return v.isUndefined() || v.isString() || v.isList() || (v.isDict() && !v.isNamespace());
}
bool t_sequence(Renderer&, const Value& v, CallArgs& a) {
  noArgs(a, "sequence");
  return v.isUndefined() || v.isString() || v.isList() || (v.isDict() && !v.isNamespace());
}
bool t_lower(Renderer& r, const Value& v, CallArgs& a) {
  noArgs(a, "lower");
  if (!v.isString()) return false;
  CallArgs none;
  return truthy(strMethod(r, v, none, "islower"));
}
bool t_upper(Renderer& r, const Value& v, CallArgs& a) {
  noArgs(a, "upper");
  if (!v.isString()) return false;
  CallArgs none;
  return truthy(strMethod(r, v, none, "isupper"));
}
bool t_escaped(Renderer&, const Value&, CallArgs& a) { return noArgs(a, "escaped"), false; }

bool parity(const Value& v, const char* what, int want) {
  failIfUndefined(v);
  if (v.isIntegral()) return ((v.intValue() % 2) + 2) % 2 == want;
  if (v.isFloat()) {
    double m = std::fmod(v.numberValue(), 2.0);
    if (m < 0) m += 2.0;
    return m == double(want);
  }
  renderFail(std::string(what) + " test needs a number, got " + typeName(v));
}
bool t_odd(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "odd"), parity(v, "odd", 1); }
bool t_even(Renderer&, const Value& v, CallArgs& a) { return noArgs(a, "even"), parity(v, "even", 0); }
bool t_divisibleby(Renderer&, const Value& v, CallArgs& a) {
  Value n = oneArg(a, "divisibleby");
  return truthy(arithmetic(BinOp::Mod, v, n)) == false;
}
bool t_eq(Renderer&, const Value& v, CallArgs& a) { return equals(v, oneArg(a, "eq")); }
bool t_ne(Renderer&, const Value& v, CallArgs& a) { return !equals(v, oneArg(a, "ne")); }
bool t_lt(Renderer&, const Value& v, CallArgs& a) { return compare(v, oneArg(a, "lt"), "<") < 0; }
bool t_le(Renderer&, const Value& v, CallArgs& a) { return compare(v, oneArg(a, "le"), "<=") <= 0; }
bool t_gt(Renderer&, const Value& v, CallArgs& a) { return compare(v, oneArg(a, "gt"), ">") > 0; }
bool t_ge(Renderer&, const Value& v, CallArgs& a) { return compare(v, oneArg(a, "ge"), ">=") >= 0; }
bool t_in(Renderer&, const Value& v, CallArgs& a) { return contains(oneArg(a, "in"), v); }
bool t_sameas(Renderer&, const Value& v, CallArgs& a) { return v.sameObject(oneArg(a, "sameas")); }

const std::unordered_map<std::string_view, TestFn>& testTable() {
  static const std::unordered_map<std::string_view, TestFn> table = {
      {"defined", t_defined},   {"undefined", t_undefined}, {"none", t_none},
      {"boolean", t_boolean},   {"true", t_true},           {"false", t_false},
      {"integer", t_integer},   {"float", t_float},         {"number", t_number},
      {"string", t_string},     {"mapping", t_mapping},     {"callable", t_callable},
      {"iterable", t_iterable}, {"sequence", t_sequence},   {"lower", t_lower},
      {"upper", t_upper},       {"escaped", t_escaped},     {"odd", t_odd},
      {"even", t_even},         {"divisibleby", t_divisibleby}, {"eq", t_eq},
      {"equalto", t_eq},        {"==", t_eq},               {"ne", t_ne},
      {"!=", t_ne},             {"lt", t_lt},               {"lessthan", t_lt},
      {"<", t_lt},              {"le", t_le},               {"<=", t_le},
      {"gt", t_gt},             {"greaterthan", t_gt},      {">", t_gt},
      {"ge", t_ge},             {">=", t_ge},               {"in", t_in},
      {"sameas", t_sameas},
  };
  return table;
}

}  // namespace

FilterFn findFilter(std::string_view name) {
  auto it = filterTable().find(name);
  return it == filterTable().end() ? nullptr : it->second;
}

TestFn findTest(std::string_view name) {
  auto it = testTable().find(name);
  return it == testTable().end() ? nullptr : it->second;
}

// ---------------------------------------------------------------------------------------------------------
// Globals

void installGlobals(Scope& scope) {
  scope.set("range", Value::callable("range", [](Renderer&, CallArgs& a) {
              if (!a.kw.empty()) renderFail("range() takes no keyword arguments");
              if (a.pos.empty() || a.pos.size() > 3) renderFail("range() takes 1 to 3 arguments");
              for (const auto& v : a.pos)
                if (!v.isIntegral()) renderFail("range(): '" + typeName(v) + "' object cannot be interpreted as an integer");
              int64_t start = 0, stop, step = 1;
              if (a.pos.size() == 1) {
                stop = a.pos[0].intValue();
              } else {
                start = a.pos[0].intValue();
                stop = a.pos[1].intValue();
                if (a.pos.size() == 3) step = a.pos[2].intValue();
              }
              if (step == 0) renderFail("range() arg 3 must not be zero");
              std::vector<Value> out;
              for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
                if (out.size() >= 100000) renderFail("range() is too big (more than 100000 items)");
                out.push_back(Value::integer(i));
                if ((step > 0 && i > INT64_MAX - step) || (step < 0 && i < INT64_MIN - step)) break;
              }
              return Value::list(std::move(out));
            }));
  auto makeDict = [](CallArgs& a, bool ns) {
    Value d = Value::dict();
    d.dictData().ns = ns;
    if (a.pos.size() > 1) renderFail("expected at most 1 positional argument");
    if (!a.pos.empty()) {
      const Value& init = a.pos[0];
      if (!init.isDict() || init.isNamespace()) renderFail("expected a mapping, got " + typeName(init));
      d.dictData().items = init.dictData().items;
    }
    for (auto& [k, v] : a.kw) d.dictData().set(Value::string(k), v);
    return d;
  };
  scope.set("namespace", Value::callable("namespace", [makeDict](Renderer&, CallArgs& a) { return makeDict(a, true); }));
  scope.set("dict", Value::callable("dict", [makeDict](Renderer&, CallArgs& a) { return makeDict(a, false); }));
  scope.set("raise_exception", Value::callable("raise_exception", [](Renderer&, CallArgs& a) -> Value {
              Args p = bindArgs(a, {"message"}, "raise_exception");
              renderFail(p[0] ? toStr(*p[0]) : "raise_exception() called");
            }));
  scope.set("strftime_now", Value::callable("strftime_now", [](Renderer&, CallArgs& a) {
              Args p = bindArgs(a, {"format"}, "strftime_now");
              std::string f = strArg(p[0], "strftime_now");
              std::time_t now = std::time(nullptr);
              std::tm tm{};
              localtime_r(&now, &tm);
              if (f.empty()) return Value::string("");
              std::vector<char> buf(256 + f.size() * 8);
              size_t n = std::strftime(buf.data(), buf.size(), f.c_str(), &tm);
              return Value::string(std::string(buf.data(), n));
            }));
}

}  // namespace doppler::jinja
