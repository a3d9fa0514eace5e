"""Answer extraction and grading: the only signal GRPO learns from, and the
judge of every evaluation.

reward(completion, gold, strict=False) -> 1.0 / 0.0
  strict=False  training reward: lenient_answer, the author's chain (boxed, else "answer is X" /
                "answer: X", else the math expression that ends last)
  strict=True   evaluation: extract_boxed, the author's strict extraction; no box = wrong.
Both extractions are the author's, rule for rule. Equivalence is ours (the
author's math-verify is not): string normalisation plus a small exact evaluator
(LaTeX arithmetic over fractions.Fraction, expressions with variables compared
at random rational points). No sympy, no eval; never raises.
"""
import math
import random
import re
from fractions import Fraction

# longer answers are compared as strings only (keeps every call well under 1 ms)
MAX_PARSE_CHARS = 400
MAX_ANSWER_CHARS = 5_000     # longer "answers" are compared verbatim (adversarial inputs stay fast)
# exact powers bigger than this are refused instead of computed (2^{99999999999})
MAX_POW_BITS = 20_000


# ----------------------------------------------------------------------------- extraction
# The author's two extractions (src/grpo/rewards.py), rule for rule, quirks included.
_BRACE = re.compile(r"[{}]")                   # `\{` and `\}` count as braces too
_BARE = re.compile(r"[ \t]+([^ \t.,$\n)]*)")    # `\boxed 5`: one token


def extract_boxed(text):
    """The strict extraction: scan `\\boxed` left to right; `\\boxed{` takes its
    brace-balanced content (stripped, "" for `\\boxed{}`), `\\boxed` +
    spaces/tabs the next token, anything else is skipped (`\\boxed5`,
    `\\fbox{5}`). The last box wins; None if none."""
    found, at = None, 0
    while isinstance(text, str) and (at := text.find("\\boxed", at)) >= 0:
        at += 6
        bare = _BARE.match(text, at)
        if text.startswith("{", at):
            depth = 0
            for m in _BRACE.finditer(text, at):
                depth += 1 if m[0] == "{" else -1
                if depth == 0:
                    break
            else:
                # unclosed (a completion cut inside its box):
                # the scan ends, the box before wins
                return found
            found, at = text[at + 1:m.start()].strip(), m.end()
        elif bare:
            found, at = bare[1].strip() or found, bare.end()
        else:
            at += 1           # the author's scan resumes a character further on (a quirk)
    return found


# X stops at the first `.`: "The answer is 0.6." gives 0 (what the paper trained on)
_ANSWER_IS = re.compile(r"answer\s+is[:\s]+\$?([^\n.$]+?)\$?(?=[.\n]|$)", re.I)
_ANSWER_EQ = re.compile(r"\banswer\s*[=:]\s*\$?([^\n.$]+?)\$?(?=[.\n]|$)", re.I)
# math candidates: (pattern, keep the value after the last `=`), in the author's
# order
_MATH = [(re.compile(r"\$([^$]*=[^$]+)\$"), True),                    # $x = 5$
         (re.compile(r"\\\(([^)]*=[^)]+)\\\)"), True),                # \(x = 5\)
         (re.compile(r"\$([^$\n]+)\$"), False),                        # $5$
         (re.compile(r"\\\(([^)]+)\\\)"), False),                     # \(5\)
         (re.compile(r"^[-\s]*[a-zA-Z]\s*=\s*(.+?)\s*$", re.M), False)]   # a line `v = X`


def lenient_answer(text):
    """The training reward's extraction (the author's chain): closed code fences
    deleted; then the strict extraction; else the LAST "answer is X" (only if
    none, the last "answer: X" / "answer = X"), a leading `v =` stripped; else
    the math candidate that ENDS last (a tie: the later kind above); else None."""
    if not isinstance(text, str):
        return None
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    said = _ANSWER_IS.findall(text) or _ANSWER_EQ.findall(text)
    if said:
        var = re.fullmatch(r"[a-zA-Z]\s*=\s*(.+)", said[-1].strip())
        return (var[1] if var else said[-1]).strip()
    ends = [(m.end(), m[1].rsplit("=", 1)[-1] if after else m[1])
            for pattern, after in _MATH for m in pattern.finditer(text)]
    return sorted(ends, key=lambda e: e[0])[-1][1].strip() if ends else None


