"""Properties over generated inputs (hypothesis, derandomized: the same examples every run; sizes
capped, no time limit): the answer checker's, and the update's micro-batch packing. is_equiv and
reward catch every exception (a grader that raised would stop a 2,000-step run), so "never raises"
is checked on what that catch would hide: normalize, the extractors, and the comparison behind
is_equiv (reward._equiv)."""
import pytest

pytest.importorskip("hypothesis")  # in requirements-test.txt; without it, these tests skip
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import grpo  # noqa: E402
import reward  # noqa: E402
from reward import (  # noqa: E402
    MAX_PARSE_CHARS,
    extract_boxed,
    is_equiv,
    lenient_answer,
    normalize,
)

# pieces answers are made of: digits, operators, brackets, the LaTeX the normaliser and the
# evaluator read, words, unicode; answers of up to 12 pieces, or any text of up to 24 characters
PIECES = [*"0123456789+-*/^_{}()[]$=,.!|&<>% xyzabcABE", "\\", "\\\\", "\\frac", "\\dfrac",
          "\\sqrt", "\\sqrt[3]", "\\boxed{", "\\fbox", "\\pi", "\\pm", "\\mp", "\\infty", "\\cup",
          "\\in", "\\le", "\\geq", "\\approx", "\\circ", "^\\circ", "\\text{", "\\mbox{ cm}",
          "\\left(", "\\right)", "\\{", "\\}", "\\cdot", "\\times", "\\div", "\\sin", "\\log",
          "\\binom", "\\theta", "\\emptyset", "\\begin{pmatrix}", "\\end{pmatrix}", "\\!", "\\,",
          " and ", " or ", "units", "dollars", "1.5", "0.", "10", "e5", "1,000", "9!", "2^{",
          "∞", "√", "π", "−", "±", "°", "\u00a0", "```", "The answer is ", "answer: "]
ANSWERS = st.one_of(st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
                    st.text(max_size=24))
PROPERTY = settings(max_examples=400, deadline=None, derandomize=True, database=None)


@PROPERTY
@given(ANSWERS, ANSWERS)
def test_the_checker_never_raises(a, b):
    """Nothing in what is_equiv and reward guard raises on these inputs: normalize (also called
    unguarded by the majority vote), both extractors, and the comparison itself within the length
    is_equiv parses; and reward is its definition."""
    p, g = normalize(a), normalize(b)
    assert isinstance(p, str) and isinstance(g, str)
    for text in (a, a + b, "\\boxed{" + a + "}" + b):
        assert extract_boxed(text) is None or isinstance(extract_boxed(text), str)
        answer = lenient_answer(text)
        assert answer is None or isinstance(answer, str)
        assert reward.reward(text, b) == float(is_equiv(answer, b))
    if p and g and max(len(p), len(g)) <= MAX_PARSE_CHARS:
        assert reward._equiv(p, g) in (True, False)


@PROPERTY
@given(ANSWERS)
def test_every_answer_that_normalises_to_something_equals_itself(a):
    """An answer whose normal form is empty (blank, only units or spacing) equals nothing, not even
    itself; any other equals itself."""
    assert is_equiv(a, a) is bool(normalize(a))


@PROPERTY
@example("-x", "x")             # a word gold once took any prediction whose letters matched
@example("\\pi", "pi")
@example("(", "!")
@given(ANSWERS, ANSWERS)
def test_is_equiv_is_symmetric(a, b):
    assert is_equiv(a, b) == is_equiv(b, a)


@PROPERTY
@given(st.lists(st.integers(1, 60), min_size=1, max_size=30), st.integers(1, 300))
def test_micro_batches_cover_every_row_once_within_the_budget(lengths, budget):
    """rows x longest row <= budget (a row longer than the budget goes alone), each row in one
    micro-batch; rows that all fit together make one."""
    batches = grpo.pack(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget, (b, budget)
    if len(lengths) * max(lengths) <= budget:
        assert len(batches) == 1
