// The Jinja interpreter (src/tokenizer/jinja.h). The "MatchesJinja2" expectations were produced by Jinja2
// 3.1.2 configured like transformers' chat templates (ImmutableSandboxedEnvironment, trim_blocks,
// lstrip_blocks, loopcontrols, tojson with ensure_ascii=False); the other tests check errors, limits and
// the deliberate differences (list.append is allowed, {% generation %} renders its body).
#include <gtest/gtest.h>

#include <ctime>
#include <functional>
#include <string>

#include "core/error.h"
#include "tokenizer/jinja.h"

using namespace doppler;
using OJ = nlohmann::ordered_json;

namespace {

const char* kMessages = R"({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "yo"}]})";

std::string render(std::string_view templ, const char* context = "{}") {
  return jinja::Template(templ).render(OJ::parse(context));
}

// The error message of rendering `templ`, or "" if it rendered.
std::string errorOf(std::string_view templ, const char* context = "{}", jinja::Options options = {}) {
  try {
    jinja::Template(templ, options).render(OJ::parse(context));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- API ----

TEST(JinjaApi, ParseOnceRenderMany) {
  jinja::Template t("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}{{ n + 1 }}");
  EXPECT_EQ(t.render(nlohmann::json::parse(R"({"messages": [{"role": "user", "content": "a"}], "n": 1})")), "user:a;2");
  EXPECT_EQ(t.render(nlohmann::json::parse(R"({"messages": [], "n": 41})")), "42");
  jinja::Template copy = t;  // copies share the parsed program
  EXPECT_EQ(copy.render(nlohmann::json::parse(R"({"messages": [], "n": 0})")), "1");
  EXPECT_EQ(jinja::render("{{ a }}-{{ b }}", {{"a", 1}, {"b", "x"}}), "1-x");
  std::vector<std::pair<std::string, jinja::Value>> vars = {{"v", jinja::Value::list({jinja::Value::integer(3)})}};
  EXPECT_EQ(jinja::Template("{{ v[0] * 2 }}").render(vars), "6");
}

TEST(JinjaApi, ContextMustBeAnObject) {
  EXPECT_THROW(jinja::render("x", nlohmann::json::array()), Error);
}

TEST(JinjaApi, OptionsWithoutTrimAndLstripBlocks) {
  jinja::Options plain;
  plain.trimBlocks = false;
  plain.lstripBlocks = false;
  const char* t = "<ul>\n  {% for x in l %}\n  <li>{{ x }}</li>\n  {% endfor %}\n</ul>";
  nlohmann::json ctx = {{"l", {1, 2}}};
  EXPECT_EQ(jinja::Template(t, plain).render(ctx), "<ul>\n  \n  <li>1</li>\n  \n  <li>2</li>\n  \n</ul>");
  EXPECT_EQ(jinja::Template(t).render(ctx), "<ul>\n  <li>1</li>\n  <li>2</li>\n</ul>");
  // The name prefixes error messages.
  plain.name = "my.jinja";
  EXPECT_EQ(errorOf("\n{{ 1 +", "{}", plain), "my.jinja: line 2: unclosed tag: missing '}}'");
}

// ---- Deliberate differences from transformers' sandbox ----

TEST(JinjaExtensions, ListAppendMutatesInPlace) {
  // transformers' ImmutableSandboxedEnvironment forbids this; some templates (made for other engines) use it.
  EXPECT_EQ(render("{% set l = [] %}{% for x in [1, 2] %}{% set _ = l.append(x * 10) %}{% endfor %}{{ l }}"),
            "[10, 20]");
  EXPECT_EQ(render("{% set ns = namespace(l=[]) %}{% set _ = ns.l.append('a') %}{{ ns.l|length }}"), "1");
  EXPECT_NE(errorOf("{% set t = (1,) %}{% set _ = t.append(2) %}").find("'tuple' object has no attribute 'append'"),
            std::string::npos);
}

TEST(JinjaExtensions, GenerationBlockRendersItsBody) {
  // transformers' AssistantTracker extension: {% generation %} marks assistant text and renders it unchanged.
  EXPECT_EQ(render("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}<{{ m.content }}>"
                   "{% endgeneration %}{% endif %}{% endfor %}",
                   kMessages),
            "<yo>");
}

TEST(JinjaExtensions, KeysAndValuesFilters) {
  EXPECT_EQ(render(R"({{ d|keys|list }}{{ d|values|list }})", R"({"d": {"b": 1, "a": 2}})"), "['b', 'a'][1, 2]");
}

// ---- Globals that depend on the environment ----

TEST(JinjaGlobals, RaiseExceptionIsAnErrorWithTheMessage) {
  EXPECT_EQ(errorOf("line 1\n{% if messages|length > 2 %}{{ raise_exception('Too many: ' ~ messages|length) }}{% endif %}",
                    kMessages),
            "chat template: line 2: Too many: 3");
  EXPECT_EQ(errorOf("{{ raise_exception() }}"), "chat template: line 1: raise_exception() called");
}

TEST(JinjaGlobals, StrftimeNowFormatsTheCurrentTime) {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char year[16];
  std::strftime(year, sizeof year, "%Y", &tm);
  EXPECT_EQ(render("{{ strftime_now('%Y') }}"), year);
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y')|length }}"), "11");
  EXPECT_EQ(render("{{ strftime_now('') }}"), "");
  EXPECT_NE(errorOf("{{ strftime_now(5) }}"), "");
}

// ---- Errors: one line, "chat template: line L: what" ----

TEST(JinjaErrors, SyntaxErrors) {
  EXPECT_EQ(errorOf("a\n{{ x "), "chat template: line 2: unclosed tag: missing '}}'");
  EXPECT_EQ(errorOf("{% if x"), "chat template: line 1: unclosed tag: missing '%}'");
  EXPECT_EQ(errorOf("{# never closed"), "chat template: line 1: unclosed comment: missing '#}'");
  EXPECT_EQ(errorOf("{% raw %}abc"), "chat template: line 1: unclosed raw block: missing '{% endraw %}'");
  EXPECT_EQ(errorOf("{% for m in messages %}\n{{ m }}\n"),
            "chat template: line 2: unexpected end of template: '{% for %}' opened on line 1 is not closed with "
            "'{% endfor %}'");
  EXPECT_EQ(errorOf("{% if x %}{% endfor %}"), "chat template: line 1: unexpected '{% endfor %}' inside '{% if %}'");
  EXPECT_EQ(errorOf("{% endif %}"), "chat template: line 1: unexpected '{% endif %}' with no open block");
  EXPECT_EQ(errorOf("\n\n{% include 'x' %}"), "chat template: line 3: unknown tag 'include'");
  EXPECT_EQ(errorOf("{{ }}"), "chat template: line 1: expected an expression, got end of print statement");
  EXPECT_EQ(errorOf("{{ 1 + }}"), "chat template: line 1: expected an expression, got end of print statement");
  EXPECT_EQ(errorOf("{{ (1, 2 }}"), "chat template: line 1: unexpected '}'");
  EXPECT_EQ(errorOf("{{ 'abc }}"), "chat template: line 1: unterminated string literal");
  EXPECT_EQ(errorOf("{{ a b }}"), "chat template: line 1: expected end of print statement, got 'b'");
  EXPECT_EQ(errorOf("{% for x of y %}{% endfor %}"), "chat template: line 1: expected 'in' in for loop, got 'of'");
  EXPECT_EQ(errorOf("{% break %}"), "chat template: line 1: '{% break %}' outside of a for loop");
  EXPECT_EQ(errorOf("{% set true = 1 %}"), "chat template: line 1: cannot assign to 'true'");
  EXPECT_EQ(errorOf("{{ f(a=1, 2) }}"), "chat template: line 1: positional argument follows keyword argument");
  EXPECT_EQ(errorOf("{% macro m(a=1, b) %}{% endmacro %}"),
            "chat template: line 1: non-default argument follows default argument");
  EXPECT_EQ(errorOf("{{ 99999999999999999999 }}"), "chat template: line 1: integer literal 99999999999999999999 is too large");
  EXPECT_EQ(errorOf("{{ '\\x4' }}"), "chat template: line 1: invalid \\x escape in string literal");
  EXPECT_EQ(errorOf("{{ a $ b }}"), "chat template: line 1: unexpected character '$' in tag");
  EXPECT_EQ(errorOf("{% for x in l recursive %}{% endfor %}"), "chat template: line 1: recursive for loops are not supported");
}

TEST(JinjaErrors, UnknownFiltersAndTests) {
  EXPECT_EQ(errorOf("\n{{ x|nosuch }}"), "chat template: line 2: unknown filter 'nosuch'");
  EXPECT_EQ(errorOf("{{ x is nosuch }}"), "chat template: line 1: unknown test 'nosuch'");
  EXPECT_EQ(errorOf("{% for m in l %}{{ m|nosuch }}{% endfor %}"), "chat template: line 1: unknown filter 'nosuch'");
  // As in Jinja, inside an {% if %} or an inline if the name is only looked up when that code runs.
  EXPECT_EQ(render("{% if false %}{{ x|nosuch }}{% endif %}ok"), "ok");
  EXPECT_EQ(render("{{ 1 if true else x|nosuch }}"), "1");
  EXPECT_EQ(errorOf("{% if true %}{{ x|nosuch }}{% endif %}"), "chat template: line 1: unknown filter 'nosuch'");
  EXPECT_EQ(errorOf("{{ [1]|map('nosuch')|list }}"), "chat template: line 1: unknown filter 'nosuch'");
  EXPECT_EQ(errorOf("{{ [1]|select('nosuch')|list }}"), "chat template: line 1: unknown test 'nosuch'");
}

TEST(JinjaErrors, RuntimeErrors) {
  EXPECT_EQ(errorOf("{{ x.y }}"), "chat template: line 1: 'x' is undefined");
  EXPECT_EQ(errorOf("\n{{ d.a.b }}", R"({"d": {}})"), "chat template: line 2: 'dict object' has no attribute 'a'");
  EXPECT_EQ(errorOf("{{ l[5][0] }}", R"({"l": [1]})"), "chat template: line 1: 'list object' has no element 5");
  EXPECT_EQ(errorOf("{{ x + 1 }}"), "chat template: line 1: 'x' is undefined");
  EXPECT_EQ(errorOf("{{ 'a' + 1 }}"), "chat template: line 1: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(errorOf("{{ \"a\" ~ \"b\" + 1 }}"), "chat template: line 1: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(errorOf("{{ none - 1 }}"), "chat template: line 1: unsupported operand type(s) for -: 'NoneType' and 'int'");
  EXPECT_EQ(errorOf("{{ 1 / 0 }}"), "chat template: line 1: division by zero");
  EXPECT_EQ(errorOf("{{ 1 // 0 }}"), "chat template: line 1: integer division or modulo by zero");
  EXPECT_EQ(errorOf("{{ 9223372036854775807 + 1 }}"), "chat template: line 1: integer overflow");
  EXPECT_EQ(errorOf("{{ 2 ** 64 }}"), "chat template: line 1: integer overflow");
  EXPECT_EQ(errorOf("{{ [1] < 1 }}"), "chat template: line 1: '<' not supported between instances of 'list' and 'int'");
  EXPECT_EQ(errorOf("{{ [1, 'a']|sort }}"), "chat template: line 1: '<' not supported between instances of 'str' and 'int'");
  EXPECT_EQ(errorOf("{{ 1 in 5 }}"), "chat template: line 1: argument of type 'int' is not iterable");
  EXPECT_EQ(errorOf("{{ 1 in 'abc' }}"), "chat template: line 1: 'in <string>' requires string as left operand, not int");
  EXPECT_EQ(errorOf("{% for x in 5 %}{% endfor %}"), "chat template: line 1: 'int' object is not iterable");
  EXPECT_EQ(errorOf("{% for a, b in [[1]] %}{% endfor %}"),
            "chat template: line 1: not enough values to unpack (expected 2, got 1)");
  EXPECT_EQ(errorOf("{{ nope() }}"), "chat template: line 1: 'nope' is undefined");
  EXPECT_EQ(errorOf("{{ 'abc'() }}"), "chat template: line 1: 'str' object is not callable");
  EXPECT_EQ(errorOf("{% set d = {} %}{% set d.x = 1 %}"),
            "chat template: line 1: cannot assign attribute 'x' on 'd': it is not a namespace()");
  EXPECT_EQ(errorOf("{{ none|length }}"), "chat template: line 1: object of type 'NoneType' has no len()");
  EXPECT_EQ(errorOf("{{ 'a'|abs }}"), "chat template: line 1: bad operand type for abs(): 'str'");
  EXPECT_EQ(errorOf("{{ x|tojson }}"), "chat template: line 1: Object of type Undefined is not JSON serializable");
  EXPECT_EQ(errorOf("{{ 'abc'[::0] }}"), "chat template: line 1: slice step cannot be zero");
  EXPECT_EQ(errorOf("{{ 5[1:] }}"), "chat template: line 1: 'int' object is not subscriptable");
  EXPECT_EQ(errorOf("{{ 'a'|trim(1, 2) }}"), "chat template: line 1: trim() takes at most 1 argument(s) (2 given)");
  EXPECT_EQ(errorOf("{{ [1]|join(sep=',') }}"), "chat template: line 1: join() got an unexpected keyword argument 'sep'");
  EXPECT_EQ(errorOf("{{ {[1]: 2} }}"), "chat template: line 1: unhashable type: 'list'");
  EXPECT_EQ(errorOf("{{ 'a'.split('') }}"), "chat template: line 1: split: empty separator");
  EXPECT_EQ(errorOf("{{ '%d' % 'x' }}"), "chat template: line 1: %d format: a real number is required, not str");
  EXPECT_EQ(errorOf("{{ '%s %s' % ('a',) }}"), "chat template: line 1: not enough arguments for format string");
  EXPECT_EQ(errorOf("{{ '{}'.format() }}"), "chat template: line 1: format: not enough positional arguments");
}

TEST(JinjaErrors, LimitsStopRunawayTemplates) {
  EXPECT_EQ(errorOf("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
            "chat template: line 1: recursion too deep (a macro calling itself without end?)");
  EXPECT_EQ(errorOf("{{ range(100001)|length }}"), "chat template: line 1: range() is too big (more than 100000 items)");
  EXPECT_EQ(render("{{ range(100000)|length }}"), "100000");
  EXPECT_EQ(errorOf("{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}"),
            "chat template: line 1: template does more than 2000000 loop iterations and calls");
  EXPECT_EQ(errorOf("{{ 'x' * 1000000000 }}"),
            "chat template: line 1: result of 268435457 bytes/items exceeds the 256 MiB limit");
  EXPECT_EQ(errorOf("{{ " + std::string(300, '(') + "1" + std::string(300, ')') + " }}"), "chat template: line 1: template nested too deeply");
  std::string chain = "{{ 1";
  for (int i = 0; i < 1000; ++i) chain += " + 1";
  EXPECT_EQ(errorOf(chain + " }}"), "chat template: line 1: expression nested too deeply");
  std::string nested;
  for (int i = 0; i < 300; ++i) nested += "{% if true %}";
  EXPECT_EQ(errorOf(nested), "chat template: line 1: template nested too deeply");
}

TEST(JinjaErrors, InvalidUtf8PassesThroughText) {
  EXPECT_EQ(render("a\xff{{ 'b\xfe' }}{{ s|length }}", R"({"s": "x"})"), "a\xff" "b\xfe" "1");
  EXPECT_EQ(render("{{ '\xff\xfe'|length }}|{{ '\xff" "a'[1] }}"), "2|a");
}

// ---- Everything below was checked against Jinja2 ----

TEST(JinjaLiterals, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ "double" }}|{{ 'single' }}|{{ "a" 'b' "c" }})j"),
            "double|single|abc");
  EXPECT_EQ(render(R"j({{ "tab\there\nnewline \\ \"q\" \'s\' \x41\u00e9\U0001F600 \101 \q" }})j"),
            "tab\there\nnewline \\ \"q\" 's' A\xc3""\xa9""\xf0""\x9f""\x98""\x80"" A \\q");
  EXPECT_EQ(render(R"j({{ 42 }}|{{ -7 }}|{{ 1_000_000 }}|{{ 3.25 }}|{{ 1e3 }}|{{ 2.5E-3 }}|{{ 0.1 + 0.2 }}|{{ 1e16 }}|{{ 1.0 }})j"),
            "42|-7|1000000|3.25|1000.0|0.0025|0.30000000000000004|1e+16|1.0");
  EXPECT_EQ(render(R"j({{ true }}|{{ True }}|{{ false }}|{{ False }}|{{ none }}|{{ None }})j"),
            "True|True|False|False|None|None");
  EXPECT_EQ(render(R"j({{ [1, "a", none, true, 2.5, [], {}] }}|{{ (1, 2) }}|{{ (1,) }}|{{ () }}|{{ {"k": "v", "n": 1} }})j"),
            "[1, 'a', None, True, 2.5, [], {}]|(1, 2)|(1,)|()|{'k': 'v', 'n': 1}");
  EXPECT_EQ(render(R"j({{ ["it's", 'say "hi"', 'both \' "', '\n'] }})j"),
            "[\"it's\", 'say \"hi\"', 'both \\' \"', '\\n']");
  EXPECT_EQ(render(R"j({{ [1, 2, ] }}|{{ {"a": 1, } }}|{{ (1, 2, ) }})j"),
            "[1, 2]|{'a': 1}|(1, 2)");
}

