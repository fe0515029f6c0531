// Lexer and parser of the Jinja interpreter: template text -> Program (jinja_ast.h).
//
// Follows Jinja2 3.1 as Hugging Face transformers configures it: newlines normalised to \n, one trailing
// newline dropped (keep_trailing_newline=False), trim_blocks / lstrip_blocks, `-` / `+` whitespace control
// on {{ }}, {% %} and {# #}, raw blocks, and Jinja's operator precedence (unary minus binds tighter than
// `**`, `**` is left-associative, filters and `is` tests bind to the unary operand).
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <initializer_list>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"

namespace doppler::jinja {
namespace {

constexpr int kMaxNesting = 200;
constexpr int kMaxHeight = 400;

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string value;
  int line = 0;
  int64_t ival = 0;
  double fval = 0;
};

std::string describe(const Token& t) {
  switch (t.type) {
    case Tok::Text: return "template text";
    case Tok::VarBegin: return "'{{'";
    case Tok::VarEnd: return "end of print statement";
    case Tok::BlockBegin: return "'{%'";
    case Tok::BlockEnd: return "end of statement block";
    case Tok::Name: return "'" + t.value + "'";
    case Tok::String: return "string literal";
    case Tok::Int:
    case Tok::Float: return "number " + t.value;
    case Tok::Op: return "'" + t.value + "'";
    case Tok::Eof: return "end of template";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------------------
// Lexer

class Lexer {
 public:
  Lexer(std::string_view source, const LexOptions& opt, const std::string& name) : opt_(opt), name_(name) {
    // Normalise \r\n and \r to \n, then drop one trailing newline (Jinja's keep_trailing_newline=False).
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_.push_back('\n');
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_.push_back(source[i]);
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') newlines_.push_back(i);
  }

  std::vector<Token> run() {
    const size_t n = src_.size();
    while (true) {
      size_t tag = findTag(pos_);
      size_t textEnd = tag == std::string::npos ? n : tag;
      size_t ts = pos_;
      if (after_ == After::StripAll) {
        while (ts < textEnd) {
          size_t k = spaceAt(ts);
          if (!k) break;
          ts += k;
        }
      } else if (after_ == After::TrimNewline && ts < textEnd && src_[ts] == '\n') {
        ++ts;
      }
      after_ = After::None;
      if (tag == std::string::npos) {
        emitText(ts, n);
        break;
      }
      const char kind = src_[tag + 1];
      size_t p = tag + 2;
      char mod = 0;
      if (p < n && (src_[p] == '-' || (src_[p] == '+' && kind != '{'))) mod = src_[p++];
      emitText(ts, stripBeforeTag(ts, textEnd, kind, mod));
      if (kind == '#')
        lexComment(tag, p);
      else if (kind == '%' && lexRaw(tag, p))
        continue;
      else
        lexTag(tag, p, kind);
    }
    toks_.push_back(Token{Tok::Eof, "", lineAt(n)});
    return std::move(toks_);
  }

 private:
  enum class After { None, StripAll, TrimNewline };

  [[noreturn]] void fail(size_t at, const std::string& what) const {
    throw Error(fmt::format("{}: line {}: {}", name_, lineAt(at), what));
  }

  int lineAt(size_t p) const {
    return int(std::lower_bound(newlines_.begin(), newlines_.end(), p) - newlines_.begin()) + 1;
  }

  // First "{{", "{%" or "{#" at or after `from`.
  size_t findTag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1))
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return std::string::npos;
  }

  // Byte length of the whitespace character (Python's \s, Unicode-aware) at p, or 0.
  size_t spaceAt(size_t p) const {
    unsigned char c = src_[p];
    if (c < 0x80) return pyIsSpace(c) ? 1 : 0;
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (p + len > src_.size()) return 0;
    std::u32string cp = utf8Decode(std::string_view(src_).substr(p, len));
    return cp.size() == 1 && pyIsSpace(cp[0]) ? len : 0;
  }
  // Byte length of the whitespace character ending just before `end` (not before `begin`), or 0.
  size_t spaceBefore(size_t begin, size_t end) const {
    if (end <= begin) return 0;
    if (static_cast<unsigned char>(src_[end - 1]) < 0x80) return pyIsSpace(src_[end - 1]) ? 1 : 0;
    for (size_t len = 2; len <= 4 && end - len >= begin; ++len)
      if ((static_cast<unsigned char>(src_[end - len]) & 0xC0) != 0x80) return spaceAt(end - len) == len ? len : 0;
    return 0;
  }

  // Where the text [ts, te) that precedes a tag ends once the tag's whitespace control is applied.
  size_t stripBeforeTag(size_t ts, size_t te, char kind, char mod) const {
    if (mod == '-') {
      while (size_t k = spaceBefore(ts, te)) te -= k;
      return te;
    }
    if (opt_.lstripBlocks && kind != '{' && mod != '+') return lstripLine(ts, te);
    return te;
  }