# ----------------------------------------------------------------------------- normalisation
_UNICODE = {"−": "-",
            "–": "-",
            "√": "\\sqrt",
            "π": "\\pi",
            "∞": "\\infty",
            "°": "^\\circ",
            "×": "\\times",
            "·": "\\cdot",
            "÷": "\\div",
            "±": "\\pm",
            "≤": "\\le",
            "≥": "\\ge",
            "∪": "\\cup",
            "\u00a0": " ",
            "{,}": "",              # 1{,}000
            "∅": "\\emptyset",
            "\\varnothing": "\\emptyset"}
_UNITS = (r"(?:square\s+|sq\.?\s+|cubic\s+)?(?:units?|cm|mm|km|inches|inch|feet|foot|ft|yards?|"
          r"meters?|centimeters?|degrees?|dollars?|cents?|hours?|hrs?|minutes?|mins?|seconds?|"
          r"days?|weeks?|years?|miles?|mph|pounds?|lbs?|ounces?|oz|grams?|kg|liters?|people|"
          r"students|ways)")
# LaTeX that says nothing about the value, rewritten in this order
_REWRITES = [(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", ""),          # \left( -> (
             # spacing: \, \quad ~
             (r"(?<!\\)\\(?:displaystyle|textstyle|quad|qquad|!|,|;|:| )|~", " "),
             (r"\\[dtc](frac|binom)", r"\\\1"),                   # \dfrac -> \frac
             (r"\{[bB]?matrix\}", "{pmatrix}"),
             (r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", ""),      # degrees
             (r"\\?%|\\\$|\$", ""),                                 # % and $
             # 3, 5, and 7 -> 3,5,7
             (r",?\s*\\(?:text|mbox)\{\s*(?:and|or)\s*\}\s*|,?\s+(?:and|or)\s+", ",")]
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf|mathit|operatorname)"
                       r"\s*\{([^{}]*)\}(\^\s*\{?[23]\}?)?")


def normalize(answer):
    """Canonical string form of an answer (LaTeX spacing, fractions, units,
    degrees, separators)."""
    if not isinstance(answer, str):
        return ""
    s = answer.strip()
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    inner = extract_boxed(s)
    if inner is not None:
        s = inner
    for pattern, replacement in _REWRITES:
        s = re.sub(pattern, replacement, s)
    # words in \text{} next to a number are units: "5.4 \text{ cents}",
    # "864 \mbox{ inches}^2"; alone, an answer
    has_number = bool(re.search(r"\d", _TEXT_CMD.sub("", s)))
    s = _TEXT_CMD.sub(lambda m: "" if has_number and re.fullmatch(r"[a-zA-Z\s.]*", m[1])
                      else m[1] + (m[2] or ""), s)
    s = re.sub(r"(?<=[\d}])\s*" + _UNITS + r"\s*(?:\^\s*\{?[23]\}?)?\s*$", "", s)
    s = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])|\s+",
               lambda m: m[1] + " " if m[1] else "", s)  # \cos x
    s = re.sub(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)\\in", "", s)                 # "x \in [-2,7]"
    # thousands separators: the whole answer (-1,000.5) or in braces (\frac{1}{5,525})
    s = re.sub(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$|(?<=\{)\d{1,3}(?:,\d{3})+(?=\})",
               lambda m: m[0].replace(",", ""), s)
    s = s.rstrip(".")
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)                                 # 52_{8} -> 52_8
    s = re.sub(r"(?<![\d.^_{])(\d+)\\frac(?:\{(\d{1,12})\}|(\d))(?:\{(\d{1,12})\}|(\d))",
               lambda m: m[0] if int(m[2] or m[3]) >= int(m[4] or m[5])
               else f"({m[1]}+\\frac{{{m[2] or m[3]}}}{{{m[4] or m[5]}}})", s)  # 2\frac13
    # "\\frac23 \\approx 0.67", "x \\approx 0.67"
    parts = [x for x in s.split("\\approx") if x] or [""]
    return _interval(parts[1] if len(parts) > 1 and re.fullmatch(r"[a-zA-Z]",
            parts[0]) else parts[0])