TEST(JinjaComments, MatchesJinja2) {
  EXPECT_EQ(render(R"j(a{# a comment #}b{# multi
line {{ not evaluated }} #}c)j"),
            "abc");
}

TEST(JinjaWhitespaceControl, MatchesJinja2) {
  EXPECT_EQ(render(R"j(a  {{- "x" -}}  b)j"),
            "axb");
  EXPECT_EQ(render(R"j(a
  {%- if true -%}
  b
  {%- endif -%}
  c)j"),
            "abc");
  EXPECT_EQ(render(R"j({{ 1 }} 
 {# c -#} 
 {{ 2 }})j"),
            R"j(1 
2)j");
  EXPECT_EQ(render(R"j(<{%- if true %} x {% endif -%}>)j"),
            "< x >");
}

TEST(JinjaTrimAndLstripBlocks, MatchesJinja2) {
  EXPECT_EQ(render(R"j({% for x in [1, 2] %}
  {{ x }}
{% endfor %}
end)j"),
            R"j(  1
  2
end)j");
  EXPECT_EQ(render(R"j(  {% if true %}
  yes
  {% endif %}
end)j"),
            R"j(  yes
end)j");
  EXPECT_EQ(render(R"j(x  {% if true %}y{% endif %}  
  {# c #}
z)j"),
            R"j(x  y  
z)j");
  EXPECT_EQ(render(R"j({{ 1 }}  {% if true %}x{% endif %})j"),
            "1  x");
  EXPECT_EQ(render(R"j(a
  {%+ if true %}b{% endif +%}
c)j"),
            R"j(a
  b
c)j");
  EXPECT_EQ(render(R"j(a
  {#+ c #}
b)j"),
            R"j(a
  b)j");
  EXPECT_EQ(render(R"j(line
	 {% set x = 1 %}
{{ x }})j"),
            R"j(line
1)j");
}

TEST(JinjaTrailingNewlineAndLineEndings, MatchesJinja2) {
  EXPECT_EQ(render(R"j(a
b
)j"),
            R"j(a
b)j");
  EXPECT_EQ(render(R"j(a
b

)j"),
            R"j(a
b
)j");
  EXPECT_EQ(render(R"j(a
b
c
)j"),
            R"j(a
b
c)j");
}

TEST(JinjaRawBlocks, MatchesJinja2) {
  EXPECT_EQ(render(R"j({% raw %}{{ not a var }}{% if %}{% endraw %})j"),
            "{{ not a var }}{% if %}");
  EXPECT_EQ(render(R"j(<{%- raw -%}  x  {%- endraw -%}>)j"),
            "<x>");
  EXPECT_EQ(render(R"j(a
  {% raw %}
 b {% endraw %}
c)j"),
            R"j(a

 b c)j");
  EXPECT_EQ(render(R"j({% raw %}x
   {% endraw %}y)j"),
            R"j(x
y)j");
}

TEST(JinjaAttributeAndSubscript, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ m.role }}|{{ m["role"] }}|{{ m.missing }}|{{ m["missing"] }}|{{ m.missing is defined }})j", R"j({"m": {"role": "user"}})j"),
            "user|user|||False");
  EXPECT_EQ(render(R"j({{ l[0] }}|{{ l[-1] }}|{{ l[9] }}|{{ l.1 }}|{{ s[0] }}|{{ s[-1] }}|{{ u[1] }})j", R"j({"l": [10, 20, 30], "s": "abc", "u": "héllo"})j"),
            "10|30||20|a|c|é");
  EXPECT_EQ(render(R"j({{ messages[0].content }}|{{ messages[-1]["role"] }}|{{ (messages|last).content }})j", kMessages),
            "sys|assistant|yo");
  EXPECT_EQ(render(R"j({{ d.items is defined }}|{{ d["items"] }}|{{ d.get("items") }})j", R"j({"d": {"items": 5}})j"),
            "True|5|5");
}

