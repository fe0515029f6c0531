// Internal to the Jinja interpreter: scopes and the Renderer that jinja.cpp implements and the builtins
// (jinja_builtins.cpp: filters, tests, methods of str/list/dict, globals) call back into.
#pragma once
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_value.h"

namespace doppler::jinja {

struct Scope;
using ScopePtr = std::shared_ptr<Scope>;

// One frame of variables: the template's root, a for-loop iteration, a macro call. Lookups walk up the
// parent chain; assignments (set) always go to the frame they are made in, as in Jinja.
struct Scope {
  explicit Scope(ScopePtr parentScope = nullptr) : parent(std::move(parentScope)) {}
  std::vector<std::pair<std::string, Value>> vars;
  ScopePtr parent;
  const Value* find(std::string_view name) const;
  void set(const std::string& name, Value v);
};

class Renderer {
 public:
  explicit Renderer(const Program& program) : program_(program) {}
  ~Renderer();  // breaks the scope <-> macro reference cycles
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  // Renders the program with `root` as its outermost scope (context variables and builtin globals).
  std::string run(const ScopePtr& root);

  int line = 0;  // line of the node being evaluated, for error messages

  void step();  // counts loop iterations and calls; RenderError past the work limit (no runaway templates)
  Value getAttr(const Value& obj, const std::string& name);
  Value getItem(const Value& obj, const Value& key);
  Value call(const Value& callee, CallArgs& args);
  Value applyFilter(std::string_view name, const Value& input, CallArgs& args);
  bool applyTest(std::string_view name, const Value& input, CallArgs& args);

 private:
  enum class Flow { Normal, Break, Continue };
  struct DepthGuard;

  Flow exec(const Body& body, const ScopePtr& scope, std::string& out);
  Flow execStmt(const Stmt& s, const ScopePtr& scope, std::string& out);
  void execFor(const Stmt& s, const ScopePtr& scope, std::string& out);
  void assign(const Stmt& s, const ScopePtr& scope, Value v);
  Value eval(const Expr& e, const ScopePtr& scope);
  Value evalCall(const Expr& e, const ScopePtr& scope);
  Value evalCompare(const Expr& e, const ScopePtr& scope);
  void evalArgs(const std::vector<Arg>& args, const ScopePtr& scope, CallArgs& out);
  Value makeMacro(const std::string& name, const std::vector<Param>& params, const Body& body, ScopePtr closure);
  Value callMacro(const std::string& name, const std::vector<Param>& params, const Body& body,
                  const ScopePtr& closure, CallArgs& args);

  const Program& program_;
  std::vector<ScopePtr> closures_;  // scopes captured by macros
  size_t steps_ = 0;
  int depth_ = 0;
};

// Binds call arguments to named parameters (positional first, then by keyword); RenderError on extras.
// Absent parameters are nullopt.
std::vector<std::optional<Value>> bindArgs(const CallArgs& a, std::initializer_list<std::string_view> names,
                                           std::string_view what);

// A bound method of a str / list / dict value (`s.strip`, `d.items`), or nullopt if there is none.
std::optional<Value> methodOf(const Value& obj, const std::string& name);

// range, namespace, dict, raise_exception, strftime_now.
void installGlobals(Scope& scope);

// Python arithmetic: + - * / // % ** (with str/list concatenation and repetition, str % formatting).
Value arithmetic(BinOp op, const Value& a, const Value& b);

// Python's membership test `needle in haystack`.
bool contains(const Value& haystack, const Value& needle);

// Python's printf-style formatting: "%s-%d" % (a, b).
std::string percentFormat(const std::string& fmt, const std::vector<Value>& args);

// obj[start:stop:step] for strings and lists (absent bounds are undefined / none).
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

}  // namespace doppler::jinja
