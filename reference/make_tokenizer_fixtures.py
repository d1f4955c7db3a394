"""Builds the tokenizer fixtures under Tests/FinchTestSupport/Fixtures/tokenizers/.

Expected ids come from Hugging Face `tokenizers` (the Rust library transformers uses).
Without hub access, the HF tokenizer.json files are made by converting GGUF vocabularies
with transformers (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), then patched
where transformers' GGUF converter loses a setting the published tokenizer.json has:

  llama3  (ggml-vocab-llama-bpe): model.ignore_merges = true and a post-processor that adds
          <|begin_of_text|>, as meta-llama/Meta-Llama-3-8B's tokenizer.json.
  llama2  (ggml-vocab-llama-spm): the legacy SentencePiece pipeline of
          meta-llama/Llama-2-7b-hf (normalizer Prepend("▁") + Replace(" ", "▁"), no
          pre-tokenizer, unk_token "<unk>"), which is what llama.cpp implements.
  llama2-metaspace: the same vocabulary as transformers converts it (Metaspace pre-tokenizer,
          prepend_scheme "first"), to cover that path at full size.
  smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf, pre "smollm"): pre-tokenizer
          Sequence[Digits(individual_digits=true), ByteLevel], as HuggingFaceTB's tokenizer.json
          and llama.cpp's "smollm" regexes; the converter drops the Digits step.
  gpt2, qwen2: as converted.

Small tokenizers trained here on the corpus ("synthetic/") cover pipeline components the
real vocabularies do not use (NFKC, Lowercase, Strip, Metaspace with split, Split
behaviors, Punctuation, Whitespace, Digits, RobertaProcessing, added-token flags, unk).

Committed (small): the llama.cpp .inp/.out test files, ggml-vocab-llama-spm.gguf, the
smollm2 and llama2 tokenizer.json files, the synthetic tokenizers, and the expected ids.
The larger files go to the cache ($FINCH_CACHE or ~/.cache/finch): the other GGUF vocabs
(scripts/fetch_tokenizer_vocabs.sh) and converted tokenizer.json files (this script);
the Swift tests use them when present and skip otherwise.

Usage: scripts/fetch_tokenizer_vocabs.sh && scripts/fetch_smollm2.sh
       python3 reference/make_tokenizer_fixtures.py
"""
import copy
import json
import os
import shutil
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers.decoders import DecodeStream

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "Tests/FinchTestSupport/Fixtures/tokenizers"
CACHE = Path(os.environ.get("FINCH_CACHE", Path.home() / ".cache/finch"))
VOCABS = CACHE / "llama-vocabs"
CONVERTED = CACHE / "tokenizers"
SMOLLM2 = Path(os.environ.get("FINCH_SMOLLM2_GGUF", CACHE / "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))

# llama.cpp vocabularies whose tests Finch runs (model types gpt2 and llama); the others in the
# archive are WordPiece (bert-bge), Unigram (nomic-bert-moe) or gemma4.
LLAMA_CPP_VOCABS = ["gpt-2", "llama-bpe", "qwen2", "qwen35", "llama-spm", "phi-3", "deepseek-coder", "deepseek-llm",
                    "falcon", "mpt", "starcoder", "refact", "command-r"]
COMMITTED_VOCABS = ["llama-spm"]

CORPUS = [
    "",
    "Hello world",
    " Hello world",
    "Hello, World! How are you doing today?",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX.",
    "I'm sure you're right, we'll see. They've said it's John's, isn't it? I'd've",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'ſ 'x 'Re ''s",
    "don't DON'T Don'T y'all rock'n'roll",
    # whitespace and newlines
    "   leading spaces",
    "trailing spaces   ",
    "a  b   c    d     e",
    "tab\tseparated\t\tvalues\t",
    "line one\nline two\n\nline four\n\n\n",
    "windows\r\nline\r\n\r\nendings\r",
    "mixed \t \n \r\n  \n\t\tindent",
    "   \n   \n",
    " ",
    "\n",
    "\t",
    "\u00a0non-breaking\u00a0space\u2009thin\u3000ideographic\u2028line\u2029para",
    "zero\u200bwidth\u200djoiner\u200cnon\ufeffbom",
    # numbers
    "1 12 123 1234 12345 123456 1234567 3.14159 -42 +7 1,000,000 1.000.000,00",
    "Call 555-0199 or +1 (800) 123-4567 on 2024-03-15T12:34:56Z",
    "٠١٢٣٤٥٦٧٨٩ ०१२३४५ ½ ¾ ² ³ Ⅻ ⅷ ①②③ 𝟙𝟚𝟛",
    # scripts and languages
    "Über Straße ẞ Äpfel Öl Grüße",
    "Ça va? Où est la bibliothèque? J'ai mangé une crème brûlée à l'hôtel.",
    "¿Dónde está el baño? ¡Qué día tan bonito!",
    "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "İstanbul ıi Iİ ğüşöç",
    "Tiếng Việt có dấu: Việt Nam, Nguyễn, người, được, thường",
    "Привет, мир! Как дела? ЁЛКА ёлка",
    "нещо на Български",
    "Γειά σου Κόσμε! Ελληνικά: αβγδεζηθ ΑΒΓΔ",
    "Բարեւ աշխարհ ქართული ენა",
    "你好，世界！今天天气很好。我们一起去公园吧。",
    "日本語のテキストです。ひらがな、カタカナ、漢字。ｶﾀｶﾅ",
    "안녕하세요, 세계! 한국어 텍스트입니다.",
    "مرحبا بالعالم! هذا نص عربي مُشَكَّل.",
    "שלום עולם! זה טקסט בעברית.",
    "नमस्ते दुनिया! यह हिंदी पाठ है। क्षत्रिय",
    "হ্যালো বিশ্ব বাংলা",
    "สวัสดีชาวโลก ภาษาไทย",
    "வணக்கம் உலகம் தமிழ்",
    "ሰላም ዓለም",
    "កាន់តែពិសេសអាចខលចេញ",
    "e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o",
    "ﬁ ﬂ ﬀ ＡＢＣ ａｂｃ １２３ ℌ ℍ ℡ ™ ㎏",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝 𐐀𐐨 𓀀𓀁",
    # emoji
    "🦙 llama.cpp 🦙🦙🦙",
    "👩\u200d👩\u200d👧\u200d👦 family 🇫🇷🇯🇵 flags 👍🏽 skin ❤️ heart ☃ snowman",
    "😀😃😄😁😆😅🤣😂🙂🙃",
    # code
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "std::vector<std::string> v{\"a\", \"b\"}; auto x = v[0];",
    "{\"name\": \"Finch\", \"version\": [1, 2, 3], \"ok\": true, \"nested\": {\"k\": null}}",
    "<html><body><div class=\"main\">Hello &amp; welcome</div></body></html>",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "https://example.com/path?query=1&b=2#frag user@example.org",
    "x = [i**2 for i in range(10) if i % 2 == 0]  # squares",
    "$$E = mc^2$$ \\frac{a}{b} α+β=γ ∀x∈ℝ: x²≥0",
    "!!!??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) ___ +++ === ||| ~~~ ```",
    "a.b,c;d:e!f?g'h\"i(j)k[l]m{n}o<p>q/r\\s|t`u~v@w#x$y%z^&*",
    # text that looks like the models' own markers
    "\u2581leading lower one eighth block \u2581\u2581 and Ġ and Ċ and <0x41> literal",
    "<s> </s> <unk> <|endoftext|> <|im_start|> <pad> [INST] <<SYS>>",
    "control \x00 \x01 \x1b[31mred\x1b[0m \x7f del",
    "private \ue000\uf8ff use",
    "A long paragraph: Finch fine-tunes language models in Swift, fast, on an ordinary Linux machine. "
    "It loads a real model, tokenizes the data with the model's own tokenizer and chat template, trains "
    "LoRA adapters with SFT, ORPO or DPO, shows a progress bar, logs metrics and saves checkpoints.",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "                                                                                                    x",
    "ied 4 ½ months",
    "w048 7tuijk dsdfhu",
]

# Added tokens of each family written inside text.
SPECIAL_TEMPLATES = ["Hello{0}world", " {0} spaced {1} ", "{0}{1}{0}", "line\n{0}\nnext", "{0}start", "end{1}",
                     "{0}\n{1}\n", "  {0}  ", "a{0}b{1}c"]


def llama_cpp_tests(name):
    """(text, ids) pairs of a llama.cpp vocab test, split as tests/test-tokenizer-0.cpp does."""
    raw = (VOCABS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    out = (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    sep = "\n__ggml_vocab_test__\n"
    texts = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(sep)
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, out)]


def write_json(path, obj, compact=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def convert_gguf(directory, filename, out_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(directory), gguf_file=filename)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    return tmp


def save_hf_folder(tmp, dest, patch=None, config=None):
    """Writes tmp's tokenizer.json (patched, compact) and chat template into dest."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    j = json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))
    if patch:
        patch(j)
    write_json(dest / "tokenizer.json", j)
    if (tmp / "chat_template.jinja").exists():
        shutil.copy(tmp / "chat_template.jinja", dest / "chat_template.jinja")
    if config is not None:
        write_json(dest / "tokenizer_config.json", config, compact=False)


def patch_llama3(j):
    j["model"]["ignore_merges"] = True
    j["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}}},
        ],
    }


def patch_llama2(j):
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    j["pre_tokenizer"] = None
    j["model"]["unk_token"] = "<unk>"


def patch_smollm2(j):
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}


def synthetic_tokenizers():
    """Small trained tokenizers covering pipeline pieces the real ones do not use."""
    text = CORPUS * 3
    made = {}

    # Trained without every fourth corpus line, so that some characters are missing from the
    # vocabulary (unk, byte fallback). limit_alphabet would do it too, but breaks frequency
    # ties differently from run to run.
    partial = [t for i, t in enumerate(CORPUS) if i % 4 != 1] * 3

    def train(tok, vocab_size, special, alphabet=None, byte_level=False, all_text=True):
        initial = pre_tokenizers.ByteLevel.alphabet() if byte_level else (alphabet or [])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                      initial_alphabet=initial)
        tok.train_from_iterator(text if all_text else partial, trainer=trainer)
        return tok

    # Byte-level with add_prefix_space, NFC, RobertaProcessing, added-token flags.
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    t.decoder = decoders.ByteLevel()
    train(t, 700, ["<s>", "</s>", "<pad>"], byte_level=True)
    from tokenizers import AddedToken
    t.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False),
                          AddedToken("[END]", rstrip=True, special=True, normalized=False)])
    t.add_tokens([AddedToken("fox", single_word=True, normalized=False), AddedToken("Ünïcode", normalized=True),
                  AddedToken("  ", normalized=False)])
    t.post_processor = processors.RobertaProcessing(("</s>", t.token_to_id("</s>")), ("<s>", t.token_to_id("<s>")))
    made["bytelevel-roberta"] = (t, ["<mask>", "[END]", "fox", "Ünïcode"])

    # SentencePiece-like: NFKC + Metaspace(always, split) + unk, lowercase, normalized added token.
    t = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    t.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    train(t, 500, ["<unk>", "<s>", "</s>"], alphabet=list("abcdefghijklmnopqrstuvwxyz"), all_text=False)
    t.add_tokens([AddedToken("hello", normalized=True), AddedToken("<sep>", normalized=False, special=True)])
    t.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    made["metaspace-split"] = (t, ["<sep>", "hello", "HELLO"])

    # Metaspace "first" without split, byte fallback, SentencePiece decoders.
    t = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    train(t, 900, special, all_text=False)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    made["metaspace-first-bytefallback"] = (t, ["<s>", "</s>"])

    # Split behaviors, Punctuation, Digits, Whitespace, Replace regex normalizer.
    t = Tokenizer(models.BPE(unk_token="[UNK]"))
    t.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "), normalizers.NFD(), normalizers.StripAccents()])
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("-", "merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[aeiou]{2}"), "merged_with_next"),
        pre_tokenizers.Split(Regex(r"\d+"), "contiguous", invert=True),
        pre_tokenizers.Punctuation("contiguous"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Whitespace(),
    ])
    t.decoder = decoders.Sequence([decoders.Replace(Regex("##"), ""), decoders.Strip("x", 0, 1)])
    train(t, 400, ["[UNK]", "[CLS]", "[SEP]"], alphabet=list("abcdefghijklmnopqrstuvwxyz"))
    t.post_processor = processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1))
    made["split-behaviors"] = (t, ["[CLS]"])

    # Regex Split sequence (deepseek-coder's) + ByteLevel without regex + ignore_merges.
    t = Tokenizer(models.BPE(ignore_merges=True))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\r\n]"), "isolated"),
        pre_tokenizers.Split(Regex(r"\s?\p{L}+"), "isolated"),
        pre_tokenizers.Split(Regex(r"\s?\p{P}+"), "isolated"),
        pre_tokenizers.Split(Regex(r"[一-龥ࠀ-一가-퟿]+"), "isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    t.decoder = decoders.ByteLevel()
    train(t, 800, ["<|begin|>", "<|end|>"], byte_level=True)
    t.post_processor = processors.TemplateProcessing(single="<|begin|> $A <|end|>",
                                                     special_tokens=[("<|begin|>", 0), ("<|end|>", 1)])
    made["regex-sequence"] = (t, ["<|begin|>", "<|end|>"])

    # Qwen2's pipeline, also written as a GGUF (tokenizer.ggml.model "gpt2", pre "qwen2") so the
    # GGUF byte-level path is tested without the cached vocabularies.
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERNS[3]), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    t.decoder = decoders.ByteLevel()
    train(t, 900, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], byte_level=True)
    made["qwen2-style"] = (t, ["<|im_start|>", "<|im_end|>"])
    return made


def write_gguf(tok, path, pre, specials):
    """A GGUF holding only the byte-level BPE vocabulary of `tok`, as convert_hf_to_gguf writes one."""
    import gguf
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    types = [gguf.TokenType.CONTROL if tk in specials else gguf.TokenType.NORMAL for tk in tokens]
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def parity_cases(tok, specials):
    texts = list(CORPUS)
    if specials:
        a = specials[0]
        b = specials[1] if len(specials) > 1 else specials[0]
        texts += [tmpl.format(a, b) for tmpl in SPECIAL_TEMPLATES]
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        with_special = tok.encode(text, add_special_tokens=True).ids
        stream = DecodeStream(skip_special_tokens=False)
        chunks = [stream.step(tok, i) for i in ids]
        cases.append({"text": text, "ids": ids, "ids_special": with_special,
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip": tok.decode(with_special, skip_special_tokens=True),
                      "stream": chunks})
    return cases


def special_tokens_of(tok, preferred):
    vocab = tok.get_vocab()
    return [s for s in preferred if s in vocab]


def check_llama_cpp(tok, name):
    tests = llama_cpp_tests(name)
    bad = [t for t, ids in tests if tok.encode(t, add_special_tokens=False).ids != ids]
    print(f"  HF {name}: {len(tests) - len(bad)}/{len(tests)} llama.cpp tests agree", file=sys.stderr)


def main():
    if not VOCABS.exists():
        sys.exit(f"{VOCABS} is missing: run scripts/fetch_tokenizer_vocabs.sh first")
    FIXTURES.mkdir(parents=True, exist_ok=True)

    # 1. llama.cpp tests: all .inp/.out, the small GGUF vocab.
    dest = FIXTURES / "llama.cpp"
    dest.mkdir(exist_ok=True)
    for name in LLAMA_CPP_VOCABS:
        for suffix in [".inp", ".out"]:
            shutil.copy(VOCABS / f"ggml-vocab-{name}.gguf{suffix}", dest / f"ggml-vocab-{name}.gguf{suffix}")
    for name in COMMITTED_VOCABS:
        shutil.copy(VOCABS / f"ggml-vocab-{name}.gguf", dest / f"ggml-vocab-{name}.gguf")

    # 2. HF tokenizer.json files converted from the GGUF vocabularies.
    families = {}  # name -> (folder, where the GGUF is, preferred specials)
    plan = [
        ("gpt2", "gpt-2", None, CONVERTED / "hf/gpt2", ["<|endoftext|>"], {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
        ("llama3", "llama-bpe", patch_llama3, CONVERTED / "hf/llama3", ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>"],
         {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}),
        ("qwen2", "qwen2", None, CONVERTED / "hf/qwen2", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
         {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
        ("llama2", "llama-spm", patch_llama2, FIXTURES / "hf/llama2", ["<s>", "</s>", "<unk>"],
         {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
        ("llama2-metaspace", "llama-spm", None, CONVERTED / "hf/llama2-metaspace", ["<s>", "</s>"],
         {"bos_token": "<s>", "eos_token": "</s>"}),
    ]
    for family, vocab, patch, folder, specials, config in plan:
        print(f"converting {vocab} -> {folder}", file=sys.stderr)
        tmp = convert_gguf(VOCABS, f"ggml-vocab-{vocab}.gguf", folder)
        save_hf_folder(tmp, folder, patch, {k: v for k, v in config.items() if v is not None})
        shutil.rmtree(tmp)
        committed = FIXTURES in folder.parents
        where = f"fixture:{folder.relative_to(FIXTURES)}" if committed else f"cache:{folder.relative_to(CACHE)}"
        gguf = f"fixture:llama.cpp/ggml-vocab-{vocab}.gguf" if vocab in COMMITTED_VOCABS else f"cache:llama-vocabs/ggml-vocab-{vocab}.gguf"
        families[family] = (folder, where, gguf if family != "llama2-metaspace" else None, specials, vocab)
    if SMOLLM2.exists():
        print(f"converting {SMOLLM2}", file=sys.stderr)
        folder = FIXTURES / "hf/smollm2"
        tmp = convert_gguf(SMOLLM2.parent, SMOLLM2.name, folder)
        save_hf_folder(tmp, folder, patch_smollm2, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                                   "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"})
        shutil.rmtree(tmp)
        families["smollm2"] = (folder, "fixture:hf/smollm2", "smollm2", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], None)
    else:
        print(f"warning: {SMOLLM2} missing (scripts/fetch_smollm2.sh); smollm2 fixtures not rebuilt", file=sys.stderr)

    # 3. Parity fixtures.
    for family, (folder, where, gguf, preferred, vocab) in families.items():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        if vocab and family != "llama2-metaspace":
            check_llama_cpp(tok, vocab)
        cases = parity_cases(tok, special_tokens_of(tok, preferred))
        write_json(FIXTURES / f"parity/{family}.json", {"tokenizer": where, "gguf": gguf, "cases": cases})
        print(f"parity/{family}.json: {len(cases)} cases", file=sys.stderr)

    for name, (tok, specials) in synthetic_tokenizers().items():
        folder = FIXTURES / f"synthetic/{name}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        tok.save(str(folder / "tokenizer.json"))
        j = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        write_json(folder / "tokenizer.json", j)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        gguf_ref = None
        if name == "qwen2-style":
            write_gguf(tok, FIXTURES / "synthetic/qwen2-style.gguf", "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
            gguf_ref = "fixture:synthetic/qwen2-style.gguf"
        cases = parity_cases(tok, [s for s in specials])
        write_json(FIXTURES / f"parity/synthetic-{name}.json", {"tokenizer": f"fixture:synthetic/{name}", "gguf": gguf_ref, "cases": cases})
        print(f"parity/synthetic-{name}.json: {len(cases)} cases", file=sys.stderr)

    # 4. Regex splits: every pattern Finch knows (Splitter scanners and the GGUF pre-tokenizer
    #    table in TokenizerGGUF.swift), split by HF's Split(Isolated) over the corpus and the
    #    llama.cpp test strings. Stored as piece lengths in Unicode scalars.
    texts = list(CORPUS)
    for name in LLAMA_CPP_VOCABS:
        texts += [t for t, _ in llama_cpp_tests(name) if t not in texts]
    splits = {"texts": texts, "patterns": {}}
    for pattern in SPLIT_PATTERNS:
        split = pre_tokenizers.Split(Regex(pattern), "isolated")
        splits["patterns"][pattern] = [[len(piece) for piece, _ in split.pre_tokenize_str(t)] for t in texts]
    write_json(FIXTURES / "splits.json", splits)
    print(f"splits.json: {len(SPLIT_PATTERNS)} patterns x {len(texts)} texts", file=sys.stderr)


# Mirror of the patterns in Sources/FinchTokenizers/Splitter.swift and TokenizerGGUF.swift
# (the Swift test fails if one of Finch's patterns has no entry here).
SPLIT_PATTERNS = [
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"[\p{P}\$\+<=>\^~\|]+",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
    r"[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    r"\p{N}",
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    r"[\p{P}\$\+<=>\^~\|`]+",
    r" ?[^(\s|.,!?…。，、।۔،)]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
]

if __name__ == "__main__":
    main()
