import json
import random

import pytest

import drafts
import extras.pool
import grpo
from drafts import build_prompt, build_variant, derangement, load_pool, select_draft
from extras.pool import length_matched


def d(strict, quasi, text="draft"):
    return {"text": text, "pred": None, "correct_strict": strict, "correct_quasi": quasi,
            "length": 3}


def synthetic_pool(n=40, seed=0):
    rng = random.Random(seed)
    pool = []
    for i in range(n):
        drafts_ = [d(s, s or rng.random() < 0.3, f"draft {k} for problem {i}")
                   for k, s in enumerate(rng.random() < 0.4 for _ in range(6))]
        pool.append({"id": f"p{i}", "problem": f"What is {i}+1?", "answer": str(i + 1),
                     "level": 3 + i % 3, "subject": ["Algebra", "Geometry"][i % 2],
                     "drafts": drafts_})
    return pool


def test_template_is_byte_exact():
    expected = ("Problem: What is 2+2?\n\nThinking: N/A\n\n"
                "The thinking section may contain errors. Solve the math problem step by step. "
                "Write your own correct solution. Put your final answer within \\boxed{}."
                "\n\nCorrect Solution:")
    assert build_prompt("What is 2+2?", None) == expected
    assert build_prompt("What is 2+2?", "  my draft \n") == expected.replace("N/A", "my draft")
    assert build_prompt("Q", None).endswith("Correct Solution:")
    assert drafts.DRAFT_MODEL_TEMPLATE.format(problem="Q") == (
        "Solve the following math problem step by step. Put your final answer within \\boxed{}.\n\n"
        "Problem:\nQ\n\nSolution:")


@pytest.mark.parametrize("n", [2, 3, 5, 17, 1000])
def test_derangement_is_a_permutation_without_fixed_points(n):
    for seed in range(20):
        perm = derangement(n, random.Random(seed))
        assert sorted(perm) == list(range(n))
        assert all(p != i for i, p in enumerate(perm))


def test_derangement_repairs_fixed_points_as_the_authors():
    """Worked by hand from random.Random(seed).shuffle's permutation: each fixed point i of the
    shuffle, in order, swaps with the first j != i such that perm[j] != i and perm[i] != j.
    n 5, seed 17: [0, 2, 1, 3, 4], fixed 0, 3, 4: 0<->1 [2, 0, 1, 3, 4], 3<->0 [3, 0, 1, 2, 4],
    4<->0 [4, 0, 1, 2, 3]. n 3, seed 5: [0, 1, 2]: 0<->1 [1, 0, 2]; 1, no longer fixed, still
    swaps: j 0 fails (perm[0] = 1), 1<->2 [1, 2, 0]; 2: j 0 fails (perm[2] = 0), j 1 fails
    (perm[1] = 2), no swap. (The neighbour swaps this replaced gave [2, 0, 1, 4, 3] and
    [2, 0, 1].)"""
    for n, seed, shuffled, expected in ((5, 17, [0, 2, 1, 3, 4], [4, 0, 1, 2, 3]),
                                        (3, 5, [0, 1, 2], [1, 2, 0])):
        perm = list(range(n))
        random.Random(seed).shuffle(perm)
        assert perm == shuffled
        assert derangement(n, random.Random(seed)) == expected


def test_derangement_rejects_one_problem():
    with pytest.raises(ValueError):
        derangement(1, random.Random(0))


def test_chains_pick_the_right_tier():
    rng = random.Random(0)
    mixed = [d(True, True), d(False, True), d(False, False)]
    assert select_draft(mixed, False, rng) == (2, 1)                      # quasi-wrong first
    assert select_draft(mixed, True, rng) == (0, 1)                       # strict-right first
    right_no_box = [d(True, True), d(False, True)]
    assert select_draft(right_no_box, False, rng) == (1, 2)               # wrong chain tier 2
    all_right = [d(True, True), d(True, True)]
    assert select_draft(all_right, False, rng)[1] == 3  # wrong chain falls to "any"
    all_wrong = [d(False, False)] * 3
    assert select_draft(all_wrong, True, rng)[1] == 3  # correct chain falls to "any"
    quasi_only = [d(False, False), d(False, True)]
    assert select_draft(quasi_only, True, rng) == (1, 2)                  # correct chain tier 2


