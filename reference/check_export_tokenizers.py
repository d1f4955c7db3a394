#!/usr/bin/env python3
"""Checks the tokenizer.json files Finch builds from GGUF vocabularies with HF `tokenizers`
and transformers: each must encode llama.cpp's test strings (ggml-vocab-NAME.gguf.inp) to the
ids of its .out, as llama.cpp does.

Usage:
  FINCH_EXPORT_TOKENIZERS=/tmp/export-tokenizers swift test --skip-build --disable-swift-testing \\
      --filter ExportTests.testTokenizerConversionKeepsLlamaCppIDs
  python3 reference/check_export_tokenizers.py /tmp/export-tokenizers
"""
import os
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "Tests", "FinchTestSupport", "Fixtures", "tokenizers", "llama.cpp")


def main():
    root = sys.argv[1]
    ok = True
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        texts = open(os.path.join(FIXTURES, f"ggml-vocab-{name}.gguf.inp"), encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
        lines = open(os.path.join(FIXTURES, f"ggml-vocab-{name}.gguf.out"), encoding="utf-8").read().split("\n")
        fast = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        auto = AutoTokenizer.from_pretrained(folder)
        passed = passed_auto = 0
        for text, line in zip(texts, lines):
            expected = [int(t) for t in line.split()]
            passed += fast.encode(text, add_special_tokens=False).ids == expected
            passed_auto += auto(text, add_special_tokens=False)["input_ids"] == expected
        ok &= passed == len(texts) and passed_auto == len(texts)
        print(f"{name:16s} tokenizers {passed}/{len(texts)}  transformers {passed_auto}/{len(texts)}")
    print("ALL PASS" if ok else "SOME FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