  // lstrip_blocks: drop the spaces between the start of the tag's line and the tag.
  size_t lstripLine(size_t ts, size_t te) const {
    size_t nl = te > ts ? src_.rfind('\n', te - 1) : std::string::npos;
    bool found = nl != std::string::npos && nl >= ts;
    size_t lineStart = found ? nl + 1 : ts;
    if (!found && !(ts == 0 || src_[ts - 1] == '\n')) return te;
    for (size_t i = lineStart; i < te;) {
      size_t k = spaceAt(i);
      if (!k) return te;
      i += k;
    }
    return lineStart;
  }

  void emitText(size_t b, size_t e) {
    if (e > b) toks_.push_back(Token{Tok::Text, src_.substr(b, e - b), lineAt(b)});
  }

  void setAfterBlock(char endMod) {
    after_ = endMod == '-' ? After::StripAll : endMod == '+' ? After::None
                                                               : (opt_.trimBlocks ? After::TrimNewline : After::None);
  }

  void lexComment(size_t tag, size_t bodyStart) {
    size_t e = src_.find("#}", bodyStart);
    if (e == std::string::npos) fail(tag, "unclosed comment: missing '#}'");
    char endMod = (e > bodyStart && (src_[e - 1] == '-' || src_[e - 1] == '+')) ? src_[e - 1] : 0;
    setAfterBlock(endMod);
    pos_ = e + 2;
  }

  size_t skipSpaces(size_t p) const {
    while (p < src_.size() && (src_[p] == ' ' || src_[p] == '\t' || src_[p] == '\n' || src_[p] == '\r' ||
                               src_[p] == '\f' || src_[p] == '\v'))
      ++p;
    return p;
  }

  static bool isIdent(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }

