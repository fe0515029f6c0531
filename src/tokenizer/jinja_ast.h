// Internal to the Jinja interpreter: the syntax tree built by jinja_parser.cpp and walked by jinja.cpp, and
// the builtin tables (jinja_builtins.cpp) that the parser resolves filter and test names against.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace doppler::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Arg {
  std::string name;  // empty: positional
  ExprPtr value;
};

class Renderer;
using FilterFn = Value (*)(Renderer&, const Value& input, CallArgs& args);
using TestFn = bool (*)(Renderer&, const Value& input, CallArgs& args);
FilterFn findFilter(std::string_view name);  // nullptr when unknown
TestFn findTest(std::string_view name);

enum class ExprKind {
  Literal,  // literal
  Name,     // name
  List,     // kids: items
  Tuple,    // kids: items
  Dict,     // kids: k0, v0, k1, v1, ...
  Attr,     // kids[0].name
  Item,     // kids[0][kids[1]]
  Slice,    // kids[0][kids[1]:kids[2]:kids[3]] (null kids are omitted bounds)
  Call,     // kids[0](args)
  Filter,   // kids[0] | name(args); kids[0] is null in a {% filter %} block
  Test,     // kids[0] is [not] name(args)
  Not,      // not kids[0]
  Neg,      // -kids[0]
  Pos,      // +kids[0]
  Binary,   // kids[0] op kids[1]
  Concat,   // kids joined with ~
  Compare,  // kids[0] cmps[0] kids[1] cmps[1] kids[2] ...
  And,
  Or,
  Cond,  // kids[0] if kids[1] else kids[2] (kids[2] null: undefined)
};

enum class BinOp { Add, Sub, Mul, Div, FloorDiv, Mod, Pow };
enum class CmpOp { Eq, Ne, Lt, Le, Gt, Ge, In, NotIn };

struct Expr {
  ExprKind kind;
  int line = 0;
  int height = 1;  // 1 + the tallest child: bounded by the parser so that evaluation and destruction cannot
                   // exhaust the stack
  Value literal;
  std::string name;
  std::vector<ExprPtr> kids;
  std::vector<Arg> args;
  BinOp op = BinOp::Add;
  std::vector<CmpOp> cmps;
  bool negated = false;  // Test: `is not`
  FilterFn filter = nullptr;
  TestFn test = nullptr;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind {
  Text,         // text
  Output,       // {{ expr }}
  If,           // branches (cond, body)..., elseBody
  For,          // for targets in expr [if cond]: body, else elseBody
  Set,          // set targets = expr  |  set targets[0].attr = expr
  SetBlock,     // set targets[0] [| filters]: body
  Macro,        // macro name(params): body
  CallBlock,    // call(params) expr: body
  FilterBlock,  // filter filters: body
  Break,
  Continue,
  Block,  // generation: body rendered in place
};

struct Param {
  std::string name;
  ExprPtr defaultValue;  // may be null
};

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr cond;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body elseBody;
  std::vector<std::string> targets;
  bool targetTuple = false;  // `for a, b in` / `set a, b =`: unpack
  bool usesLoop = true;      // for: the body mentions `loop` (otherwise no loop object is built)
  std::string attr;          // `set ns.attr =`
  std::string name;          // macro name
  std::vector<Param> params;
  std::vector<ExprPtr> filters;
};

struct Program {
  Body body;
};

struct LexOptions {
  bool trimBlocks = true;
  bool lstripBlocks = true;
};

// Parses a template; throws doppler::Error "<name>: line L: <what>" on a syntax error.
std::unique_ptr<Program> parseTemplate(std::string_view source, const LexOptions& opt, const std::string& name);

}  // namespace doppler::jinja
