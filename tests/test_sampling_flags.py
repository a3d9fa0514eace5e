"""The sampler draws from softmax(logits / T) restricted to the top_p nucleus, checked against
that formula written out here, at temperatures other than 0 and 1; and each script's
--temperature and --top-p reach the sampler unchanged."""
import json
import math

import pytest
import torch

import drafts
import evaluate
import grpo

DRAWS = 40_000
LOGITS = torch.tensor([1.5, 0.8, 0.3, 0.0, -0.7, -1.6, -2.5])


def draws(logits, temperature, top_p, n=DRAWS, seed=0):
    """n tokens sampled from one row of logits, each with its own key, as the engine keys a row's
    step (the one place this file calls the sampler's internals)."""
    from generation import mix, noise_roots, sample
    noise = mix(noise_roots(seed, [(0, s) for s in range(n)], "cpu") ^ 5)              # [n]
    return sample(logits.expand(n, -1), noise, temperature, top_p)[0]                 # [n]


def reference(logits, temperature, top_p=1.0):
    """softmax(logits / T), then the smallest set of likeliest tokens whose mass reaches top_p,
    renormalised; in float64, one token at a time."""
    z = [x / temperature for x in logits.double().tolist()]
    e = [math.exp(x - max(z)) for x in z]
    p = [x / sum(e) for x in e]
    kept, mass = set(), 0.0
    for i in sorted(range(len(p)), key=lambda i: -p[i]):
        if mass >= top_p:
            break
        kept.add(i)
        mass += p[i]
    return torch.tensor([p[i] / mass if i in kept else 0.0 for i in range(len(p))])


def assert_frequencies(tokens, probs):
    """Each token's frequency within 5 standard errors of its probability. The draws are keyed by a
    fixed seed, so this is deterministic; a correct sampler under another seed or hash would miss
    the bound about once in 10^5 runs."""
    freq = torch.bincount(tokens, minlength=len(probs)).double() / len(tokens)
    se = (probs * (1 - probs) / len(tokens)).sqrt()
    assert ((freq - probs).abs() <= 5 * se + 1e-12).all(), (freq, probs)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampled_frequencies_follow_softmax_of_logits_over_t(temperature):
    probs = reference(LOGITS, temperature)
    assert_frequencies(draws(LOGITS, temperature, 1.0), probs)
    # the two temperatures really differ here: logits * T would give the other one's law
    other = reference(LOGITS, 1 / temperature)
    assert (probs - other).abs().max() > 20 * (probs * (1 - probs) / DRAWS).sqrt().max()


@pytest.mark.parametrize("temperature,top_p", [(0.5, 0.9), (2.0, 0.6)])
def test_top_p_keeps_exactly_the_nucleus_in_renormalised_proportion(temperature, top_p):
    """Tokens outside the nucleus of softmax(logits / T) are never drawn; those inside are drawn in
    proportion to their renormalised probability (T = 1: tests/test_evaluate.py). The nucleus
    boundaries here are not ties: the mass before the last kept token is below top_p by 0.01 or
    more, with it above by as much."""
    probs = reference(LOGITS, temperature, top_p)
    kept = probs > 0
    assert 1 < kept.sum() < len(probs)                              # a nucleus that cuts
    tokens = draws(LOGITS, temperature, top_p)
    assert kept[tokens].all()
    assert_frequencies(tokens, probs)


def sampler_calls(monkeypatch):
    """The (temperature, top_p) of every call the rollout engine makes to its sampler, recorded
    while the real sampler runs (the one place this file intercepts it)."""
    import generation
    seen, real = [], generation.sample

    def recording(logits, noise, temperature=1.0, top_p=1.0):
        seen.append((temperature, top_p))
        return real(logits, noise, temperature, top_p)
    monkeypatch.setattr(generation, "sample", recording)
    return seen


def test_grpo_rollouts_sample_at_its_temperature_and_top_p(tmp_path, monkeypatch):
    seen = sampler_calls(monkeypatch)
    grpo.main(["--model", "tiny", "--variant", "no-draft", "--data",
               "tests/data/tiny_problems.jsonl", "--exclude", "", "--output-dir", str(tmp_path),
               "--max-steps", "1", "--prompts-per-step", "1", "--num-generations", "2",
               "--max-new-tokens", "2", "--temperature", "0.5", "--top-p", "0.8"])
    assert seen and set(seen) == {(0.5, 0.8)}


def test_evaluate_samples_at_its_temperature_and_top_p(tmp_path, monkeypatch):
    """--temperature / --top-p as given; by default the paper's 0.6 / 0.95 when sampling, greedy
    (T = 0, no nucleus) for one sample."""
    for extra, expected in ((["--samples", "2", "--temperature", "0.5", "--top-p", "0.8"],
                             (0.5, 0.8)),
                            (["--samples", "2"], (0.6, 0.95)),
                            ([], (0.0, 1.0))):
        seen = sampler_calls(monkeypatch)
        out = tmp_path / f"{len(extra)}.json"
        evaluate.main(["--model", "tiny", "--data", "data/aime2025.jsonl", "--limit", "1",
                       "--max-new-tokens", "2", "--output", str(out), *extra])
        assert seen and set(seen) == {expected}, extra
        assert json.loads(out.read_text())["temperature"] == expected[0]


def test_drafts_generate_samples_at_its_temperature_and_top_p(tmp_path, monkeypatch):
    """--temperature / --top-p as given; by default the recipe's 0.8 / 0.95."""
    for extra, expected in ((["--temperature", "0.5", "--top-p", "0.8"], (0.5, 0.8)),
                            ([], (0.8, 0.95))):
        seen = sampler_calls(monkeypatch)
        drafts.main(["generate", "--model", "tiny", "--limit", "1", "--num-drafts", "2",
                     "--max-new-tokens", "2", "--out", str(tmp_path / f"{len(extra)}.jsonl"),
                     *extra])
        assert seen and set(seen) == {expected}, extra