  // Matches `[-+]? ws* <word> ws* [-+]? %}` at p; returns the end of "%}" or npos. endMod gets the `-`/`+`.
  size_t matchSimpleTag(size_t p, std::string_view word, char& endMod) const {
    p = skipSpaces(p);
    if (src_.compare(p, word.size(), word) != 0) return std::string::npos;
    p += word.size();
    if (p < src_.size() && isIdent(src_[p])) return std::string::npos;
    p = skipSpaces(p);
    endMod = 0;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) endMod = src_[p++];
    if (src_.compare(p, 2, "%}") != 0) return std::string::npos;
    return p + 2;
  }

  // {% raw %}...{% endraw %}: the content is emitted as text. Returns false if the tag is not `raw`.
  bool lexRaw(size_t tag, size_t p) {
    char rawEndMod = 0;
    size_t cs = matchSimpleTag(p, "raw", rawEndMod);
    if (cs == std::string::npos) return false;
    for (size_t k = src_.find("{%", cs); k != std::string::npos; k = src_.find("{%", k + 2)) {
      size_t q = k + 2;
      char beginMod = 0;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) beginMod = src_[q++];
      char endMod = 0;
      size_t end = matchSimpleTag(q, "endraw", endMod);
      if (end == std::string::npos) continue;
      size_t b = cs;
      if (rawEndMod == '-')
        while (b < k) {
          size_t s = spaceAt(b);
          if (!s) break;
          b += s;
        }
      emitText(b, b < k ? stripBeforeTag(b, k, '%', beginMod) : k);
      setAfterBlock(endMod);
      pos_ = end;
      return true;
    }
    fail(tag, "unclosed raw block: missing '{% endraw %}'");
  }

  void lexTag(size_t tag, size_t p, char kind) {
    const bool block = kind == '%';
    toks_.push_back(Token{block ? Tok::BlockBegin : Tok::VarBegin, block ? "{%" : "{{", lineAt(tag)});
    std::vector<char> brackets;
    const size_t n = src_.size();
    while (true) {
      p = skipSpaces(p);
      if (p >= n) fail(tag, block ? "unclosed tag: missing '%}'" : "unclosed tag: missing '}}'");
      if (brackets.empty()) {
        const char* close = block ? "%}" : "}}";
        if ((src_[p] == '-' || (block && src_[p] == '+')) && src_.compare(p + 1, 2, close) == 0) {
          toks_.push_back(Token{block ? Tok::BlockEnd : Tok::VarEnd, close, lineAt(p)});
          if (src_[p] == '-')
            after_ = After::StripAll;
          else
            after_ = After::None;
          pos_ = p + 3;
          return;
        }
        if (src_.compare(p, 2, close) == 0) {
          toks_.push_back(Token{block ? Tok::BlockEnd : Tok::VarEnd, close, lineAt(p)});
          if (block)
            setAfterBlock(0);
          else
            after_ = After::None;
          pos_ = p + 2;
          return;
        }
      }
      p = lexToken(p, brackets);
    }
  }

  size_t lexToken(size_t p, std::vector<char>& brackets) {
    const size_t n = src_.size();
    const char c = src_[p];
    const int line = lineAt(p);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
      size_t e = p;
      while (e < n && isIdent(src_[e])) ++e;
      toks_.push_back(Token{Tok::Name, src_.substr(p, e - p), line});
      return e;
    }
    if (c >= '0' && c <= '9') return lexNumber(p);
    if (c == '\'' || c == '"') return lexString(p);
    static const char* const two[] = {"**", "//", "==", "!=", ">=", "<="};
    for (const char* op : two)
      if (src_.compare(p, 2, op) == 0) {
        toks_.push_back(Token{Tok::Op, op, line});
        return p + 2;
      }
    if (std::string_view("+-*/%~<>=()[]{}.,:|;").find(c) != std::string_view::npos) {
      if (c == '(' || c == '[' || c == '{') brackets.push_back(c);
      if (c == ')' || c == ']' || c == '}') {
        char open = c == ')' ? '(' : c == ']' ? '[' : '{';
        if (brackets.empty() || brackets.back() != open) fail(p, fmt::format("unexpected '{}'", c));
        brackets.pop_back();
      }
      toks_.push_back(Token{Tok::Op, std::string(1, c), line});
      return p + 1;
    }
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7F)
      fail(p, fmt::format("unexpected character 0x{:02x} in tag", static_cast<unsigned char>(c)));
    fail(p, fmt::format("unexpected character '{}' in tag", c));
  }

  size_t digitsAt(size_t p) const {  // \d+(_\d+)*
    size_t e = p;
    while (e < src_.size() && src_[e] >= '0' && src_[e] <= '9') {
      ++e;
      if (e + 1 < src_.size() && src_[e] == '_' && src_[e + 1] >= '0' && src_[e + 1] <= '9') ++e;
    }
    return e;
  }

  size_t lexNumber(size_t p) {
    const int line = lineAt(p);
    size_t e = digitsAt(p);
    bool isFloat = false;
    if (e + 1 < src_.size() && src_[e] == '.' && src_[e + 1] >= '0' && src_[e + 1] <= '9') {
      e = digitsAt(e + 1);
      isFloat = true;
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t q = e + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < src_.size() && src_[q] >= '0' && src_[q] <= '9') {
        e = digitsAt(q);
        isFloat = true;
      }
    }
    std::string text;
    for (size_t i = p; i < e; ++i)
      if (src_[i] != '_') text.push_back(src_[i]);
    Token t{isFloat ? Tok::Float : Tok::Int, text, line};
    if (isFloat) {
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      auto r = std::from_chars(text.data(), text.data() + text.size(), t.ival);
      if (r.ec != std::errc()) fail(p, "integer literal " + text + " is too large");
    }
    toks_.push_back(std::move(t));
    return e;
  }

  static int hexVal(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // Python's unicode-escape decoding of a string literal's body.
  size_t lexString(size_t p) {
    const char quote = src_[p];
    const int line = lineAt(p);
    size_t e = p + 1;
    while (e < src_.size() && src_[e] != quote) e += src_[e] == '\\' ? 2 : 1;
    if (e >= src_.size()) fail(p, "unterminated string literal");
    std::string out;
    for (size_t i = p + 1; i < e; ++i) {
      char c = src_[i];
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      char d = src_[++i];
      switch (d) {
        case '\n': break;
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x':
        case 'u':
        case 'U': {
          int digits = d == 'x' ? 2 : d == 'u' ? 4 : 8;
          char32_t cp = 0;
          for (int k = 0; k < digits; ++k) {
            int h = i + 1 + k < e ? hexVal(src_[i + 1 + k]) : -1;
            if (h < 0) fail(p, fmt::format("invalid \\{} escape in string literal", d));
            cp = cp * 16 + char32_t(h);
          }
          if (cp > 0x10FFFF) fail(p, "invalid \\U escape in string literal");
          utf8Append(out, cp);
          i += digits;
          break;
        }
        default:
          if (d >= '0' && d <= '7') {
            char32_t cp = d - '0';
            for (int k = 0; k < 2 && i + 1 < e && src_[i + 1] >= '0' && src_[i + 1] <= '7'; ++k)
              cp = cp * 8 + char32_t(src_[++i] - '0');
            utf8Append(out, cp);
          } else {
            out.push_back('\\');
            out.push_back(d);
          }
      }
    }
    toks_.push_back(Token{Tok::String, std::move(out), line});
    return e + 1;
  }

  std::string src_;
  LexOptions opt_;
  const std::string& name_;
  std::vector<size_t> newlines_;
  std::vector<Token> toks_;
  size_t pos_ = 0;
  After after_ = After::None;
};

// ---------------------------------------------------------------------------------------------------------
// Parser

class Parser {
 public:
  Parser(std::vector<Token> toks, const std::string& name) : t_(std::move(toks)), name_(name) {}

  std::unique_ptr<Program> run() {
    auto prog = std::make_unique<Program>();
    prog->body = parseBody({}, nullptr, 0);
    checkNames(prog->body, false);
    return prog;
  }

 private:
  struct Depth {
    Parser& p;
    Depth(Parser& parser, int line) : p(parser) {
      if (++p.depth_ > kMaxNesting) p.fail(line, "template nested too deeply");
    }
    ~Depth() { --p.depth_; }
  };