def _interval(s):
    """Inequalities as intervals: x\\le3 -> (-\\infty,3], x>2 -> (2,\\infty),
    1<x\\le3 -> (1,3]."""
    m = re.fullmatch(r"(?:([^<>]+?)(<|\\leq?))? ?[a-zA-Z](<|>|\\leq?|\\geq?)([^<>]+)", s)
    if not m:
        return s
    if m[3] in (">", "\\ge", "\\geq"):
        if m[1]:                   # a < x > b is no interval
            return s
        return ("(" if m[3] == ">" else "[") + m[4] + ",\\infty)"
    low = (("(" if m[2] == "<" else "[") + m[1]) if m[1] else "(-\\infty"
    return low + "," + m[4] + (")" if m[3] == "<" else "]")


# -------------------------------------------------------------------------- a small exact evaluator
# what it cannot evaluate raises ValueError (as math's own functions do),
# ZeroDivisionError or OverflowError: _values_equal passes over that point
_TOKEN = re.compile(r"\s*(\d+(?:\.\d*)?(?:[eE][-+]?\d+(?![\d.]))?|\.\d+|\\[a-zA-Z]+|\\[{}|]"
                    r"|[a-zA-Z]|[-+*/^(){}\[\]!_=,|'])")
_FUNCS = {"\\sin": math.sin,
          "\\cos": math.cos,
          "\\tan": math.tan,
          "\\cot": lambda x: 1 / math.tan(x),
          "\\sec": lambda x: 1 / math.cos(x),
          "\\csc": lambda x: 1 / math.sin(x),
          "\\ln": math.log,
          "\\log": math.log,
          "\\exp": math.exp,
          "\\arcsin": math.asin,
          "\\arccos": math.acos,
          "\\arctan": math.atan}
# the commands that are no variables
_KNOWN = set(_FUNCS) | {"\\frac", "\\sqrt", "\\pi", "\\infty", "\\cdot", "\\times", "\\div",
                        "\\pm", "\\mp", "\\binom"}


def _tokens(s):
    """s's tokens, or None if a character is none of them (findall skipped it)."""
    out = _TOKEN.findall(s)
    return out if "".join(out) == re.sub(r"\s", "", s) else None


def _variables(tokens):
    """Single letters and unknown commands (\\theta) are variables."""
    return {t for t in tokens if re.fullmatch(r"\\?[a-zA-Z]+", t) and t not in _KNOWN}


def _iroot(k, n):
    """Exact integer n-th root of k >= 0, or None."""
    r = round(k ** (1.0 / n)) if k < 2 ** 1000 else -9  # too big for a float: no exact root found
    return next((c for c in (r - 1, r, r + 1) if c >= 0 and c ** n == k), None)


def _root(x, n):
    """n-th root: an exact Fraction when there is one (\\sqrt{4} = 2), else a
    float (\\sqrt{12})."""
    if x < 0:
        if n % 2 == 0:
            raise ValueError("even root of a negative")
        return -_root(-x, n)
    if isinstance(x, Fraction):
        num = _iroot(x.numerator, n)
        den = _iroot(x.denominator, n)
        if None not in (num, den):
            return Fraction(num, den)
    return float(x) ** (1.0 / n)


def _whole(x, low, high):
    """x as an int, if it is a whole number in [low, high] (a factorial's, a
    root's index)."""
    if not (isinstance(x, Fraction) and x.denominator == 1 and low <= x <= high):
        raise ValueError(f"not a whole number in [{low}, {high}]")
    return int(x)