TEST(JinjaSlices, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ l[1:] }}|{{ l[:2] }}|{{ l[-2:] }}|{{ l[:-1] }}|{{ l[::2] }}|{{ l[::-1] }}|{{ l[3:1:-1] }}|{{ l[10:] }}|{{ l[-10:1] }})j", R"j({"l": [0, 1, 2, 3, 4]})j"),
            "[1, 2, 3, 4]|[0, 1]|[3, 4]|[0, 1, 2, 3]|[0, 2, 4]|[4, 3, 2, 1, 0]|[3, 2]|[]|[0]");
  EXPECT_EQ(render(R"j({{ s[1:3] }}|{{ s[::-1] }}|{{ u[::-1] }}|{{ u[1:4] }}|{{ (1, 2, 3)[1:] }})j", R"j({"s": "hello", "u": "héllo"})j"),
            "el|olleh|olléh|éll|(2, 3)");
  EXPECT_EQ(render(R"j({% set m = messages[1:] %}{{ m|length }}:{{ m[0].role }})j", kMessages),
            "2:user");
}

TEST(JinjaArithmetic, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ 1 + 2 }}|{{ 7 - 10 }}|{{ 6 * 7 }}|{{ 7 / 2 }}|{{ 6 / 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ -7 % 3 }}|{{ 7 % -3 }})j"),
            "3|-3|42|3.5|2.0|3|-4|1|2|-2");
  EXPECT_EQ(render(R"j({{ 2 ** 10 }}|{{ 2 ** -1 }}|{{ 2 ** 3 ** 2 }}|{{ -2 ** 2 }}|{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 10 - 2 - 3 }}|{{ 2.5 * 2 }}|{{ 1 + 1.0 }}|{{ 7.5 // 2 }}|{{ -7.5 % 2 }})j"),
            "1024|0.5|64|4|7|9|5|5.0|2.0|3.0|0.5");
  EXPECT_EQ(render(R"j({{ "ab" + "cd" }}|{{ "ab" * 3 }}|{{ [1] + [2, 3] }}|{{ [0] * 3 }}|{{ -x }}|{{ +x }}|{{ true + 1 }})j", R"j({"x": 5})j"),
            "abcd|ababab|[1, 2, 3]|[0, 0, 0]|-5|5|2");
}

