"""imagetotext.Tokenizer against the tokenizers library (PyPI), which is the oracle.

Each test builds a tokenizer of one family's configuration with the tokenizers library itself, trains it on a
corpus it generates (BpeTrainer, byte-level alphabet), adds the family's special tokens and saves it; then
both libraries read the same tokenizer.json and must agree on every id and every decoded string for
10,000 generated strings per family (ASCII, accents, CJK, emoji, digits, runs of spaces and newlines, tabs,
the special tokens anywhere, empty strings) and on decoding arbitrary id lists.
"""

from __future__ import annotations

import json
import random
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer as OracleTokenizer, decoders, models, pre_tokenizers, processors, trainers

import imagetotext

STRINGS_PER_FAMILY = 10_000
VOCAB_SIZE = 2000

WORDS = ["the", "cat", "sat", "on", "a", "mat", "Describe", "image", "detail", "What", "is", "this", "photo",
         "running", "dogs", "HTTP", "x", "I", "you", "naïve", "café", "résumé", "Straße", "déjà", "über", "niño",
         "日本語", "中文", "漢字", "東京", "写真", "한국어", "Привет", "мир", "γειά", "مرحبا", "שלום"]
EMOJI = ["😀", "🎉", "👍🏽", "❤️", "🐱", "👨‍👩‍👧", "🇫🇷", "✨"]
PUNCTUATION = [".", ",", "!", "?", "...", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", '"', "(", ")", "-", "_",
               ":", ";", "/", "#", "@", "$", "%", "&", "*", "+", "=", "<", ">", "[", "]", "{", "}", "|", "~", "`"]
SPACES = [" ", " ", " ", "  ", "   ", "    ", "\n", "\n\n", "\n  ", "\t", "\t\t", " \t", "\r\n", "\u00a0", "\u3000",
          "\x85", "\u2028", "\x0b", "\x1c"]
DIGITS = ["0", "7", "42", "2024", "3.14", "1,000", "٣", "½", "Ⅻ", "①"]


def random_piece(rng: random.Random, specials: list[str]) -> str:
    kind = rng.random()
    if kind < 0.40:
        word = rng.choice(WORDS)
        return word.upper() if rng.random() < 0.05 else word
    if kind < 0.55:
        return rng.choice(PUNCTUATION)
    if kind < 0.70:
        return rng.choice(SPACES)
    if kind < 0.78:
        return rng.choice(DIGITS) if rng.random() < 0.5 else str(rng.randrange(10**6))
    if kind < 0.84:
        return rng.choice(EMOJI)
    if kind < 0.86:
        return chr(rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0xa0, 0x2000), rng.randrange(0x3000, 0xa000),
                               rng.randrange(0x1f300, 0x1fa00)]))
    if specials:
        return rng.choice(specials)
    return rng.choice(WORDS)


def random_text(rng: random.Random, specials: list[str]) -> str:
    if rng.random() < 0.03:
        return ""
    if rng.random() < 0.05:  # a special token alone, with spaces around it or not
        return rng.choice(["", " ", "  "]) + rng.choice(specials or WORDS) + rng.choice(["", " ", "\n"])
    pieces = []
    for _ in range(rng.randrange(1, 24)):
        pieces.append(random_piece(rng, specials))
        if rng.random() < 0.5:
            pieces.append(" ")
    return "".join(pieces)


def corpus(specials: list[str], lines: int = 3000) -> list[str]:
    rng = random.Random(1)
    return [random_text(rng, specials) for _ in range(lines)]


def trained(tokenizer: OracleTokenizer, special_tokens: list[str], extra_specials: list[str]) -> OracleTokenizer:
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, show_progress=False, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(special_tokens + extra_specials), trainer=trainer)
    return tokenizer


def moondream_tokenizer() -> tuple[OracleTokenizer, list[str]]:
    """GPT-2/CodeGen: ByteLevel everywhere, <|endoftext|>, CodeGen's whitespace-run tokens (not special)."""
    tokenizer = OracleTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    tokenizer.decoder = decoders.ByteLevel()
    trained(tokenizer, ["<|endoftext|>"], [])
    runs = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]
    tokenizer.add_tokens([AddedToken(run, normalized=True, special=False) for run in runs])
    return tokenizer, ["<|endoftext|>", "  ", "    ", "\t\t"]