def test_variants_share_selection_and_mismatch_moves_it():
    pool = synthetic_pool()
    for kind in ("wrong", "correct"):
        matched = build_variant(pool, f"matched-{kind}", seed=3)
        mismatched = build_variant(pool, f"mismatched-{kind}", seed=3)
        by_id = {r["id"]: r for r in matched}
        for r in matched:
            assert r["draft_source"] == r["id"]
        sources = [r["draft_source"] for r in mismatched]
        assert sorted(sources) == sorted(by_id)  # every selected draft shown once
        for r in mismatched:
            assert r["draft_source"] != r["id"]  # no problem keeps its own draft
            src = by_id[r["draft_source"]]
            shown = (r["draft"], r["draft_tier"], r["draft_index"])
            assert shown == (src["draft"], src["draft_tier"], src["draft_index"])
            assert r["problem"] == f"What is {r['id'][1:]}+1?"  # problem and answer stay
    for r in build_variant(pool, "matched-wrong", seed=3):
        assert r["draft_tier"] != 1 or not r["draft_correct_quasi"]
    no_draft = build_variant(pool, "no-draft")
    assert all(r["draft"] is None and r["draft_source"] is None for r in no_draft)


def test_seeds():
    pool = synthetic_pool()
    a = build_variant(pool, "mismatched-wrong", seed=0)
    assert a == build_variant(pool, "mismatched-wrong", seed=0)
    b = build_variant(pool, "mismatched-wrong", seed=1)
    assert [r["draft_source"] for r in a] != [r["draft_source"] for r in b]


def test_unknown_variant_and_empty_drafts_are_clear_errors():
    with pytest.raises(ValueError, match="mismatched-wrogn"):
        build_variant(synthetic_pool(), "mismatched-wrogn")
    pool = synthetic_pool()
    pool[3]["drafts"] = []
    with pytest.raises(ValueError, match=r"without drafts, e.g. \['p3'\]"):
        build_variant(pool, "matched-wrong")


class CharTokenizer:
    """One token per character (+ BOS), enough to pin the truncation rule."""
    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_truncation_cuts_only_the_draft():
    tok = CharTokenizer()
    problem, draft = "P" * 50, "D" * 500
    full = build_prompt(problem, draft)
    assert build_prompt(problem, draft, tok, max_prompt_tokens=len(full) + 1) == full
    cut = build_prompt(problem, draft, tok, max_prompt_tokens=300)
    assert len(tok(cut)["input_ids"]) <= 300
    assert cut.startswith("Problem: " + problem + "\n\nThinking: DDD")
    assert cut == build_prompt(problem, draft[:cut.count("D")])  # the beginning is kept
    frame = len(tok(build_prompt(problem, ""))["input_ids"])
    no_room = build_prompt(problem, draft, tok, max_prompt_tokens=frame - 5)
    assert no_room == build_prompt(problem, None)
    long_problem = "Q" * 400
    too_long = build_prompt(long_problem, draft, tok, max_prompt_tokens=300)
    assert too_long == build_prompt(long_problem, None)


def test_bad_pool_lines_name_the_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    good = json.dumps(synthetic_pool(1)[0])
    path.write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"pool.jsonl:2"):
        load_pool(str(path))
    empty = dict(synthetic_pool(1)[0], drafts=[])
    path.write_text(good + "\n" + json.dumps(empty) + "\n")
    with pytest.raises(ValueError, match=r"pool.jsonl:2: problem p0 has no drafts"):
        load_pool(str(path))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_pool(str(tmp_path / "nope.jsonl"))