TEST(JinjaConcat, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ "a" ~ 1 ~ none ~ true ~ 2.5 ~ [1] ~ undefined_var }})j"),
            "a1NoneTrue2.5[1]");
  EXPECT_EQ(render(R"j({{ "n=" ~ (1 + 2) }}|{{ 1 ~ 2 * 3 }}|{{ "a" ~ "b" + "c" }})j"),
            "n=3|16|abc");
}

TEST(JinjaComparisons, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ 1 == 1.0 }}|{{ 1 != 2 }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 2 <= 2 }}|{{ "a" < "b" }}|{{ [1, 2] < [1, 3] }}|{{ true == 1 }}|{{ none == none }}|{{ "1" == 1 }})j"),
            "True|True|True|False|True|True|True|True|True|False");
  EXPECT_EQ(render(R"j({{ "b" in "abc" }}|{{ "z" not in "abc" }}|{{ 2 in [1, 2] }}|{{ "k" in {"k": 1} }}|{{ "v" in {"k": "v"} }}|{{ not 1 in [1] }})j"),
            "True|True|True|True|False|False");
}

TEST(JinjaLogic, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ true and false }}|{{ true or false }}|{{ not true }}|{{ 1 and "x" }}|{{ 0 and "x" }}|{{ 0 or "" or "last" }}|{{ none or [] }}|{{ not "" }}|{{ not [] }}|{{ not {} }}|{{ not 0.0 }})j"),
            "False|True|False|x|0|last|[]|True|True|True|True");
  EXPECT_EQ(render(R"j({{ "yes" if x else "no" }}|{{ "yes" if not x else "no" }}|{{ "a" if false }}|{{ 1 if x > 3 else 2 if x > 1 else 3 }})j", R"j({"x": 2})j"),
            "yes|no||2");
  EXPECT_EQ(render(R"j({{ not x is defined }}|{{ not x is undefined }}|{{ x is not defined and true }})j"),
            "True|False|True");
}

