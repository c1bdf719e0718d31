#!/usr/bin/env python3
"""Builds the byte-level BPE reference fixtures of tests/llama (test_tokenizer.cpp).

Needs the Hugging Face `tokenizers` package (and `transformers`, used as a cross-check when present);
no network. For each flavour it trains a small byte-level BPE on GSM8K's training text with that
family's pre-tokenizer, adds the family's special tokens, and writes into OUT/<name>/:
  tokenizer.json          the trained tokenizer (HF format, as the real models ship it)
  tokenizer_config.json   bos_token / eos_token / a chat_template with the family's markers
  reference.jsonl         {"text": s, "ids": HF ids of s (no BOS)} for a few hundred held-out strings:
                          GSM8K test questions/answers and slices of them, Unicode (several scripts,
                          emoji, combining marks; NFC), digit runs, whitespace runs (spaces, tabs,
                          \\n, \\r\\n, trailing), contractions, special tokens inside text.
Flavours: llama3 (LLaMA-3 split regex, ignore_merges), qwen2 (Qwen2 regex: single digits, NFC),
gpt2 (ByteLevel's own GPT-2 regex).

usage: scripts/make-tokenizer-fixtures.py DATA_DIR [--out tests/llama/fixtures/tokenizers]
       DATA_DIR: the gsm8k folder (train.jsonl, test.jsonl) or the shared data folder holding gsm8k/
"""
import argparse
import json
import os
import random
import sys
import unicodedata

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

FLAVOURS = {
    "llama3": dict(regex=LLAMA3_REGEX, nfc=False, ignore_merges=True,
                   specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>"],
                   config={"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                           "chat_template": "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                                            "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"}),
    "qwen2": dict(regex=QWEN2_REGEX, nfc=True, ignore_merges=False,
                  specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  config={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                          "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                           "<|im_end|>\n{% endfor %}"}),
    "gpt2": dict(regex=None, nfc=False, ignore_merges=False, specials=["<|endoftext|>"],
                 config={"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
}

HANDMADE = [
    "", " ", "  ", "\n", "\n\n", "\r\n", "\t", " \t \n ", "a  b   c    d", "trailing spaces   ", "   leading",
    "line one\nline two\r\nline three\n\n\nend", "tabs\tand\t\tmore\t", "x \n y", "  \n  \n  ",
    "0", "7", "12", "123", "1234", "12345", "123456789012", "3.14159", "1,000,000", "-42", "$18.50", "50%",
    "1/2 + 3/4 = 5/4", "2x + 3y = 12", "10^6", "x²", "½ cup", "٣٤٥ Arabic-Indic digits", "१२३ Devanagari digits",
    "don't", "DON'T", "I'm", "I'M", "we'll", "WE'LL", "they've", "you're", "it's", "he'd", "'s alone", "O'Neil's",
    "naïve café résumé", "Ελληνικά κείμενα", "русский текст", "中文字符测试", "日本語のテキスト", "한국어 텍스트",
    "עברית", "العربية", "ไทย", "emoji 😀👍🏽 🇩🇪 👨‍👩‍👧", "zero\u200bwidth", "combining e\u0301 (NFC: é)",
    "mixed: Ünïcödé 123 and ascii!", "Ünïcödé\n\n\t  mixed", "symbols: ~!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/",
    "---===***", "....", "!!!???", "«quotes» “curly” ‘single’", "… — – •",
]


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "llama",
                                                  "fixtures", "tokenizers"))
    ap.add_argument("--vocab-size", type=int, default=1500)
    ap.add_argument("--held-out", type=int, default=240, help="GSM8K test strings per fixture (plus the handmade ones)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    gsm = args.data_dir if os.path.exists(os.path.join(args.data_dir, "train.jsonl")) else os.path.join(args.data_dir, "gsm8k")
    train = read_jsonl(os.path.join(gsm, "train.jsonl"))
    test = read_jsonl(os.path.join(gsm, "test.jsonl"))
    corpus = [r["question"] + "\n" + r["answer"] for r in train]

    rng = random.Random(args.seed)
    held = []
    for r in rng.sample(test, args.held_out // 2):
        held.append(r["question"])
        held.append(r["answer"])
    for s in list(held[:40]):  # slices that start / end mid-word, mid-number, mid-whitespace
        a, b = sorted(rng.sample(range(len(s) + 1), 2))
        held.append(s[a:b])

    for name, fl in FLAVOURS.items():
        specials = fl["specials"]
        strings = list(HANDMADE) + held
        # special tokens inside text, and text that only resembles them
        strings += [f"{specials[0]}Hello{specials[-1]}", f"a {specials[-1]} b{specials[-1]}{specials[-1]}c",
                    specials[-1][:-1] + " not special", "<|" + " half", f"{specials[0]}\n\n{specials[-1]}"]
        strings = [unicodedata.normalize("NFC", s) for s in strings]  # our encoder does not normalise

        try:
            model = models.BPE(ignore_merges=fl["ignore_merges"])
        except TypeError:  # tokenizers < 0.19 has no ignore_merges
            if fl["ignore_merges"]:
                print(f"{name}: this tokenizers has no ignore_merges; writing the fixture without it")
            model = models.BPE()
        tok = Tokenizer(model)
        if fl["nfc"]:
            tok.normalizer = normalizers.NFC()
        if fl["regex"]:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(fl["regex"]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=2, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
        tok.train_from_iterator(corpus, trainer=trainer)
        tok.add_special_tokens(specials)  # after the vocabulary, as in the released models

        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        tok.save(os.path.join(out, "tokenizer.json"))
        with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(fl["config"], f, indent=2, ensure_ascii=False)
            f.write("\n")
        rows = []
        for s in strings:
            ids = tok.encode(s, add_special_tokens=False).ids
            assert tok.decode(ids, skip_special_tokens=False) == s or fl["nfc"], (name, s)
            rows.append({"text": s, "ids": ids})
        try:  # cross-check through transformers' fast tokenizer, when installed
            from transformers import PreTrainedTokenizerFast
            fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, "tokenizer.json"))
            bad = [r["text"] for r in rows if fast.encode(r["text"], add_special_tokens=False) != r["ids"]]
            if bad:
                sys.exit(f"{name}: transformers disagrees with tokenizers on {len(bad)} strings, e.g. {bad[0]!r}")
            via = "tokenizers + transformers"
        except ImportError:
            via = "tokenizers"
        with open(os.path.join(out, "reference.jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}: vocab {tok.get_vocab_size()}, {len(rows)} reference strings ({via}) -> {out}")


if __name__ == "__main__":
    main()