def test_generate_grades_and_resumes_without_duplicates(tmp_path):
    data = tmp_path / "problems.jsonl"
    with open(data, "w") as f:
        for i in range(5):
            row = {"id": f"q{i}", "problem": f"What is {i}?", "answer": str(i), "level": 4}
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"id": "easy", "problem": "1?", "answer": "1", "level": 1}) + "\n")
    out = tmp_path / "pool.jsonl"
    args = ["generate", "--model", "tiny", "--data", str(data), "--out", str(out),
            "--num-drafts", "3", "--max-new-tokens", "8", "--batch-size", "6"]
    drafts.main(args + ["--limit", "2"])
    first = out.read_text().splitlines()
    with open(out, "a") as f:
        f.write('{"id": "q2", "problem": "torn')                          # a crash mid-write
    drafts.main(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # level 1 filtered, no duplicates
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3", "q4"]
    assert out.read_text().splitlines()[:2] == first                      # done problems untouched
    for r in rows:
        assert len(r["drafts"]) == 3
        for dr in r["drafts"]:
            assert set(dr) == {"text", "pred", "correct_strict", "correct_quasi", "length"}
            assert 0 < dr["length"] <= 8
    assert len(load_pool(str(out))) == 5
    whole = tmp_path / "whole.jsonl"
    drafts.main(["generate", "--model", "tiny", "--data", str(data), "--out", str(whole),
                 "--num-drafts", "3", "--max-new-tokens", "8", "--batch-size", "6"])
    assert whole.read_text() == out.read_text()  # resumed == uninterrupted, byte for byte


# the rows the author's build_datasets.py and build_mismatch.py (seed 0) make of author_pool.json,
# in its records' order and with --canonical-order author_order.jsonl: [unique_id, the shown
# draft's problem (mismatched_from), its tier (draft_priority), the draft in the prompt]. Worked
# out by running the author's scripts outside this repository.
AUTHOR = json.load(open("tests/data/author_variants.json", encoding="utf-8"))


@pytest.mark.parametrize("order", ["records", "order"])
def test_the_authors_pool_as_released_gives_the_authors_variants(tmp_path, order):
    """tests/data/author_pool.json: a pool in the author's released layout ({"meta", "records"},
    `samples`, "Level 3"; subjects algebra, geometry and number_theory; splits train, test and
    math500; levels 1-5 and "Level ?"; an empty gold answer; a test problem numbered like a
    MATH-500 id; mixed labels), imported and trained on through grpo.load_problems with its
    default --exclude data/math500.jsonl."""
    pool = tmp_path / "pool.jsonl"
    flags = ["--order", "tests/data/author_order.jsonl"] if order == "order" else []
    extras.pool.main(["import", "--src", "tests/data/author_pool.json", "--out", str(pool), *flags])
    records = json.load(open("tests/data/author_pool.json"))["records"]
    rows = load_pool(str(pool))
    if order == "records":
        assert [r["id"] for r in rows] == [r["unique_id"] for r in records]     # records' order
        assert {r["level"] for r in rows} == {1, 2, 3, 4, 5, None}
    for variant, expected in AUTHOR[order].items():
        args = grpo.parse_args(["--variant", variant, "--drafts", str(pool)])
        assert [[r["id"], r["draft_source"], r.get("draft_tier"), r["draft"]]
                for r in grpo.load_problems(args)] == expected
    assert len(expected) == 21 and ["train/number_theory/4.json", ""] in [
        [r["unique_id"], r["answer"]] for r in records]          # an empty gold, trained on
    # --exclude matches problems by text: train/algebra/2.json's goes; an id is not a match
    exclude = tmp_path / "exclude.jsonl"
    exclude.write_text('{"id": "x", "problem": "Problem 2: what is 12?", "answer": "1"}\n'
                       '{"id": "test/algebra/1004.json", "problem": "other", "answer": "1"}\n')
    kept = grpo.load_problems(grpo.parse_args(["--variant", "no-draft", "--drafts", str(pool),
                                               "--exclude", str(exclude)]))
    assert [r["id"] for r in kept] == [r[0] for r in expected if r[0] != "train/algebra/2.json"]
    bad = tmp_path / "order.jsonl"
    bad.write_text('{"problem": "Problem 1: what is 11?"}\n{"problem": "not in the pool"}\n')
    with pytest.raises(ValueError, match="order.jsonl:2: a problem the pool lacks"):
        extras.pool.main(["import", "--src", "tests/data/author_pool.json", "--out", str(pool),
                     "--order", str(bad)])


def test_length_matched_control_equalises_lengths_and_keeps_pairing():
    pool = synthetic_pool()
    for i, p in enumerate(pool):                       # drafts of very different lengths
        for k, dr in enumerate(p["drafts"]):
            dr["text"] = f"draft {k} for {i} " + "x" * ((i * 7 + k * 13) % 50)
    controls = ("matched-wrong", "mismatched-wrong", "mismatched-correct", "matched-correct")
    plain = {v: build_variant(pool, v, seed=2) for v in controls}
    matched = {v: length_matched(pool, v, seed=2) for v in controls}
    for i in range(len(pool)):
        lengths = {len(matched[v][i]["draft"]) for v in controls}
        assert len(lengths) == 1  # identical per row, so per variant
        prompts = {len(build_prompt(matched[v][i]["problem"], matched[v][i]["draft"]))
                   for v in controls}
        assert len(prompts) == 1                                           # and so are the prompts
        for v in controls:
            # a cut keeps the beginning
            assert plain[v][i]["draft"].startswith(matched[v][i]["draft"])
            assert matched[v][i]["draft_source"] == plain[v][i]["draft_source"]
    cut, whole = matched["mismatched-wrong"], plain["mismatched-wrong"]
    assert any(len(cut[i]["draft"]) < len(whole[i]["draft"]) for i in range(len(pool)))
    assert length_matched(pool, "no-draft") == build_variant(pool, "no-draft")


def test_training_universe_rule():
    rows = [{"id": "a", "answer": "1", "level": 3}, {"id": "b", "answer": "1", "level": 2},
            {"id": "c", "answer": "1", "level": None}, {"id": "d", "answer": "", "level": 4},
            {"id": "e", "answer": "2"},  # no level field: the user's own data
            {"id": "f", "answer": "3", "level": 5, "split": "math500"},
            {"id": "g", "answer": "4", "level": 5, "split": "test"}]
    assert [r["id"] for r in drafts.training_problems(rows)] == ["a", "d", "e", "g"]
    math = drafts.load_jsonl("data/math_train.jsonl")
    assert len(drafts.training_problems(math)) == 8888  # the author's count, empty golds kept


def test_rows_carry_the_shown_drafts_answer_and_stats_prove_wrong_drafts_are_wrong(
        tmp_path, capsys):
    pool = []
    for i in range(8):  # per problem: a right draft and a wrong one, pred unset
        right = {"text": f"so \\boxed{{{i + 1}}}", "pred": None, "correct_strict": True,
                 "correct_quasi": True}
        wrong = {"text": f"the answer is {i + 100}", "correct_strict": False,
                 "correct_quasi": False}
        pool.append({"id": f"p{i}", "problem": f"What is {i}+1?", "answer": str(i + 1),
                     "level": 4, "drafts": [right, wrong]})
    pool[0]["drafts"][1]["pred"] = "7"                  # a pool's own pred wins over re-extraction
    answer = lambda variant: {r["id"]: r["draft_pred"] for r in build_variant(pool, variant)}
    assert answer("matched-correct") == {f"p{i}": str(i + 1) for i in range(8)}
    assert answer("matched-wrong") == {"p0": "7", **{f"p{i}": str(i + 100) for i in range(1, 8)}}
    mismatched = build_variant(pool, "mismatched-correct")
    # moves with its draft
    assert all(r["draft_pred"] == str(int(r["draft_source"][1:]) + 1) for r in mismatched)
    assert "draft_pred" not in build_variant(pool, "no-draft")[0]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pool))
    extras.pool.main(["stats", "--drafts", str(path)])
    table = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    gold = {v: row[3] for v, row in table.items()}      # the "shown = gold" column
    assert gold == {"no-draft": "-", "matched-wrong": "0.0%", "mismatched-wrong": "0.0%",
                    "matched-correct": "100.0%", "mismatched-correct": "0.0%"}