TEST(JinjaIf, MatchesJinja2) {
  EXPECT_EQ(render(R"j({% if x == 1 %}one{% elif x == 2 %}two{% elif x == 3 %}three{% else %}other{% endif %})j", R"j({"x": 2})j"),
            "two");
  EXPECT_EQ(render(R"j({% if x == 1 %}one{% elif x == 2 %}two{% else %}other{% endif %})j", R"j({"x": 5})j"),
            "other");
  EXPECT_EQ(render(R"j({% if [] %}a{% endif %}{% if [0] %}b{% endif %}{% if "" %}c{% endif %}{% if " " %}d{% endif %}{% if none %}e{% endif %}{% if missing %}f{% endif %})j"),
            "bd");
  EXPECT_EQ(render(R"j({% if true %}{% if false %}a{% else %}b{% endif %}{% endif %})j"),
            "b");
}

TEST(JinjaFor, MatchesJinja2) {
  EXPECT_EQ(render(R"j({% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %})j", R"j({"l": ["a", "b", "c"]})j"),
            "1032TrueFalse3;2121FalseFalse3;3210FalseTrue3;");
  EXPECT_EQ(render(R"j({% for x in l %}[{{ loop.previtem }}|{{ loop.nextitem }}|{{ loop.cycle("odd", "even") }}]{% endfor %})j", R"j({"l": ["a", "b", "c"]})j"),
            "[|b|odd][a|c|even][b||odd]");
  EXPECT_EQ(render(R"j({% for x in [] %}x{% else %}empty{% endfor %}|{% for x in missing %}x{% else %}undefined is empty{% endfor %})j"),
            "empty|undefined is empty");
  EXPECT_EQ(render(R"j({% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d|items %}{{ k }}{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{% for k, v in d|dictsort %}{{ k }}{% endfor %})j", R"j({"d": {"b": 1, "a": 2}})j"),
            "b=1;a=2;|ba|ba|ab");
  EXPECT_EQ(render(R"j({% for (a, b) in pairs %}{{ a + b }},{% endfor %}{% for a, b in pairs %}{{ a * b }},{% endfor %})j", R"j({"pairs": [[1, 2], [3, 4]]})j"),
            "3,7,2,12,");
  EXPECT_EQ(render(R"j({% for c in "héllo" %}[{{ c }}]{% endfor %})j"),
            "[h][é][l][l][o]");
  EXPECT_EQ(render(R"j({% for x in l if x is odd %}{{ x }}:{{ loop.index }}/{{ loop.length }}{{ "," if not loop.last }}{% else %}none{% endfor %})j", R"j({"l": [1, 2, 3, 4, 5]})j"),
            "1:1/3,3:2/3,5:3/3");
  EXPECT_EQ(render(R"j({% for m in messages if m.role != "system" %}{{ m.role }}{% endfor %})j", kMessages),
            "userassistant");
  EXPECT_EQ(render(R"j({% for m in messages[::-1] %}{{ m.role[0] }}{% endfor %}|{% for m in messages|reverse %}{{ loop.index }}{% endfor %})j", kMessages),
            "aus|123");
  EXPECT_EQ(render(R"j({% for x in l %}{% for y in l %}{{ x }}{{ y }}.{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %})j", R"j({"l": [1, 2]})j"),
            "11.1 12.2 1|21.1 22.2 2|");
}

TEST(JinjaLoopControls, MatchesJinja2) {
  EXPECT_EQ(render(R"j({% for x in l %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% endfor %})j", R"j({"l": [1, 2, 3]})j"),
            "13");
  EXPECT_EQ(render(R"j({% for x in l %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %})j", R"j({"l": [1, 2, 3]})j"),
            "1");
  EXPECT_EQ(render(R"j({% for x in l %}{% for y in l %}{% if y > x %}{% break %}{% endif %}{{ x }}{{ y }} {% endfor %}{% endfor %})j", R"j({"l": [1, 2, 3]})j"),
            "11 21 22 31 32 33 ");
}

TEST(JinjaSet, MatchesJinja2) {
  EXPECT_EQ(render(R"j({% set x = 1 %}{% set x = x + 1 %}{{ x }}|{% set a, b = 1, 2 %}{{ a }}{{ b }}|{% set (c, d) = [3, 4] %}{{ c }}{{ d }}|{% set t = 1, 2 %}{{ t }})j"),
            "2|12|34|(1, 2)");
  EXPECT_EQ(render(R"j({% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}[{{ x }}]{% endfor %}{{ x }})j"),
            "[1][2]1");
  EXPECT_EQ(render(R"j({% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }})j"),
            "2");
  EXPECT_EQ(render(R"j({% set ns = namespace(total=0, seen=[]) %}{% for i in [1, 2, 3] %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }}|{{ ns.seen }}|{{ ns.missing }})j"),
            "6|[]|");
  EXPECT_EQ(render(R"j({% set ns = namespace(d) %}{{ ns.a }}{% set ns.a = 5 %}{{ ns.a }}{{ d.a }})j", R"j({"d": {"a": 1}})j"),
            "151");
  EXPECT_EQ(render(R"j({% set block %}Hello {{ name }}!{% endset %}[{{ block }}]|{% set up | upper %}shout{% endset %}{{ up }})j", R"j({"name": "Ann"})j"),
            "[Hello Ann!]|SHOUT");
  EXPECT_EQ(render(R"j({% set messages = messages[1:] %}{{ messages|length }})j", kMessages),
            "2");
}

