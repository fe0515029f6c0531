// Evaluator of the Jinja interpreter: walks the Program built by jinja_parser.cpp.
#include "tokenizer/jinja.h"

#include <fmt/format.h>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_runtime.h"

namespace doppler::jinja {

namespace {
constexpr size_t kMaxSteps = 2'000'000;  // loop iterations + calls per render
constexpr int kMaxDepth = 600;           // nested evaluations (expressions, statements, macro calls)
}  // namespace

const Value* Scope::find(std::string_view name) const {
  for (const Scope* s = this; s; s = s->parent.get())
    for (const auto& [k, v] : s->vars)
      if (k == name) return &v;
  return nullptr;
}

void Scope::set(const std::string& name, Value v) {
  for (auto& [k, old] : vars)
    if (k == name) {
      old = std::move(v);
      return;
    }
  vars.emplace_back(name, std::move(v));
}

struct Renderer::DepthGuard {
  Renderer& r;
  explicit DepthGuard(Renderer& renderer) : r(renderer) {
    if (++r.depth_ > kMaxDepth) renderFail("recursion too deep (a macro calling itself without end?)");
  }
  ~DepthGuard() { --r.depth_; }
};

Renderer::~Renderer() {
  // A macro's closure holds the scope that holds the macro: clear those scopes so that both are freed.
  for (const auto& s : closures_) s->vars.clear();
}

void Renderer::step() {
  if (++steps_ > kMaxSteps)
    renderFail(fmt::format("template does more than {} loop iterations and calls", kMaxSteps));
}

std::string Renderer::run(const ScopePtr& root) {
  std::string out;
  exec(program_.body, root, out);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Statements

Renderer::Flow Renderer::exec(const Body& body, const ScopePtr& scope, std::string& out) {
  for (const auto& s : body) {
    Flow f = execStmt(*s, scope, out);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

static Value applyFilterNode(Renderer& r, const Expr& f, const Value& input, CallArgs& args) {
  if (!f.filter) renderFail("unknown filter '" + f.name + "'");
  return f.filter(r, input, args);
}

Renderer::Flow Renderer::execStmt(const Stmt& s, const ScopePtr& scope, std::string& out) {
  DepthGuard guard(*this);
  line = s.line;
  switch (s.kind) {
    case StmtKind::Text:
      out += s.text;
      checkSize(out.size());
      return Flow::Normal;
    case StmtKind::Output: {
      Value v = eval(*s.expr, scope);
      if (v.isString())
        out += v.stringValue();
      else
        out += toStr(v);
      checkSize(out.size());
      return Flow::Normal;
    }
    case StmtKind::If:
      for (const auto& [cond, body] : s.branches) {
        line = cond->line;
        if (truthy(eval(*cond, scope))) return exec(body, scope, out);
      }
      return exec(s.elseBody, scope, out);
    case StmtKind::For: execFor(s, scope, out); return Flow::Normal;
    case StmtKind::Set: assign(s, scope, eval(*s.expr, scope)); return Flow::Normal;
    case StmtKind::SetBlock:
    case StmtKind::FilterBlock: {
      std::string captured;
      auto inner = std::make_shared<Scope>(scope);
      Flow f = exec(s.body, inner, captured);
      Value v = Value::string(std::move(captured));
      for (const auto& fe : s.filters) {
        line = fe->line;
        CallArgs args;
        evalArgs(fe->args, scope, args);
        v = applyFilterNode(*this, *fe, v, args);
      }
      if (s.kind == StmtKind::SetBlock) {
        scope->set(s.targets[0], std::move(v));
      } else {
        out += toStr(v);
        checkSize(out.size());
      }
      return f;
    }
    case StmtKind::Macro: scope->set(s.name, makeMacro(s.name, s.params, s.body, scope)); return Flow::Normal;
    case StmtKind::CallBlock: {
      const Expr& call = *s.expr;
      Value callee = eval(*call.kids[0], scope);
      CallArgs args;
      evalArgs(call.args, scope, args);
      args.kw.emplace_back("caller", makeMacro("caller", s.params, s.body, scope));
      line = s.line;
      Value v = this->call(callee, args);
      out += toStr(v);
      checkSize(out.size());
      return Flow::Normal;
    }
    case StmtKind::Break: return Flow::Break;
    case StmtKind::Continue: return Flow::Continue;
    case StmtKind::Block: {
      auto inner = std::make_shared<Scope>(scope);
      return exec(s.body, inner, out);
    }
  }
  return Flow::Normal;
}

// Binds `for` / `set` targets: one name, or a tuple of names unpacked from the value.
static void bindTargets(const Stmt& s, Scope& scope, const Value& v) {
  if (!s.targetTuple) {
    scope.set(s.targets[0], v);
    return;
  }
  if (!v.isList() && !v.isString() && !(v.isDict() && !v.isNamespace()))
    renderFail("cannot unpack non-iterable " + typeName(v) + " object");
  std::vector<Value> items = iterate(v);
  if (items.size() != s.targets.size())
    renderFail(fmt::format("{} values to unpack (expected {}, got {})",
                           items.size() > s.targets.size() ? "too many" : "not enough", s.targets.size(),
                           items.size()));
  for (size_t i = 0; i < items.size(); ++i) scope.set(s.targets[i], std::move(items[i]));
}

void Renderer::assign(const Stmt& s, const ScopePtr& scope, Value v) {
  if (!s.attr.empty()) {
    const Value* ns = scope->find(s.targets[0]);
    if (!ns || !ns->isNamespace())
      renderFail(fmt::format("cannot assign attribute '{}' on '{}': it is not a namespace()", s.attr, s.targets[0]));
    ns->dictData().set(Value::string(s.attr), std::move(v));
    return;
  }
  bindTargets(s, *scope, v);
}

void Renderer::execFor(const Stmt& s, const ScopePtr& scope, std::string& out) {
  Value seq = eval(*s.expr, scope);
  std::vector<Value> items = iterate(seq);
  if (s.cond) {
    std::vector<Value> kept;
    for (auto& item : items) {
      step();
      auto probe = std::make_shared<Scope>(scope);
      bindTargets(s, *probe, item);
      if (truthy(eval(*s.cond, probe))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    exec(s.elseBody, scope, out);
    return;
  }
  const int64_t n = int64_t(items.size());
  for (int64_t i = 0; i < n; ++i) {
    step();
    line = s.line;
    auto iter = std::make_shared<Scope>(scope);
    bindTargets(s, *iter, items[size_t(i)]);
    if (!s.usesLoop) {
      if (exec(s.body, iter, out) == Flow::Break) break;
      continue;
    }
    Value loop = Value::dict();
    DictData& d = loop.dictData();
    auto put = [&](const char* k, Value v) { d.items.emplace_back(Value::string(k), std::move(v)); };
    put("index", Value::integer(i + 1));
    put("index0", Value::integer(i));
    put("revindex", Value::integer(n - i));
    put("revindex0", Value::integer(n - i - 1));
    put("first", Value::boolean(i == 0));
    put("last", Value::boolean(i == n - 1));
    put("length", Value::integer(n));
    put("depth", Value::integer(1));
    put("depth0", Value::integer(0));
    if (i > 0) put("previtem", items[size_t(i - 1)]);
    if (i + 1 < n) put("nextitem", items[size_t(i + 1)]);
    put("cycle", Value::callable("loop.cycle", [i](Renderer&, CallArgs& a) {
          if (a.pos.empty()) renderFail("loop.cycle() needs at least one argument");
          return a.pos[size_t(i) % a.pos.size()];
        }));
    iter->set("loop", std::move(loop));
    Flow f = exec(s.body, iter, out);
    if (f == Flow::Break) break;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Macros

Value Renderer::makeMacro(const std::string& name, const std::vector<Param>& params, const Body& body,
                          ScopePtr closure) {
  const std::vector<Param>* p = &params;
  const Body* b = &body;
  closures_.push_back(closure);
  return Value::callable(name, [name, p, b, closure](Renderer& r, CallArgs& args) {
    return r.callMacro(name, *p, *b, closure, args);
  });
}

Value Renderer::callMacro(const std::string& name, const std::vector<Param>& params, const Body& body,
                          const ScopePtr& closure, CallArgs& args) {
  step();
  DepthGuard guard(*this);
  const int callLine = line;
  auto scope = std::make_shared<Scope>(closure);
  std::vector<bool> bound(params.size(), false);
  std::vector<Value> varargs;
  for (size_t i = 0; i < args.pos.size(); ++i) {
    if (i < params.size()) {
      scope->set(params[i].name, args.pos[i]);
      bound[i] = true;
    } else {
      varargs.push_back(args.pos[i]);
    }
  }
  Value kwargs = Value::dict();
  for (auto& [k, v] : args.kw) {
    size_t idx = params.size();
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].name == k) idx = i;
    if (idx == params.size()) {
      if (k == "caller")
        scope->set("caller", v);
      else
        kwargs.dictData().set(Value::string(k), v);
      continue;
    }
    if (bound[idx]) renderFail(fmt::format("macro '{}' got multiple values for argument '{}'", name, k));
    scope->set(k, v);
    bound[idx] = true;
  }
  for (size_t i = 0; i < params.size(); ++i) {
    if (bound[i]) continue;
    if (params[i].defaultValue)
      scope->set(params[i].name, eval(*params[i].defaultValue, scope));
    else
      scope->set(params[i].name, Value::undefined("'" + params[i].name + "' is undefined"));
  }
  scope->set("varargs", Value::list(std::move(varargs), true));
  scope->set("kwargs", std::move(kwargs));
  std::string out;
  exec(body, scope, out);
  line = callLine;
  return Value::string(std::move(out));
}

// ---------------------------------------------------------------------------------------------------------
// Expressions

void Renderer::evalArgs(const std::vector<Arg>& args, const ScopePtr& scope, CallArgs& out) {
  for (const auto& a : args) {
    if (a.name.empty())
      out.pos.push_back(eval(*a.value, scope));
    else
      out.kw.emplace_back(a.name, eval(*a.value, scope));
  }
}

Value Renderer::getAttr(const Value& obj, const std::string& name) {
  failIfUndefined(obj);
  if (obj.isNamespace()) {
    if (const Value* v = obj.dictData().find(std::string_view(name))) return *v;
    return Value::undefined("'Namespace' object has no attribute '" + name + "'");
  }
  if (auto m = methodOf(obj, name)) return *m;
  if (obj.isDict())
    if (const Value* v = obj.dictData().find(std::string_view(name))) return *v;
  return Value::undefined(fmt::format("'{} object' has no attribute '{}'", typeName(obj), name));
}

Value Renderer::getItem(const Value& obj, const Value& key) {
  failIfUndefined(obj);
  if (obj.isDict()) {
    if (const Value* v = obj.dictData().find(key)) return *v;
  } else if ((obj.isList() || obj.isString()) && key.isIntegral()) {
    int64_t i = key.intValue();
    if (obj.isList()) {
      const auto& items = obj.listData().items;
      int64_t n = int64_t(items.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return items[size_t(i)];
    } else {
      const std::string& s = obj.stringValue();
      if (isAscii(s)) {
        int64_t n = int64_t(s.size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return Value::string(std::string(1, s[size_t(i)]));
      } else {
        std::u32string cps = utf8Decode(s);
        int64_t n = int64_t(cps.size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return Value::string(utf8Encode(cps.substr(size_t(i), 1)));
      }
    }
    return Value::undefined(fmt::format("'{} object' has no element {}", typeName(obj), key.intValue()));
  }
  if (key.isString()) {
    if (obj.isNamespace())
      return Value::undefined(fmt::format("'Namespace' object has no attribute '{}'", key.stringValue()));
    if (auto m = methodOf(obj, key.stringValue())) return *m;
    return Value::undefined(fmt::format("'{} object' has no attribute '{}'", typeName(obj), key.stringValue()));
  }
  return Value::undefined(fmt::format("'{} object' has no element {}", typeName(obj), repr(key)));
}

Value Renderer::call(const Value& callee, CallArgs& args) {
  failIfUndefined(callee);
  if (!callee.isCallable()) renderFail("'" + typeName(callee) + "' object is not callable");
  // Copy the function object: calling may replace the variable that held the callee.
  NativeFn fn = callee.callableData().fn;
  return fn(*this, args);
}

Value Renderer::applyFilter(std::string_view name, const Value& input, CallArgs& args) {
  FilterFn f = findFilter(name);
  if (!f) renderFail("unknown filter '" + std::string(name) + "'");
  return f(*this, input, args);
}

bool Renderer::applyTest(std::string_view name, const Value& input, CallArgs& args) {
  TestFn t = findTest(name);
  if (!t) renderFail("unknown test '" + std::string(name) + "'");
  return t(*this, input, args);
}

Value Renderer::evalCall(const Expr& e, const ScopePtr& scope) {
  Value callee = eval(*e.kids[0], scope);
  CallArgs args;
  evalArgs(e.args, scope, args);
  line = e.line;
  step();
  return call(callee, args);
}

static bool compareOp(CmpOp op, const Value& a, const Value& b) {
  switch (op) {
    case CmpOp::Eq: return equals(a, b);
    case CmpOp::Ne: return !equals(a, b);
    case CmpOp::Lt: return compare(a, b, "<") < 0;
    case CmpOp::Le: return compare(a, b, "<=") <= 0;
    case CmpOp::Gt: return compare(a, b, ">") > 0;
    case CmpOp::Ge: return compare(a, b, ">=") >= 0;
    case CmpOp::In: return contains(b, a);
    case CmpOp::NotIn: return !contains(b, a);
  }
  return false;
}

Value Renderer::evalCompare(const Expr& e, const ScopePtr& scope) {
  Value left = eval(*e.kids[0], scope);
  for (size_t i = 0; i < e.cmps.size(); ++i) {
    Value right = eval(*e.kids[i + 1], scope);
    line = e.line;
    if (!compareOp(e.cmps[i], left, right)) return Value::boolean(false);
    left = std::move(right);
  }
  return Value::boolean(true);
}

Value Renderer::eval(const Expr& e, const ScopePtr& scope) {
  DepthGuard guard(*this);
  line = e.line;
  switch (e.kind) {
    case ExprKind::Literal: return e.literal;
    case ExprKind::Name: {
      if (const Value* v = scope->find(e.name)) return *v;
      return Value::undefined("'" + e.name + "' is undefined");
    }
    case ExprKind::List:
    case ExprKind::Tuple: {
      std::vector<Value> items;
      items.reserve(e.kids.size());
      for (const auto& k : e.kids) items.push_back(eval(*k, scope));
      return Value::list(std::move(items), e.kind == ExprKind::Tuple);
    }
    case ExprKind::Dict: {
      Value d = Value::dict();
      for (size_t i = 0; i + 1 < e.kids.size(); i += 2) {
        Value k = eval(*e.kids[i], scope);
        Value v = eval(*e.kids[i + 1], scope);
        line = e.line;
        if (k.isList() && !k.listData().tuple) renderFail("unhashable type: 'list'");
        if (k.isDict()) renderFail("unhashable type: 'dict'");
        d.dictData().set(std::move(k), std::move(v));
      }
      return d;
    }
    case ExprKind::Attr: {
      Value obj = eval(*e.kids[0], scope);
      line = e.line;
      return getAttr(obj, e.name);
    }
    case ExprKind::Item: {
      Value obj = eval(*e.kids[0], scope);
      Value key = eval(*e.kids[1], scope);
      line = e.line;
      return getItem(obj, key);
    }
    case ExprKind::Slice: {
      Value obj = eval(*e.kids[0], scope);
      Value b[3];
      for (int i = 0; i < 3; ++i)
        if (e.kids[size_t(i) + 1]) b[i] = eval(*e.kids[size_t(i) + 1], scope);
      line = e.line;
      return slice(obj, b[0], b[1], b[2]);
    }
    case ExprKind::Call: return evalCall(e, scope);
    case ExprKind::Filter: {
      Value input = eval(*e.kids[0], scope);
      CallArgs args;
      evalArgs(e.args, scope, args);
      line = e.line;
      return applyFilterNode(*this, e, input, args);
    }
    case ExprKind::Test: {
      Value input = eval(*e.kids[0], scope);
      CallArgs args;
      evalArgs(e.args, scope, args);
      line = e.line;
      if (!e.test) renderFail("unknown test '" + e.name + "'");
      return Value::boolean(e.test(*this, input, args) != e.negated);
    }
    case ExprKind::Not: return Value::boolean(!truthy(eval(*e.kids[0], scope)));
    case ExprKind::Neg:
    case ExprKind::Pos: {
      Value v = eval(*e.kids[0], scope);
      line = e.line;
      failIfUndefined(v);
      if (!v.isNumber())
        renderFail(fmt::format("bad operand type for unary {}: '{}'", e.kind == ExprKind::Neg ? '-' : '+',
                               typeName(v)));
      if (e.kind == ExprKind::Pos) return v.isBool() ? Value::integer(v.intValue()) : v;
      if (v.isFloat()) return Value::number(-v.numberValue());
      if (v.intValue() == INT64_MIN) renderFail("integer overflow");
      return Value::integer(-v.intValue());
    }
    case ExprKind::Binary: {
      Value a = eval(*e.kids[0], scope);
      Value b = eval(*e.kids[1], scope);
      line = e.line;
      return arithmetic(e.op, a, b);
    }
    case ExprKind::Concat: {
      std::string s;
      for (const auto& k : e.kids) {
        s += toStr(eval(*k, scope));
        checkSize(s.size());
      }
      return Value::string(std::move(s));
    }
    case ExprKind::Compare: return evalCompare(e, scope);
    case ExprKind::And: {
      Value a = eval(*e.kids[0], scope);
      if (!truthy(a)) return a;
      return eval(*e.kids[1], scope);
    }
    case ExprKind::Or: {
      Value a = eval(*e.kids[0], scope);
      if (truthy(a)) return a;
      return eval(*e.kids[1], scope);
    }
    case ExprKind::Cond: {
      if (truthy(eval(*e.kids[1], scope))) return eval(*e.kids[0], scope);
      if (e.kids[2]) return eval(*e.kids[2], scope);
      return Value::undefined("the inline if expression had no else branch");
    }
  }
  return Value();
}

// ---------------------------------------------------------------------------------------------------------
// Template

Template::Template(std::string_view source, Options options) : options_(std::move(options)) {
  LexOptions lex;
  lex.trimBlocks = options_.trimBlocks;
  lex.lstripBlocks = options_.lstripBlocks;
  program_ = parseTemplate(source, lex, options_.name);
}

std::string Template::render(const std::vector<std::pair<std::string, Value>>& variables) const {
  auto globals = std::make_shared<Scope>();
  installGlobals(*globals);
  auto root = std::make_shared<Scope>(globals);
  for (const auto& [k, v] : variables) root->set(k, v);
  Renderer r(*program_);
  try {
    return r.run(root);
  } catch (const RenderError& e) {
    throw Error(fmt::format("{}: line {}: {}", options_.name, r.line, e.what()));
  }
}

template <class J>
static std::vector<std::pair<std::string, Value>> contextVariables(const J& context, const std::string& name) {
  if (!context.is_object()) throw Error(name + ": the render context must be a JSON object");
  std::vector<std::pair<std::string, Value>> vars;
  for (auto it = context.begin(); it != context.end(); ++it) vars.emplace_back(it.key(), Value::fromJson(it.value()));
  return vars;
}

std::string Template::render(const nlohmann::json& context) const {
  return render(contextVariables(context, options_.name));
}

std::string Template::render(const nlohmann::ordered_json& context) const {
  return render(contextVariables(context, options_.name));
}

std::string render(std::string_view templ, const nlohmann::json& context, const Options& options) {
  return Template(templ, options).render(context);
}

}  // namespace doppler::jinja
