"""The toy model behind `--model tiny` (the README's demo, the tests, bench.py's CPU shapes): a BPE
tokenizer trained in a second on MATH problems and a random Mistral-architecture model, built
offline on the spot."""
import functools
import itertools
import json
import os

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=1)
def tokenizer(vocab_size=2000, corpus=os.path.join(HERE, "data", "math_train.jsonl"), lines=2000):
    """A byte-level BPE tokenizer trained on MATH problems in a second (deterministic), BOS
    prepended like Mistral."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    with open(corpus, encoding="utf-8") as f:
        rows = [json.loads(line) for line in itertools.islice(f, lines)]
    texts = [text for row in rows for text in (row["problem"], row.get("solution", ""))]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>",
            "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def model(vocab_size, seed=0, hidden=64, layers=2, heads=4, kv_heads=2):
    """Random MistralForCausalLM with Mathstral's layout (GQA, SwiGLU, RoPE) at a few hundred
    thousand params."""
    from transformers import MistralConfig, MistralForCausalLM
    config = MistralConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=kv_heads, max_position_embeddings=16384,
                           bos_token_id=1, eos_token_id=2, pad_token_id=3, sliding_window=None,
                           tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MistralForCausalLM(config)
    model.name_or_path = "tiny"
    return model