TEST(JinjaMacros, MatchesJinja2) {
  EXPECT_EQ(render(R"j({% macro greet(name, greeting="Hello") %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet("Ann") }}|{{ greet("Bob", "Hi") }}|{{ greet(greeting="Yo", name="Cy") }})j"),
            "Hello, Ann!|Hi, Bob!|Yo, Cy!");
  EXPECT_EQ(render(R"j({% macro m(a, b=a * 2) %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1) }}|{{ m(1, 2, 3, 4, k="v") }})j"),
            "12(){}|12(3, 4){'k': 'v'}");
  EXPECT_EQ(render(R"j({% macro m(x) %}{{ x }}{{ y }}{% endmacro %}{% set y = "!" %}{{ m("a") }})j"),
            "a!");
  EXPECT_EQ(render(R"j({% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(6) }})j"),
            "720");
  EXPECT_EQ(render(R"j({% macro m() %}{{ missing_arg }}[{{ caller is defined }}]{% endmacro %}{{ m() }})j"),
            "[False]");
  EXPECT_EQ(render(R"j({% macro box(title) %}[{{ title }}: {{ caller() }}]{% endmacro %}{% call box("T") %}body {{ 1 + 1 }}{% endcall %})j"),
            "[T: body 2]");
  EXPECT_EQ(render(R"j({% macro each(items) %}{% for i in items %}{{ caller(i, loop.index) }}{% endfor %}{% endmacro %}{% call(item, n) each(["a", "b"]) %}{{ n }}={{ item }};{% endcall %})j"),
            "1=a;2=b;");
}

TEST(JinjaFilterBlock, MatchesJinja2) {
  EXPECT_EQ(render(R"j({% filter upper %}hello {{ name }}{% endfilter %}|{% filter trim|replace("a", "o") %}   banana   {% endfilter %})j", R"j({"name": "x"})j"),
            "HELLO X|bonono");
}

TEST(JinjaTests, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ n is none }}{{ x is not none }})j", R"j({"x": 1, "n": null})j"),
            "TrueFalseTrueTrueTrue");
  EXPECT_EQ(render(R"j({{ "s" is string }}{{ 1 is string }}{{ 1 is number }}{{ 1.5 is number }}{{ true is number }}{{ "1" is number }})j"),
            "TrueFalseTrueTrueTrueFalse");
  EXPECT_EQ(render(R"j({{ 1 is integer }}{{ 1.0 is integer }}{{ true is integer }}{{ 1.0 is float }}{{ true is boolean }}{{ 1 is boolean }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 0 is false }})j"),
            "TrueFalseFalseTrueTrueFalseTrueFalseTrueFalse");
  EXPECT_EQ(render(R"j({{ {} is mapping }}{{ [] is mapping }}{{ [] is iterable }}{{ "s" is iterable }}{{ 1 is iterable }}{{ [] is sequence }}{{ "s" is sequence }}{{ 5 is sequence }})j"),
            "TrueFalseTrueTrueFalseTrueTrueFalse");
  EXPECT_EQ(render(R"j({{ 3 is odd }}{{ 3 is even }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }})j"),
            "TrueFalseTrueTrueFalse");
  EXPECT_EQ(render(R"j({{ 1 is eq 1 }}{{ 1 is equalto 2 }}{{ 1 is ne 2 }}{{ 1 is lt 2 }}{{ 2 is le 1 }}{{ 3 is gt(2) }}{{ 3 is ge 3 }}{{ 2 is in [1, 2] }}{{ "abc" is lower }}{{ "ABC" is upper }}{{ range is callable }})j"),
            "TrueFalseTrueTrueFalseTrueTrueTrueTrueTrueTrue");
  EXPECT_EQ(render(R"j({{ l|select("odd")|list }}|{{ l|reject("odd")|list }}|{{ l|select("divisibleby", 2)|list }}|{{ l|select("equalto", 3)|list }}|{{ l|select("==", 3)|list }}|{{ l|select("gt", 3)|list }}|{{ [0, 1, "", "a", none]|select|list }})j", R"j({"l": [1, 2, 3, 4, 5]})j"),
            "[1, 3, 5]|[2, 4]|[2, 4]|[3]|[3]|[4, 5]|[1, 'a']");
}

TEST(JinjaStringFilters, MatchesJinja2) {
  EXPECT_EQ(render(R"j([{{ "  a b 
"|trim }}]|[{{ "xxaxx"|trim("x") }}]|{{ "MiXed"|upper }}|{{ "MiXed"|lower }}|{{ "hELLO wORLD"|capitalize }}|{{ "hello big-world (x)"|title }})j"),
            "[a b]|[a]|MIXED|mixed|Hello world|Hello Big-World (X)");
  EXPECT_EQ(render(R"j({{ "aaa"|replace("a", "b") }}|{{ "aaa"|replace("a", "b", 2) }}|{{ "abc"|replace("", "-") }}|{{ "héllo"|length }}|{{ "abc"|count }}|{{ "abc"|first }}|{{ "abc"|last }}|{{ "abc"|reverse }}|{{ "ab"|list }})j"),
            "bbb|bba|-a-b-c-|5|3|a|c|cba|['a', 'b']");
  EXPECT_EQ(render(R"j({{ "a
b

c"|indent }}|{{ "a
b

c"|indent(2, true) }}|{{ "a
b

c"|indent(2, blank=true) }}|{{ "a
b"|indent("> ") }})j"),
            R"j(a
    b

    c|  a
  b

  c|a
  b
  
  c|a
> b)j");
  EXPECT_EQ(render(R"j([{{ "ab"|center(6) }}]|[{{ "ab"|center(7) }}]|{{ "Hello, big world_x 42!"|wordcount }}|{{ "<a href='x'>&</a>"|e }}|{{ "<b>"|escape }}|{{ "<b>"|safe }})j"),
            "[  ab  ]|[   ab  ]|4|&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;|&lt;b&gt;|<b>");
  EXPECT_EQ(render(R"j({{ "%s=%d (%.2f) %5s|%-5s| %x %%"|format("k", 7, 3.14159, "r", "l", 255) }}|{{ "%s and %s" % ("a", "b") }}|{{ "%r" % "q" }})j"),
            "k=7 (3.14)     r|l    | ff %|a and b|'q'");
}