def _power(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        if b.denominator == 1:
            bits = max(a.numerator.bit_length(), a.denominator.bit_length())
            if a not in (0, 1, -1) and bits * abs(b.numerator) > MAX_POW_BITS:
                # a guard, not a computation of 2^{99999999999}
                raise ValueError("power too large")
            return a ** b.numerator
        if b.denominator <= 12:
            r = _root(a, b.denominator)
            if isinstance(r, Fraction):
                return _power(r, Fraction(b.numerator))
    r = float(a) ** float(b)
    if isinstance(r, complex) or math.isnan(r):
        raise ValueError("complex power")
    return r


def _evaluate(tokens, env):
    """The value of LaTeX arithmetic at the point `env` ({variable: value}), by
    recursive descent: + - * / ^ ! \\frac \\sqrt \\binom, implicit products,
    functions. Each rule of the grammar is a function below, reading `todo`."""
    todo = tokens[::-1]                 # the tokens not read yet, the next one last
    env = {"\\pi": math.pi, "\\infty": math.inf, **env}     # the constants, the point
    depth = 0                           # expressions open

    def peek():
        return todo[-1] if todo else None

    def take(want=None):
        tok = peek()
        if tok is None or (want is not None and tok != want):
            raise ValueError(f"expected {want}, got {tok}")
        return todo.pop()

    def expr():
        nonlocal depth
        depth += 1
        if depth > 60:
            raise ValueError("too deep")
        v = term()
        while peek() in ("+", "-"):
            v = v + term() if take() == "+" else v - term()
        depth -= 1
        return v

    def term():
        v = signed(power)
        while True:
            tok = peek()
            if tok in ("*", "\\cdot", "\\times"):
                take()
                v = v * signed(power)
            elif tok in ("/", "\\div"):
                take()
                v = v / signed(power)    # by zero: ZeroDivisionError, caught too
            elif (tok is not None and (tok[0].isalnum() or tok[0] in "([{\\") and
                  tok not in ("\\pm", "\\mp", "\\}", "\\|")):
                v = v * power()          # implicit product: 2\sqrt3, 3xy
            else:
                return v

    def signed(read):
        """read() after any signs: -x, --x, +x."""
        if peek() in ("-", "+"):
            return -signed(read) if take() == "-" else signed(read)
        return read()

    def power():
        """An atom, its factorials (3!!), then its exponent if any."""
        v = atom()
        while peek() == "!":
            take()
            v = Fraction(math.factorial(_whole(v, 0, 300)))
        if peek() == "^":
            take()
            v = _power(v, signed(arg))
        return v

    def arg():
        """One TeX argument: a {group} or one token, of a number its first digit
        alone: `\\frac12` reads 1 then 2, `x^23` is x^2 * 3."""
        tok = peek()
        if tok is not None and tok[0].isdigit() and len(tok) > 1:
            todo[-1] = tok[1:]
            return Fraction(int(tok[0]))
        return atom()

    def atom():
        tok = take()
        if tok[0].isdigit() or tok[0] == ".":
            return Fraction(tok)
        if tok in ("(", "[", "{"):
            v = expr()
            take({"(": ")", "[": "]", "{": "}"}[tok])
            return v
        if tok == "\\frac":
            return arg() / arg()        # left to right: numerator, denominator
        if tok == "\\sqrt":
            n = 2
            if peek() == "[":
                take()
                n = _whole(expr(), 2, 64)
                take("]")
            return _root(arg(), n)
        if tok == "\\binom":
            n = _whole(arg(), 0, 1000)
            return Fraction(math.comb(n, _whole(arg(), 0, 1000)))
        if tok in _FUNCS:
            exp = None
            if peek() == "^":
                take()
                exp = signed(arg)
            v = _FUNCS[tok](float(power()))
            return _power(v, exp) if exp is not None else v
        if tok in env:
            return env[tok]
        raise ValueError(f"unknown token {tok}")

    value = expr()
    if todo:
        raise ValueError(f"trailing {todo[-1]}")
    return value


def _close(a, b):
    exact = [x for x in (a, b) if isinstance(x, Fraction)]
    if len(exact) == 2:
        return a == b
    # exact vs inexact: only a simple rational can be an irrational's truth
    if exact and exact[0].denominator > 1000:
        return False
    # float(): OverflowError, caught by the caller; an infinity is close to itself alone
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _points(names):
    """Four points for `names`, the same four for the same names: each variable a
    random rational (2..60 over 1..7) plus 1/(113 + k), so no two points agree."""
    rng = random.Random(" ".join(sorted(names)))
    return [{v: Fraction(rng.randint(2, 60), rng.randint(1, 7)) + Fraction(1, 113 + k)
             for v in sorted(names)} for k in range(4)]


def _values_equal(a, b, ratio=False):
    """Same value (or with ratio=True, the same up to a non-zero factor:
    equations `lhs-rhs`)."""
    ta = _tokens(a)
    tb = _tokens(b)
    if ta is None or tb is None:
        return False
    if re.search(r"[a-zA-Z]{3,}", re.sub(r"\\[a-zA-Z]+", " ", f"{a} {b}")):
        return False                                          # words, not algebra
    names = _variables(ta) | _variables(tb)
    agree = 0                          # points where the two agree
    factor = None                      # ratio: (va, vb) at the first non-zero point
    ratio = ratio and bool(names)      # constant equations: equal, not proportional
    for env in (_points(names) if names else [{}]):
        try:
            va = _evaluate(ta, env)
            vb = _evaluate(tb, env)
            close = _close(va, vb)
        except (ZeroDivisionError, ValueError, OverflowError, TypeError):
            continue
        if ratio:  # equations: the two lhs-rhs proportional at every point
            if _close(va, 0) or _close(vb, 0):
                close = _close(va, 0) and _close(vb, 0)
            else:
                factor = factor or (va, vb)
                close = _close(va * factor[1], vb * factor[0])
        if not close:
            return False
        agree += 1
    return agree >= (2 if names else 1)


# -------------------------------------------------------- structure: lists, sets, tuples, intervals
def _split_top(s, sep=","):
    """Split at `sep` outside any bracket, brace, \\{ \\} or \\begin..\\end."""
    parts = [""]
    depth = 0
    for tok in re.findall(r"\\[{}]|\\begin|\\end|" + re.escape(sep) + "|.", s, re.S):
        if depth == 0 and tok == sep:
            parts.append("")
            continue
        if tok in ("\\{", "\\begin", "(", "[", "{"):
            depth += 1
        elif tok in ("\\}", "\\end", ")", "]", "}"):
            depth -= 1
        parts[-1] += tok
    return parts


def _wrapper(s):
    """('(', ']', inner) when s is one bracketed group like (3,4] or \\{1,2\\};
    else None."""
    if s.startswith("\\{") and s.endswith("\\}"):
        return "{", "}", s[2:-2]
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        depth = 0
        for c in s[:-1]:
            depth += c in "([{"
            depth -= c in ")]}"
            if depth == 0:            # closed before the end: (1,2)\cup(3,4)
                return None
        return s[0], s[-1], s[1:-1]
    return None


def _expand_pm(items):
    """1 \\pm \\sqrt2 -> 1+\\sqrt2, 1-\\sqrt2; more than 4 signs (2^k
    expansions) are left alone."""
    if sum(x.count("\\pm") + x.count("\\mp") for x in items) > 4:
        return items
    return [y for x in items for y in _signs(x)]


def _signs(x):
    """x with its first \\pm as + then as - (the first \\mp the other way), each
    expanded on."""
    if "\\pm" not in x and "\\mp" not in x:
        return [x]
    plus = x.replace("\\pm", "+", 1).replace("\\mp", "-", 1)
    minus = x.replace("\\pm", "-", 1).replace("\\mp", "+", 1)
    return _signs(plus) + _signs(minus)


def _strip_var(x):
    m = re.fullmatch(r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\w|\(\w\))?=([^=]+)", x)     # x=5, x_1=5, f(x)=5
    return m[1] if m else x


def _match_unordered(xs, ys, eq):
    left = list(ys)
    for x in xs:
        hit = next((k for k, y in enumerate(left) if eq(x, y)), None)
        if hit is None:
            return False
        left.pop(hit)
    return not left


def _equiv(p, g, depth=0):
    if p == g:
        return True
    if depth > 4:
        return False
    eq = lambda a, b: _equiv(a, b, depth + 1)               # parts compared one level down
    choice = re.fullmatch(r"\(?([A-Ea-e])\)?", g)
    if choice:
        pc = re.fullmatch(r"\(?([A-Ea-e])\)?|\(([A-Ea-e])\).*", p)
        return bool(pc) and (pc[1] or pc[2]).upper() == choice[1].upper()
    words = [not re.search(r"[\d\\^_=+*/(){}\[\],-]", x) for x in (p, g)]
    if any(words):  # a word answer (Evelyn, even, east) equals only a word answer
        return all(words) and re.sub(r"\W", "", p).lower() == re.sub(r"\W", "", g).lower()
    wp = _wrapper(p)
    wg = _wrapper(g)
    mats = [re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", x) for x in (p, g)]
    if any(mats):  # matrices entry by entry; a column vector may be written as a tuple
        rows = [[r.split("&") for r in m[1].split("\\\\") if r] if m else None for m in mats]
        if None not in rows and list(map(len, rows[0])) != list(map(len, rows[1])):
            return False                                    # two matrices of other shapes
        flat = [[c for row in r for c in row] if r else _split_top(w[2]) if w else None
                for r, w in zip(rows, (wp, wg))]           # entries, row by row
        return None not in flat and len(flat[0]) == len(flat[1]) and all(map(eq, *flat))
    up = _split_top(p, "\\cup")
    ug = _split_top(g, "\\cup")
    if len(ug) > 1 or len(up) > 1:
        return _match_unordered(up, ug, eq)
    ip = _split_top(wp[2] if wp else p)
    ig = _split_top(wg[2] if wg else g)
    if len(ig) > 1 or len(ip) > 1:
        ip = _expand_pm(list(map(_strip_var, ip)))
        ig = _expand_pm(list(map(_strip_var, ig)))
        if wg and wg[0] in "([":  # tuples and intervals keep order
            # (1,2] is not [1,2] nor 1,2; the point (2,3) may be 2,3
            brackets = wp[:2] if wp else ("(", ")")
            return brackets == wg[:2] and len(ip) == len(ig) and all(map(eq, ip, ig))
        return _match_unordered(ip, ig, eq)
    if "\\pm" in g or "\\pm" in p:
        return eq(",".join(_expand_pm([p])), ",".join(_expand_pm([g])))
    p = _strip_var(p)
    g = _strip_var(g)
    if p == g:
        return True
    if p.count("=") == 1 and g.count("=") == 1:  # equations: lhs - rhs up to a factor
        (pl, pr), (gl, gr) = p.split("="), g.split("=")
        return _values_equal(f"({pl})-({pr})", f"({gl})-({gr})", ratio=True)
    if "=" in p or "=" in g:
        return False
    base_p = re.fullmatch(r"(\w+)_\w+", p)
    base_g = re.fullmatch(r"(\w+)_\w+", g)
    if base_p and base_g:
        return False  # 52_8 vs 52_9: different numbers
    if base_p or base_g:  # 52 for 52_8: the digits are the answer
        return (base_p[1] if base_p else p) == (base_g[1] if base_g else g)
    return _values_equal(p, g)


def is_equiv(pred, gold):
    """True when the predicted answer string means the same as the gold answer
    string."""
    try:
        if pred is None or gold is None:
            return False
        if max(len(pred), len(gold)) > MAX_ANSWER_CHARS:
            return pred.strip() == gold.strip()  # no real answer is this long: don't normalise it
        p = normalize(pred)
        g = normalize(gold)
        if not (p and g):
            return False                   # nothing left to compare (blank, or units alone)
        return p == g or max(len(p), len(g)) <= MAX_PARSE_CHARS and _equiv(p, g)
    except Exception:  # a grader that raises would kill a 2,000-step run; wrong is the safe answer
        return False


def reward(completion, gold, strict=False):
    """1.0 if the completion's answer equals gold, else 0.0. strict: last
    \\boxed{} only (evaluation)."""
    try:
        pred = extract_boxed(completion) if strict else lenient_answer(completion)
        return float(is_equiv(pred, gold))
    except Exception:
        return 0.0