  [[noreturn]] void fail(int line, const std::string& what) const {
    throw Error(fmt::format("{}: line {}: {}", name_, line, what));
  }

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  void advance() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  bool isOp(std::string_view op) const { return cur().type == Tok::Op && cur().value == op; }
  bool isName(std::string_view n) const { return cur().type == Tok::Name && cur().value == n; }

  void expectOp(std::string_view op) {
    if (!isOp(op)) fail(cur().line, fmt::format("expected '{}', got {}", op, describe(cur())));
    advance();
  }
  std::string expectName() {
    if (cur().type != Tok::Name) fail(cur().line, "expected a name, got " + describe(cur()));
    std::string n = cur().value;
    advance();
    return n;
  }
  void expectBlockEnd() {
    if (cur().type != Tok::BlockEnd) fail(cur().line, "expected end of statement block, got " + describe(cur()));
    advance();
  }
  // At the end tag name (left by parseBody): consume it and its %}.
  void closeTag() {
    advance();
    expectBlockEnd();
  }

  static ExprPtr node(ExprKind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }
  // Records the node's height (see Expr::height) once its children are attached.
  ExprPtr seal(ExprPtr e) const {
    int h = 0;
    for (const auto& k : e->kids)
      if (k) h = std::max(h, k->height);
    for (const auto& a : e->args)
      if (a.value) h = std::max(h, a.value->height);
    e->height = h + 1;
    if (e->height > kMaxHeight) fail(e->line, "expression nested too deeply");
    return e;
  }
  static StmtPtr stmt(StmtKind k, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->line = line;
    return s;
  }

  // ---- statements ----

  // Parses statements until one of `ends` ({% name ... %}); leaves the cursor on that name token.
  Body parseBody(std::initializer_list<std::string_view> ends, const char* open, int openLine) {
    Body body;
    while (true) {
      const Token& tk = cur();
      if (tk.type == Tok::Eof) {
        if (ends.size() == 0) return body;
        std::string_view closer = *(ends.end() - 1);  // name the "end..." tag, not an optional else/elif
        for (auto e : ends)
          if (e.starts_with("end")) closer = e;
        fail(tk.line, fmt::format("unexpected end of template: '{{% {} %}}' opened on line {} is not closed with "
                                  "'{{% {} %}}'",
                                  open, openLine, closer));
      }
      if (tk.type == Tok::Text) {
        auto s = stmt(StmtKind::Text, tk.line);
        s->text = tk.value;
        body.push_back(std::move(s));
        advance();
      } else if (tk.type == Tok::VarBegin) {
        advance();
        auto s = stmt(StmtKind::Output, tk.line);
        s->expr = parseTuple(true, {}, false);
        if (cur().type != Tok::VarEnd) fail(cur().line, "expected end of print statement, got " + describe(cur()));
        advance();
        body.push_back(std::move(s));
      } else if (tk.type == Tok::BlockBegin) {
        advance();
        if (cur().type != Tok::Name) fail(cur().line, "expected a tag name after '{%', got " + describe(cur()));
        for (std::string_view e : ends)
          if (cur().value == e) return body;
        body.push_back(parseStatement(open));
      } else {
        fail(tk.line, "unexpected " + describe(tk));
      }
    }
  }

  StmtPtr parseStatement(const char* open) {
    const Token& tk = cur();
    Depth guard(*this, tk.line);
    const std::string& n = tk.value;
    if (n == "if") return parseIf();
    if (n == "for") return parseFor();
    if (n == "set") return parseSet();
    if (n == "macro") return parseMacro();
    if (n == "call") return parseCallBlock();
    if (n == "filter") return parseFilterBlock();
    if (n == "generation") {
      auto s = stmt(StmtKind::Block, tk.line);
      advance();
      expectBlockEnd();
      s->body = parseBody({"endgeneration"}, "generation", s->line);
      closeTag();
      return s;
    }
    if (n == "break" || n == "continue") {
      if (loopDepth_ == 0) fail(tk.line, fmt::format("'{{% {} %}}' outside of a for loop", n));
      auto s = stmt(n == "break" ? StmtKind::Break : StmtKind::Continue, tk.line);
      advance();
      expectBlockEnd();
      return s;
    }
    static const std::string_view enders[] = {"elif",    "else",      "endif",      "endfor",      "endset",
                                              "endmacro", "endcall",  "endfilter", "endgeneration", "endraw"};
    for (std::string_view e : enders)
      if (n == e) {
        if (open) fail(tk.line, fmt::format("unexpected '{{% {} %}}' inside '{{% {} %}}'", n, open));
        fail(tk.line, fmt::format("unexpected '{{% {} %}}' with no open block", n));
      }
    fail(tk.line, fmt::format("unknown tag '{}'", n));
  }