TEST(JinjaNumberFilters, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ -3|abs }}|{{ -2.5|abs }}|{{ 2.5|round }}|{{ 3.5|round }}|{{ 2.675|round(2) }}|{{ 3.14159|round(3) }}|{{ 2.1|round(0, "ceil") }}|{{ 2.9|round(0, "floor") }}|{{ 7|round }}|{{ 15|round(-1) }})j"),
            "3|2.5|2.0|4.0|2.67|3.142|3.0|2.0|7|20");
  EXPECT_EQ(render(R"j({{ "42"|int + 1 }}|{{ " 7 "|int }}|{{ "3.9"|int }}|{{ "x"|int }}|{{ "x"|int(5) }}|{{ "0x1A"|int(0, 16) }}|{{ "0b101"|int(base=0) }}|{{ 3.9|int }}|{{ true|int }}|{{ none|int }})j"),
            "43|7|3|0|5|26|5|3|1|0");
  EXPECT_EQ(render(R"j({{ "2.5"|float }}|{{ " 1e2 "|float }}|{{ "x"|float }}|{{ "x"|float(1.5) }}|{{ 3|float }}|{{ "inf"|float }}|{{ "nan"|float }})j"),
            "2.5|100.0|0.0|1.5|3.0|inf|nan");
  EXPECT_EQ(render(R"j({{ 5|string ~ "!" }}|{{ none|string }}|{{ [1, "a"]|string }}|{{ 1.0|string }})j"),
            "5!|None|[1, 'a']|1.0");
}

TEST(JinjaSequenceFilters, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ l|length }}|{{ l|count }}|{{ l|first }}|{{ l|last }}|{{ l|join }}|{{ l|join(", ") }}|{{ l|sort }}|{{ l|sort(reverse=true) }}|{{ l|reverse|list }}|{{ l|list }}|{{ l|unique|list }}|{{ l|min }}|{{ l|max }}|{{ l|sum }}|{{ l|sum(start=10) }})j", R"j({"l": [3, 1, 2, 3]})j"),
            "4|4|3|3|3123|3, 1, 2, 3|[1, 2, 3, 3]|[3, 3, 2, 1]|[3, 2, 1, 3]|[3, 1, 2, 3]|[3, 1, 2]|1|3|9|19");
  EXPECT_EQ(render(R"j({{ w|sort }}|{{ w|sort(case_sensitive=true) }}|{{ w|unique|list }}|{{ w|unique(case_sensitive=true)|list }}|{{ w|max }}|{{ w|min }})j", R"j({"w": ["b", "A", "a", "C"]})j"),
            "['A', 'a', 'b', 'C']|['A', 'C', 'a', 'b']|['b', 'A', 'C']|['b', 'A', 'a', 'C']|C|A");
  EXPECT_EQ(render(R"j({{ []|first }}|{{ []|last }}|{{ []|join(",") }}|{{ []|max }}|{{ missing|length }}|{{ missing|list }}|{{ missing|join }})j"),
            "||||0|[]|");
  EXPECT_EQ(render(R"j({{ people|map(attribute="name")|join(",") }}|{{ people|sort(attribute="age")|map(attribute="name")|list }}|{{ people|map(attribute="zip", default="?")|list }}|{{ people|sum(attribute="age") }}|{{ people|selectattr("admin")|map(attribute="name")|list }}|{{ people|rejectattr("admin")|map(attribute="name")|list }}|{{ people|selectattr("age", "gt", 30)|map(attribute="name")|first }}|{{ people|join(", ", attribute="name") }}|{{ people|unique(attribute="admin")|map(attribute="name")|list }})j", R"j({"people": [{"name": "Ann", "age": 41, "admin": true}, {"name": "Bob", "age": 25, "admin": false}, {"name": "Cy", "age": 33}]})j"),
            "Ann,Bob,Cy|['Bob', 'Cy', 'Ann']|['?', '?', '?']|99|['Ann']|['Bob', 'Cy']|Ann|Ann, Bob, Cy|['Ann', 'Bob', 'Cy']");
  EXPECT_EQ(render(R"j({{ l|map("string")|map("upper")|join }}|{{ ["a", "b"]|map("upper")|list }}|{{ [" a ", "b "]|map("trim")|list }}|{{ [1.5, 2.5]|map("round")|list }}|{{ ["1", "2"]|map("int")|sum }})j", R"j({"l": ["x", "y"]})j"),
            "XY|['A', 'B']|['a', 'b']|[2.0, 2.0]|3");
  EXPECT_EQ(render(R"j({{ messages|selectattr("role", "equalto", "user")|list|length }}|{{ messages|map(attribute="role")|join("/") }}|{{ messages|rejectattr("role", "in", ["system"])|map(attribute="content")|list }})j", kMessages),
            "1|system/user/assistant|['hi', 'yo']");
  EXPECT_EQ(render(R"j({{ l|batch(2)|list }}|{{ l|batch(3, "-")|list }})j", R"j({"l": [1, 2, 3, 4, 5]})j"),
            "[[1, 2], [3, 4], [5]]|[[1, 2, 3], [4, 5, '-']]");
}

TEST(JinjaMappingFilters, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ d|items|list }}|{{ d|dictsort }}|{{ d|dictsort(reverse=true) }}|{{ d|dictsort(by="value") }}|{{ d|dictsort(case_sensitive=true) }}|{{ d|length }}|{{ d|list }}|{{ d|first }}|{{ missing|items|list }})j", R"j({"d": {"b": 1, "a": 3, "C": 2}})j"),
            "[('b', 1), ('a', 3), ('C', 2)]|[('a', 3), ('b', 1), ('C', 2)]|[('C', 2), ('b', 1), ('a', 3)]|[('b', 1), ('C', 2), ('a', 3)]|[('C', 2), ('a', 3), ('b', 1)]|3|['b', 'a', 'C']|b|[]");
  EXPECT_EQ(render(R"j({{ d|attr("items") is callable }}|{{ d|attr("b") }}|{{ d|default("x") }}|{{ missing|default("x") }}|{{ missing|d("x") }}|{{ ""|default("x") }}|{{ ""|default("x", true) }}|{{ none|default("x") }}|{{ none|default("x", boolean=true) }}|{{ 0|d("zero", true) }})j", R"j({"d": {"b": 1}})j"),
            "True||{'b': 1}|x|x||x|None|x|zero");
}