SMOLVLM_SPECIALS = (["<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
                    + ["<fake_token_around_image>", "<image>", "<end_of_utterance>"])


def smolvlm_tokenizer() -> tuple[OracleTokenizer, list[str]]:
    """SmolLM2: Digits(individual) then ByteLevel, no post-processor, the image-prompt special tokens."""
    tokenizer = OracleTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    base_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trained(tokenizer, base_specials, [])
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SMOLVLM_SPECIALS])
    return tokenizer, base_specials + SMOLVLM_SPECIALS


FLORENCE_TOKENS = (["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)]
                   + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
                      "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
                      "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>", "<image>"])


def florence_tokenizer() -> tuple[OracleTokenizer, list[str]]:
    """BART: ByteLevel, RobertaProcessing(<s> ... </s>), <mask> with lstrip, Florence's task and location tokens."""
    tokenizer = OracleTokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trained(tokenizer, ["<s>", "<pad>", "</s>", "<unk>"], [])
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in FLORENCE_TOKENS])
    specials = ["<s>", "</s>", "<pad>", "<unk>", "<mask>", " <mask>", "<od>", "<loc_0>", "<loc_999>", "<loc_10>",
                "<cap>", "<image>", "<region_to_desciption>"]
    return tokenizer, specials


def template_tokenizer() -> tuple[OracleTokenizer, list[str]]:
    """ByteLevel with add_prefix_space, ignore_merges, a TemplateProcessing post-processor, and added tokens with
    every flag."""
    tokenizer = OracleTokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trained(tokenizer, ["<|im_start|>", "<|im_end|>"], [])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", 0), ("<|im_end|>", 1)])
    tokenizer.add_special_tokens([AddedToken("<r>", rstrip=True, normalized=False, special=True),
                                  AddedToken("<l>", lstrip=True, normalized=False, special=True),
                                  AddedToken("<lr>", lstrip=True, rstrip=True, normalized=True, special=True)])
    tokenizer.add_tokens([AddedToken("cat", single_word=True, normalized=True), AddedToken("日本", normalized=True),
                          AddedToken("the cat", normalized=False)])
    return tokenizer, ["<|im_start|>", "<|im_end|>", "<r>", "<l>", "<lr>", "cat", "日本", "the cat", " <l> "]