  StmtPtr parseIf() {
    auto s = stmt(StmtKind::If, cur().line);
    advance();
    ExprPtr cond = parseTuple(false, {}, false);
    expectBlockEnd();
    while (true) {
      Body b = parseBody({"elif", "else", "endif"}, "if", s->line);
      s->branches.emplace_back(std::move(cond), std::move(b));
      std::string tag = cur().value;
      advance();
      if (tag == "elif") {
        cond = parseTuple(false, {}, false);
        expectBlockEnd();
        continue;
      }
      expectBlockEnd();
      if (tag == "else") {
        s->elseBody = parseBody({"endif"}, "if", s->line);
        closeTag();
      }
      return s;
    }
  }

  // Assignment targets: `a`, `a, b`, `(a, b)`, and with allowAttr `ns.attr`.
  void parseTargets(Stmt& s, bool allowAttr) {
    bool paren = isOp("(");
    if (paren) advance();
    bool trailingComma = false;
    while (true) {
      int line = cur().line;
      std::string n = expectName();
      if (n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None")
        fail(line, fmt::format("cannot assign to '{}'", n));
      if (allowAttr && !paren && s.targets.empty() && isOp(".")) {
        advance();
        s.attr = expectName();
        s.targets.push_back(n);
        return;
      }
      s.targets.push_back(n);
      trailingComma = false;
      if (!isOp(",")) break;
      advance();
      trailingComma = true;
      if (cur().type != Tok::Name) break;
    }
    if (paren) expectOp(")");
    s.targetTuple = s.targets.size() > 1 || trailingComma;
  }

  StmtPtr parseFor() {
    auto s = stmt(StmtKind::For, cur().line);
    advance();
    parseTargets(*s, false);
    if (!isName("in")) fail(cur().line, "expected 'in' in for loop, got " + describe(cur()));
    advance();
    s->expr = parseTuple(false, {"recursive"}, false);
    if (isName("if")) {
      advance();
      s->cond = parseExpression(true);
    }
    if (isName("recursive")) fail(cur().line, "recursive for loops are not supported");
    expectBlockEnd();
    ++loopDepth_;
    s->body = parseBody({"else", "endfor"}, "for", s->line);
    --loopDepth_;
    s->usesLoop = mentions(s->body, "loop");
    if (cur().value == "else") {
      advance();
      expectBlockEnd();
      s->elseBody = parseBody({"endfor"}, "for", s->line);
    }
    closeTag();
    return s;
  }

  StmtPtr parseSet() {
    auto s = stmt(StmtKind::Set, cur().line);
    advance();
    parseTargets(*s, true);
    if (isOp("=")) {
      advance();
      s->expr = parseTuple(true, {}, false);
      expectBlockEnd();
      return s;
    }
    if (s->targetTuple || !s->attr.empty())
      fail(cur().line, "expected '=' after the assignment target, got " + describe(cur()));
    s->kind = StmtKind::SetBlock;
    while (isOp("|")) {
      advance();
      s->filters.push_back(parseFilter(nullptr));
    }
    expectBlockEnd();
    s->body = parseBody({"endset"}, "set", s->line);
    closeTag();
    return s;
  }

  void parseParams(std::vector<Param>& params) {
    expectOp("(");
    bool hadDefault = false;
    while (!isOp(")")) {
      if (!params.empty()) {
        expectOp(",");
        if (isOp(")")) break;
      }
      int line = cur().line;
      Param p;
      p.name = expectName();
      if (isOp("=")) {
        advance();
        p.defaultValue = parseExpression(true);
        hadDefault = true;
      } else if (hadDefault) {
        fail(line, "non-default argument follows default argument");
      }
      params.push_back(std::move(p));
    }
    advance();
  }

  StmtPtr parseMacro() {
    auto s = stmt(StmtKind::Macro, cur().line);
    advance();
    s->name = expectName();
    parseParams(s->params);
    expectBlockEnd();
    int savedLoop = loopDepth_;
    loopDepth_ = 0;
    s->body = parseBody({"endmacro"}, "macro", s->line);
    loopDepth_ = savedLoop;
    closeTag();
    return s;
  }

  StmtPtr parseCallBlock() {
    auto s = stmt(StmtKind::CallBlock, cur().line);
    advance();
    if (isOp("(")) parseParams(s->params);
    s->expr = parseExpression(true);
    if (s->expr->kind != ExprKind::Call) fail(s->line, "'{% call %}' needs a macro call, like {% call m(x) %}");
    expectBlockEnd();
    int savedLoop = loopDepth_;
    loopDepth_ = 0;
    s->body = parseBody({"endcall"}, "call", s->line);
    loopDepth_ = savedLoop;
    closeTag();
    return s;
  }

  StmtPtr parseFilterBlock() {
    auto s = stmt(StmtKind::FilterBlock, cur().line);
    advance();
    s->filters.push_back(parseFilter(nullptr));
    while (isOp("|")) {
      advance();
      s->filters.push_back(parseFilter(nullptr));
    }
    expectBlockEnd();
    s->body = parseBody({"endfilter"}, "filter", s->line);
    closeTag();
    return s;
  }

  // Unknown filters and tests are errors when the template is parsed, except where Jinja defers them to
  // run time: directly inside {% if %} / {% elif %} / {% else %} bodies and conditions, and in inline
  // `a if b else c` expressions ("soft" code that may never run).
  void checkNames(const Body& body, bool soft) const {
    for (const auto& s : body) {
      switch (s->kind) {
        case StmtKind::If:
          for (const auto& [cond, b] : s->branches) {
            checkNames(*cond, true);
            checkNames(b, true);
          }
          checkNames(s->elseBody, true);
          break;
        case StmtKind::For:
          checkNames(*s->expr, soft);
          if (s->cond) checkNames(*s->cond, false);
          checkNames(s->body, false);
          checkNames(s->elseBody, false);
          break;
        case StmtKind::Macro:
        case StmtKind::CallBlock:
          for (const auto& p : s->params)
            if (p.defaultValue) checkNames(*p.defaultValue, false);
          if (s->expr) checkNames(*s->expr, soft);
          checkNames(s->body, false);
          break;
        case StmtKind::SetBlock:
        case StmtKind::FilterBlock:
        case StmtKind::Block:
          for (const auto& f : s->filters) checkNames(*f, false);
          checkNames(s->body, false);
          break;
        default:
          if (s->expr) checkNames(*s->expr, soft);
      }
    }
  }

  void checkNames(const Expr& e, bool soft) const {
    if (e.kind == ExprKind::Cond) soft = true;
    if (!soft && e.kind == ExprKind::Filter && !e.filter) fail(e.line, fmt::format("unknown filter '{}'", e.name));
    if (!soft && e.kind == ExprKind::Test && !e.test) fail(e.line, fmt::format("unknown test '{}'", e.name));
    for (const auto& k : e.kids)
      if (k) checkNames(*k, soft);
    for (const auto& a : e.args) checkNames(*a.value, soft);
  }

  static bool mentions(const Expr& e, std::string_view name) {
    if (e.kind == ExprKind::Name && e.name == name) return true;
    for (const auto& k : e.kids)
      if (k && mentions(*k, name)) return true;
    for (const auto& a : e.args)
      if (mentions(*a.value, name)) return true;
    return false;
  }

  static bool mentions(const Body& body, std::string_view name) {
    for (const auto& s : body) {
      for (const ExprPtr* e : {&s->expr, &s->cond})
        if (*e && mentions(**e, name)) return true;
      for (const auto& [cond, b] : s->branches)
        if (mentions(*cond, name) || mentions(b, name)) return true;
      for (const auto& f : s->filters)
        if (mentions(*f, name)) return true;
      for (const auto& p : s->params)
        if (p.defaultValue && mentions(*p.defaultValue, name)) return true;
      if (mentions(s->body, name) || mentions(s->elseBody, name)) return true;
    }
    return false;
  }

  // ---- expressions ----

  bool isTupleEnd(std::initializer_list<std::string_view> extraEnds) const {
    if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || isOp(")")) return true;
    for (std::string_view e : extraEnds)
      if (isName(e)) return true;
    return false;
  }