TEST(JinjaToJson, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ d|tojson }})j", R"j({"d": {"b": [1, 2.0, "é\u00fc\n\t\"q\"", null, true], "a": {"nested": {}}, "c": []}})j"),
            "{\"b\": [1, 2.0, \"éü\\n\\t\\\"q\\\"\", null, true], \"a\": {\"nested\": {}}, \"c\": []}");
  EXPECT_EQ(render(R"j({{ d|tojson(indent=2) }})j", R"j({"d": {"b": [1, 2.0, {"x": null}], "a": {}, "c": []}})j"),
            R"j({
  "b": [
    1,
    2.0,
    {
      "x": null
    }
  ],
  "a": {},
  "c": []
})j");
  EXPECT_EQ(render(R"j({{ d|tojson(indent=4) }}|{{ d|tojson(sort_keys=true) }}|{{ d|tojson(separators=(",", ":")) }})j", R"j({"d": {"z": 1, "a": [1, 2]}})j"),
            R"j({
    "z": 1,
    "a": [
        1,
        2
    ]
}|{"a": [1, 2], "z": 1}|{"z":1,"a":[1,2]})j");
  EXPECT_EQ(render(R"j({{ "<script>&'"|tojson }}|{{ "é✓😀"|tojson }}|{{ "é✓😀"|tojson(ensure_ascii=true) }}|{{ 1.5|tojson }}|{{ 10|tojson }}|{{ none|tojson }}|{{ (1, 2)|tojson }}|{{ "\u0001\u001f"|tojson }})j"),
            "\"<script>&'\"|\"é✓😀\"|\"\\u00e9\\u2713\\ud83d\\ude00\"|1.5|10|null|[1, 2]|\"\\u0001\\u001f\"");
  EXPECT_EQ(render(R"j({{ messages[0]|tojson }}|{{ {1: "int key", none: "none key", true: "bool key"}|tojson }})j", kMessages),
            "{\"role\": \"system\", \"content\": \"sys\"}|{\"1\": \"bool key\", \"null\": \"none key\"}");
}

TEST(JinjaStringMethods, MatchesJinja2) {
  EXPECT_EQ(render(R"j([{{ "  a  ".strip() }}][{{ "  a  ".lstrip() }}][{{ "  a  ".rstrip() }}][{{ "xya-yx".strip("xy") }}][{{ "

x
".lstrip("
") }}][{{ "x

".rstrip("
") }}])j"),
            R"j([a][a  ][  a][a-][x
][x])j");
  EXPECT_EQ(render(R"j({{ "a,b,,c".split(",") }}|{{ "  a  b ".split() }}|{{ "a b c".split(" ", 1) }}|{{ "a b c".split(none, 1) }}|{{ "a-b-c".rsplit("-", 1) }}|{{ "a
b
c".splitlines() }}|{{ "x</think>y".split("</think>")[-1] }})j"),
            "['a', 'b', '', 'c']|['a', 'b']|['a', 'b c']|['a', 'b c']|['a-b', 'c']|['a', 'b', 'c']|y");
  EXPECT_EQ(render(R"j({{ "Hello".startswith("He") }}{{ "Hello".startswith(("x", "H")) }}{{ "Hello".endswith("lo") }}{{ "Hello".startswith("l", 2) }}{{ "Hello".endswith("x") }})j"),
            "TrueTrueTrueTrueFalse");
  EXPECT_EQ(render(R"j({{ "MiXed".upper() }}|{{ "MiXed".lower() }}|{{ "hello wORLD 1st they're".title() }}|{{ "hELLO".capitalize() }}|{{ "aXbX".replace("X", "-") }}|{{ "aXbX".replace("X", "-", 1) }})j"),
            "MIXED|mixed|Hello World 1St They'Re|Hello|a-b-|a-bX");
  EXPECT_EQ(render(R"j({{ "hello".find("l") }}|{{ "hello".find("z") }}|{{ "hello".rfind("l") }}|{{ "héllo".find("l") }}|{{ "hello".count("l") }}|{{ "hello".index("e") }})j"),
            "2|-1|3|2|2|1");
  EXPECT_EQ(render(R"j({{ "{} + {} = {total}".format(1, 2, total=3) }}|{{ "{0}{1}{0}".format("a", "b") }}|{{ "{{literal}}".format() }}|{{ ", ".join(["a", "b"]) }}|{{ "".join(l) }})j", R"j({"l": ["x", "y"]})j"),
            "1 + 2 = 3|aba|{literal}|a, b|xy");
  EXPECT_EQ(render(R"j({{ "abc".isalpha() }}{{ "123".isdigit() }}{{ " 	".isspace() }}{{ "ab1".isalnum() }}{{ "ABC".isupper() }}{{ "abc".islower() }}|{{ "pre_x".removeprefix("pre_") }}|{{ "x.txt".removesuffix(".txt") }}|{{ "ab".ljust(4) }}|{{ "ab".rjust(4, "*") }}|{{ "ab".center(6, "-") }})j"),
            "TrueTrueTrueTrueTrueTrue|x|x|ab  |**ab|--ab--");
}

TEST(JinjaDictMethods, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ d.items()|list }}|{{ d.keys()|list }}|{{ d.values()|list }}|{{ d.get("a") }}|{{ d.get("z") }}|{{ d.get("z", "dflt") }}|{{ d.copy() }})j", R"j({"d": {"b": 1, "a": 2}})j"),
            "[('b', 1), ('a', 2)]|['b', 'a']|[1, 2]|2|None|dflt|{'b': 1, 'a': 2}");
  EXPECT_EQ(render(R"j({{ message.get("tool_calls") is none }}|{% if message.get("content") %}has content{% endif %})j", R"j({"message": {"role": "user", "content": "x"}})j"),
            "True|has content");
}

TEST(JinjaListMethods, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ l.index(2) }}|{{ l.count(1) }})j", R"j({"l": [1, 2, 1]})j"),
            "1|2");
}

TEST(JinjaGlobals, MatchesJinja2) {
  EXPECT_EQ(render(R"j({{ range(4)|list }}|{{ range(2, 8, 3)|list }}|{{ range(5, 0, -2)|list }}|{{ range(0)|list }}|{{ range(3)|length }}|{% for i in range(3) %}{{ i }}{% endfor %})j"),
            "[0, 1, 2, 3]|[2, 5]|[5, 3, 1]|[]|3|012");
  EXPECT_EQ(render(R"j({% set ns = namespace(a=1) %}{{ ns.a }}|{{ dict(x=1, y="z") }}|{{ dict(x=1).x }})j"),
            "1|{'x': 1, 'y': 'z'}|1");
}