FAMILIES = {
    "moondream2": moondream_tokenizer,
    "smolvlm": smolvlm_tokenizer,
    "florence2": florence_tokenizer,
    "template": template_tokenizer,
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    oracle, specials = FAMILIES[request.param]()
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    oracle.save(str(path))
    # Both read the saved file, so neither sees state that the file does not hold.
    return request.param, OracleTokenizer.from_file(str(path)), imagetotext.Tokenizer.from_file(path), specials


def test_saved_files_hold_each_configuration(family):
    """The oracle wrote what each family is meant to exercise (training keeps the model's options)."""
    name, oracle, _, _ = family
    document = json.loads(oracle.to_str())
    assert document["model"]["type"] == "BPE"
    assert document["model"]["ignore_merges"] == (name == "template")
    pre_tokenizer = document["pre_tokenizer"]
    assert pre_tokenizer["type"] == ("Sequence" if name == "smolvlm" else "ByteLevel")
    expected_post_processor = {"florence2": "RobertaProcessing", "template": "TemplateProcessing",
                               "moondream2": "ByteLevel", "smolvlm": None}[name]
    assert (document["post_processor"] or {}).get("type") == expected_post_processor


def report(mismatches: list[str]) -> str:
    return f"{len(mismatches)} mismatches; first ones:\n" + "\n".join(mismatches[:10])


def test_encode_and_decode_match_tokenizers(family):
    name, oracle, ours, specials = family
    rng = random.Random(zlib.crc32(name.encode()))
    texts = [random_text(rng, specials) for _ in range(STRINGS_PER_FAMILY)]
    mismatches = []
    for text in texts:
        for add_special_tokens in (False, True):
            expected = oracle.encode(text, add_special_tokens=add_special_tokens).ids
            got = ours.encode(text, add_special_tokens=add_special_tokens)
            if got != expected:
                mismatches.append(f"encode({text!r}, add_special_tokens={add_special_tokens}): {got} != {expected}")
                continue
            for skip in (False, True):
                expected_text = oracle.decode(expected, skip_special_tokens=skip)
                got_text = ours.decode(expected, skip_special_tokens=skip)
                if got_text != expected_text:
                    mismatches.append(f"decode({expected}, skip_special_tokens={skip}) of {text!r}: "
                                      f"{got_text!r} != {expected_text!r}")
    assert not mismatches, report(mismatches)


def test_decode_of_arbitrary_ids_matches_tokenizers(family):
    """Ids in any order split multi-byte characters (U+FFFD where the bytes are not UTF-8); unknown ids are skipped."""
    name, oracle, ours, _ = family
    rng = random.Random(7)
    size = oracle.get_vocab_size(with_added_tokens=True)
    mismatches = []
    for _ in range(3000):
        ids = [rng.randrange(size + 3) for _ in range(rng.randrange(0, 12))]
        for skip in (False, True):
            expected = oracle.decode(ids, skip_special_tokens=skip)
            got = ours.decode(ids, skip_special_tokens=skip)
            if got != expected:
                mismatches.append(f"decode({ids}, skip_special_tokens={skip}): {got!r} != {expected!r}")
    assert not mismatches, report(mismatches)


def test_vocabulary_matches_tokenizers(family):
    _, oracle, ours, _ = family
    assert ours.vocab_size == oracle.get_vocab_size(with_added_tokens=True)
    for token_id in range(ours.vocab_size + 3):
        token = oracle.id_to_token(token_id)
        assert ours.id_to_token(token_id) == token, token_id
        if token is not None:
            assert ours.token_to_id(token) == oracle.token_to_id(token), token
    assert ours.token_to_id("not a token at all") is None


def test_threads_share_one_tokenizer(family):
    """encode and decode release the GIL and share the word cache; threads must get what one thread gets."""
    name, _, ours, specials = family
    rng = random.Random(3)
    texts = [random_text(rng, specials) for _ in range(2000)]
    expected = [ours.encode(text) for text in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(ours.encode, texts)) == expected
        assert list(pool.map(ours.decode, expected)) == [ours.decode(ids) for ids in expected]


def test_lone_surrogates_are_refused(family):
    """A str with a lone surrogate has no UTF-8 form; pybind11 refuses it before our code runs."""
    _, _, ours, _ = family
    with pytest.raises(TypeError):
        ours.encode("a\ud800b")


# ---- Bad files ------------------------------------------------------------------------------------------------

def test_missing_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "absent" / "tokenizer.json"
    with pytest.raises(imagetotext.CheckpointError, match="file not found") as error:
        imagetotext.Tokenizer.from_file(path)
    assert str(path) in str(error.value)


def test_invalid_json_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "BPE", "vocab": {')
    with pytest.raises(imagetotext.CheckpointError, match="not valid JSON") as error:
        imagetotext.Tokenizer.from_file(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("model", ["WordPiece", "Unigram", "WordLevel"])
def test_unsupported_model_type_is_a_checkpoint_error(tmp_path, model):
    if model == "WordPiece":
        oracle = OracleTokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    elif model == "Unigram":
        oracle = OracleTokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0))
    else:
        oracle = OracleTokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    path = tmp_path / "tokenizer.json"
    oracle.save(str(path))
    with pytest.raises(imagetotext.CheckpointError, match=f"model.type '{model}' is not supported") as error:
        imagetotext.Tokenizer.from_file(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("normalizer", {"type": "NFC"}, "normalizer"),
    ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer.type 'Whitespace' is not supported"),
    ("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True}, "decoder.type 'WordPiece' is not supported"),
    ("added_tokens", [{"content": "x"}], "added_tokens[0].id is missing"),
])
def test_unsupported_components_are_checkpoint_errors(tmp_path, field, value, message):
    oracle = OracleTokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    path = tmp_path / "tokenizer.json"
    oracle.save(str(path))
    document = json.loads(path.read_text())
    document[field] = value
    path.write_text(json.dumps(document))
    with pytest.raises(imagetotext.CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        imagetotext.Tokenizer.from_file(path)
    assert str(path) in str(error.value)


def test_merges_in_both_forms_give_the_same_tokenizer(tmp_path):
    oracle, _ = smolvlm_tokenizer()
    pairs_path, strings_path = tmp_path / "pairs.json", tmp_path / "strings.json"
    oracle.save(str(pairs_path))
    document = json.loads(pairs_path.read_text())
    assert isinstance(document["model"]["merges"][0], list)
    document["model"]["merges"] = [" ".join(pair) for pair in document["model"]["merges"]]
    strings_path.write_text(json.dumps(document))
    text = "The cat sat on 2024 mats, naïvely 日本語 😀\n\n  <image><end_of_utterance>"
    expected = oracle.encode(text, add_special_tokens=False).ids
    assert imagetotext.Tokenizer.from_file(pairs_path).encode(text) == expected
    assert imagetotext.Tokenizer.from_file(strings_path).encode(text) == expected
    assert OracleTokenizer.from_file(str(strings_path)).encode(text).ids == expected