  ExprPtr parseTuple(bool withCond, std::initializer_list<std::string_view> extraEnds, bool explicitParens) {
    int line = cur().line;
    std::vector<ExprPtr> items;
    bool isTuple = false;
    while (true) {
      if (!items.empty()) expectOp(",");
      if (isTupleEnd(extraEnds)) break;
      items.push_back(parseExpression(withCond));
      if (isOp(","))
        isTuple = true;
      else
        break;
    }
    if (!isTuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicitParens) fail(cur().line, "expected an expression, got " + describe(cur()));
    }
    auto e = node(ExprKind::Tuple, line);
    e->kids = std::move(items);
    return seal(std::move(e));
  }

  ExprPtr parseExpression(bool withCond) {
    Depth guard(*this, cur().line);
    if (!withCond) return parseOr();
    ExprPtr e = parseOr();
    while (isName("if")) {
      int line = cur().line;
      advance();
      ExprPtr cond = parseOr();
      ExprPtr other;
      if (isName("else")) {
        advance();
        other = parseExpression(true);
      }
      auto c = node(ExprKind::Cond, line);
      c->kids.push_back(std::move(e));
      c->kids.push_back(std::move(cond));
      c->kids.push_back(std::move(other));
      e = seal(std::move(c));
    }
    return e;
  }

  ExprPtr binary(ExprKind k, ExprPtr a, ExprPtr b, int line) {
    auto e = node(k, line);
    e->kids.push_back(std::move(a));
    e->kids.push_back(std::move(b));
    return seal(std::move(e));
  }

  ExprPtr parseOr() {
    ExprPtr e = parseAnd();
    while (isName("or")) {
      int line = cur().line;
      advance();
      e = binary(ExprKind::Or, std::move(e), parseAnd(), line);
    }
    return e;
  }

  ExprPtr parseAnd() {
    ExprPtr e = parseNot();
    while (isName("and")) {
      int line = cur().line;
      advance();
      e = binary(ExprKind::And, std::move(e), parseNot(), line);
    }
    return e;
  }

  ExprPtr parseNot() {
    if (isName("not")) {
      Depth guard(*this, cur().line);
      auto e = node(ExprKind::Not, cur().line);
      advance();
      e->kids.push_back(parseNot());
      return seal(std::move(e));
    }
    return parseCompare();
  }

  ExprPtr parseCompare() {
    int line = cur().line;
    ExprPtr first = parseMath1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      CmpOp op;
      if (isOp("=="))
        op = CmpOp::Eq;
      else if (isOp("!="))
        op = CmpOp::Ne;
      else if (isOp("<"))
        op = CmpOp::Lt;
      else if (isOp("<="))
        op = CmpOp::Le;
      else if (isOp(">"))
        op = CmpOp::Gt;
      else if (isOp(">="))
        op = CmpOp::Ge;
      else if (isName("in"))
        op = CmpOp::In;
      else if (isName("not") && peek().type == Tok::Name && peek().value == "in") {
        advance();
        op = CmpOp::NotIn;
      } else {
        break;
      }
      advance();
      if (!cmp) {
        cmp = node(ExprKind::Compare, line);
        cmp->kids.push_back(std::move(first));
      }
      cmp->cmps.push_back(op);
      cmp->kids.push_back(parseMath1());
    }
    return cmp ? seal(std::move(cmp)) : std::move(first);
  }

  ExprPtr parseMath1() {
    ExprPtr e = parseConcat();
    while (isOp("+") || isOp("-")) {
      int line = cur().line;
      BinOp op = isOp("+") ? BinOp::Add : BinOp::Sub;
      advance();
      e = binary(ExprKind::Binary, std::move(e), parseConcat(), line);
      e->op = op;
    }
    return e;
  }

  ExprPtr parseConcat() {
    ExprPtr e = parseMath2();
    if (!isOp("~")) return e;
    auto c = node(ExprKind::Concat, cur().line);
    c->kids.push_back(std::move(e));
    while (isOp("~")) {
      advance();
      c->kids.push_back(parseMath2());
    }
    return seal(std::move(c));
  }

  ExprPtr parseMath2() {
    ExprPtr e = parsePow();
    while (isOp("*") || isOp("/") || isOp("//") || isOp("%")) {
      int line = cur().line;
      BinOp op = isOp("*") ? BinOp::Mul : isOp("/") ? BinOp::Div : isOp("//") ? BinOp::FloorDiv : BinOp::Mod;
      advance();
      e = binary(ExprKind::Binary, std::move(e), parsePow(), line);
      e->op = op;
    }
    return e;
  }

  ExprPtr parsePow() {
    ExprPtr e = parseUnary(true);
    while (isOp("**")) {
      int line = cur().line;
      advance();
      e = binary(ExprKind::Binary, std::move(e), parseUnary(true), line);
      e->op = BinOp::Pow;
    }
    return e;
  }

  ExprPtr parseUnary(bool withFilter) {
    ExprPtr e;
    if (isOp("-") || isOp("+")) {
      Depth guard(*this, cur().line);
      e = node(isOp("-") ? ExprKind::Neg : ExprKind::Pos, cur().line);
      advance();
      e->kids.push_back(parseUnary(false));
      e = seal(std::move(e));
    } else {
      e = parsePrimary();
    }
    e = parsePostfix(std::move(e));
    if (withFilter) e = parseFilterExpr(std::move(e));
    return e;
  }

  ExprPtr parsePrimary() {
    const Token& tk = cur();
    int line = tk.line;
    switch (tk.type) {
      case Tok::Name: {
        auto e = node(ExprKind::Literal, line);
        const std::string& n = tk.value;
        if (n == "true" || n == "True")
          e->literal = Value::boolean(true);
        else if (n == "false" || n == "False")
          e->literal = Value::boolean(false);
        else if (n == "none" || n == "None")
          e->literal = Value::none();
        else {
          e->kind = ExprKind::Name;
          e->name = n;
        }
        advance();
        return e;
      }
      case Tok::String: {
        std::string s;
        while (cur().type == Tok::String) {
          s += cur().value;
          advance();
        }
        auto e = node(ExprKind::Literal, line);
        e->literal = Value::string(std::move(s));
        return e;
      }
      case Tok::Int:
      case Tok::Float: {
        auto e = node(ExprKind::Literal, line);
        e->literal = tk.type == Tok::Int ? Value::integer(tk.ival) : Value::number(tk.fval);
        advance();
        return e;
      }
      case Tok::Op:
        if (tk.value == "(") {
          Depth guard(*this, line);
          advance();
          ExprPtr e = parseTuple(true, {}, true);
          expectOp(")");
          return e;
        }
        if (tk.value == "[") {
          advance();
          auto e = node(ExprKind::List, line);
          while (!isOp("]")) {
            if (!e->kids.empty()) {
              expectOp(",");
              if (isOp("]")) break;
            }
            e->kids.push_back(parseExpression(true));
          }
          advance();
          return seal(std::move(e));
        }
        if (tk.value == "{") {
          advance();
          auto e = node(ExprKind::Dict, line);
          while (!isOp("}")) {
            if (!e->kids.empty()) {
              expectOp(",");
              if (isOp("}")) break;
            }
            e->kids.push_back(parseExpression(true));
            expectOp(":");
            e->kids.push_back(parseExpression(true));
          }
          advance();
          return seal(std::move(e));
        }
        break;
      default: break;
    }
    fail(line, "expected an expression, got " + describe(tk));
  }

  ExprPtr parsePostfix(ExprPtr e) {
    while (true) {
      int line = cur().line;
      if (isOp(".")) {
        advance();
        if (cur().type == Tok::Name) {
          auto a = node(ExprKind::Attr, line);
          a->name = cur().value;
          a->kids.push_back(std::move(e));
          e = seal(std::move(a));
          advance();
        } else if (cur().type == Tok::Int) {
          auto idx = node(ExprKind::Literal, line);
          idx->literal = Value::integer(cur().ival);
          e = binary(ExprKind::Item, std::move(e), std::move(idx), line);
          advance();
        } else {
          fail(line, "expected an attribute name after '.', got " + describe(cur()));
        }
      } else if (isOp("[")) {
        advance();
        ExprPtr a, b, c;
        bool slice = false;
        if (!isOp(":")) a = parseExpression(true);
        if (isOp(":")) {
          slice = true;
          advance();
          if (!isOp("]") && !isOp(":")) b = parseExpression(true);
          if (isOp(":")) {
            advance();
            if (!isOp("]")) c = parseExpression(true);
          }
        }
        expectOp("]");
        if (slice) {
          auto s = node(ExprKind::Slice, line);
          s->kids.push_back(std::move(e));
          s->kids.push_back(std::move(a));
          s->kids.push_back(std::move(b));
          s->kids.push_back(std::move(c));
          e = seal(std::move(s));
        } else {
          e = binary(ExprKind::Item, std::move(e), std::move(a), line);
        }
      } else if (isOp("(")) {
        auto c = node(ExprKind::Call, line);
        c->kids.push_back(std::move(e));
        parseCallArgs(c->args);
        e = seal(std::move(c));
      } else {
        return e;
      }
    }
  }

  ExprPtr parseFilterExpr(ExprPtr e) {
    while (true) {
      if (isOp("|")) {
        advance();
        e = parseFilter(std::move(e));
      } else if (isName("is")) {
        advance();
        e = parseTest(std::move(e));
      } else if (isOp("(")) {
        auto c = node(ExprKind::Call, cur().line);
        c->kids.push_back(std::move(e));
        parseCallArgs(c->args);
        e = seal(std::move(c));
      } else {
        return e;
      }
    }
  }

  std::string dottedName() {
    std::string n = expectName();
    while (isOp(".") && peek().type == Tok::Name) {
      advance();
      n += '.';
      n += expectName();
    }
    return n;
  }

  // `name(args)` after '|'. An unknown filter is an error when it runs, as in Jinja 3.
  ExprPtr parseFilter(ExprPtr input) {
    auto f = node(ExprKind::Filter, cur().line);
    f->name = dottedName();
    f->filter = findFilter(f->name);
    f->kids.push_back(std::move(input));
    if (isOp("(")) parseCallArgs(f->args);
    return seal(std::move(f));
  }

  ExprPtr parseTest(ExprPtr input) {
    auto t = node(ExprKind::Test, cur().line);
    if (isName("not")) {
      t->negated = true;
      advance();
    }
    t->name = dottedName();
    t->test = findTest(t->name);
    t->kids.push_back(std::move(input));
    if (isOp("(")) {
      parseCallArgs(t->args);
    } else {
      const Token& tk = cur();
      bool argStart = tk.type == Tok::Name || tk.type == Tok::String || tk.type == Tok::Int ||
                      tk.type == Tok::Float || isOp("[") || isOp("{");
      if (argStart && !isName("else") && !isName("or") && !isName("and")) {
        Arg a;
        a.value = parsePostfix(parsePrimary());
        t->args.push_back(std::move(a));
      }
    }
    return seal(std::move(t));
  }

  void parseCallArgs(std::vector<Arg>& args) {
    expectOp("(");
    bool sawKeyword = false;
    while (!isOp(")")) {
      if (!args.empty()) {
        expectOp(",");
        if (isOp(")")) break;
      }
      if (isOp("*") || isOp("**")) fail(cur().line, "*args and **kwargs in calls are not supported");
      Arg a;
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().value == "=") {
        a.name = cur().value;
        advance();
        advance();
        sawKeyword = true;
      } else if (sawKeyword) {
        fail(cur().line, "positional argument follows keyword argument");
      }
      a.value = parseExpression(true);
      args.push_back(std::move(a));
    }
    advance();
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  const std::string& name_;
  int depth_ = 0;
  int loopDepth_ = 0;
};

}  // namespace

std::unique_ptr<Program> parseTemplate(std::string_view source, const LexOptions& opt, const std::string& name) {
  Lexer lexer(source, opt, name);
  Parser parser(lexer.run(), name);
  return parser.run();
}

}  // namespace doppler::jinja
