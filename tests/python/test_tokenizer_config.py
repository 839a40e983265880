"""imagetotext.Tokenizer.from_pretrained against transformers' AutoTokenizer (the oracle).

Each case builds a tiny tokenizer of one family's configuration with the tokenizers library (trained on the
generated corpus of test_tokenizer.py), wraps it in the transformers class the family's checkpoints name and
saves it with save_pretrained, so tokenizer.json and tokenizer_config.json are what transformers writes; some
cases then edit tokenizer_config.json or add a special_tokens_map.json the way older checkpoints have them.
Both libraries load the same directory and must agree on encode (with and without special tokens), decode
(skipping special tokens or not, with transformers' clean-up where it applies) and the special-token
attributes, on a few thousand mixed strings per case.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, BartTokenizer, CodeGenTokenizer, GPT2Tokenizer, PreTrainedTokenizerFast

import imagetotext
from test_tokenizer import (SMOLVLM_SPECIALS, florence_tokenizer, moondream_tokenizer, random_text,
                            smolvlm_tokenizer, template_tokenizer, trained)
from tokenizers import Tokenizer as OracleTokenizer, decoders, models

STRINGS_PER_CASE = 2500
STANDARD_NAMES = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]


def edit_config(directory: Path, **changes) -> None:
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2))


def smolvlm_backend(directory: Path) -> list[str]:
    """SmolVLM's checkpoints: the tokenizer.json verbatim (Digits then ByteLevel), no BOS added."""
    oracle, specials = smolvlm_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=oracle, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                            unk_token="<|endoftext|>", pad_token="<|im_end|>", model_max_length=8192,
                            additional_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
                            ).save_pretrained(directory)
    return specials


def digit_merging_tokenizer() -> OracleTokenizer:
    """Trained without Digits (so the vocabulary has multi-digit merges), then given SmolVLM's Digits step."""
    tokenizer = OracleTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trained(tokenizer, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], [])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return tokenizer


def smolvlm_gpt2(directory: Path) -> list[str]:
    """SmolVLM v1 checkpoints name GPT2Tokenizer: transformers rebuilds it as plain ByteLevel (Digits dropped);
    add_bos_token=True puts <|im_start|> in tokenizer.json's post-processor (Llama-style BOS)."""
    GPT2Tokenizer(tokenizer_object=digit_merging_tokenizer(), bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                  unk_token="<|endoftext|>", pad_token="<|im_end|>", add_bos_token=True,
                  additional_special_tokens=["<image>", "<end_of_utterance>"]).save_pretrained(directory)
    return ["<|im_start|>", "<end_of_utterance>", "<image>", "<|endoftext|>"]


def florence2_bart(directory: Path) -> list[str]:
    """Florence-2: BartTokenizer (= RobertaTokenizer in transformers 5), <s> ... </s>, <mask> with lstrip; the
    checkpoints set clean_up_tokenization_spaces, which transformers 5 ignores for BPE."""
    oracle, specials = florence_tokenizer()
    BartTokenizer(tokenizer_object=oracle).save_pretrained(directory)
    edit_config(directory, clean_up_tokenization_spaces=True, model_max_length=1024)
    return specials


def moondream2_codegen(directory: Path) -> list[str]:
    """moondream2: CodeGenTokenizer, <|endoftext|> for everything, CodeGen's whitespace-run tokens."""
    oracle, specials = moondream_tokenizer()
    CodeGenTokenizer(tokenizer_object=oracle).save_pretrained(directory)
    edit_config(directory, model_max_length=2048)
    return specials


def added_specials(directory: Path) -> list[str]:
    """Named tokens the vocabulary lacks (added in transformers' order), the AddedToken object form, a model's own
    named token, extra tokens, and the clean-up forced on for BPE."""
    oracle, specials = template_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=oracle).save_pretrained(directory)
    edit_config(directory,
                bos_token={"__type": "AddedToken", "content": "<bos>", "lstrip": False, "rstrip": True,
                           "normalized": False, "single_word": False},
                eos_token="<|im_end|>", sep_token="<sep>", pad_token=None, image_token="<image>",
                extra_special_tokens=["<x1>", "<|im_start|>", "<x2>"],
                clean_up_tokenization_spaces=True,
                clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True)
    return specials + ["<bos>", "<sep>", "<image>", "<x1>", "<x2>", " .", " 's", " ?", "n't"]


def special_tokens_map_file(directory: Path) -> list[str]:
    """Older checkpoints: the named tokens in special_tokens_map.json (object form), over tokenizer_config.json's."""
    oracle, specials = smolvlm_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=oracle, eos_token="<|im_end|>").save_pretrained(directory)
    (directory / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": {"content": "<|im_start|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "eos_token": "<end_of_utterance>",
        "unk_token": {"content": "<unk_new>", "lstrip": True, "normalized": False, "rstrip": False,
                      "single_word": False},
        "additional_special_tokens": ["<image>", "<fake_token_around_image>"],
    }))
    return specials + ["<unk_new>", " <unk_new>"]


def added_tokens_decoder(directory: Path) -> list[str]:
    """transformers 4's tokenizer_config.json: added_tokens_decoder (a token tokenizer.json lacks is added;
    special_tokens_map.json is then not read)."""
    oracle, specials = moondream_tokenizer()
    GPT2Tokenizer(tokenizer_object=oracle).save_pretrained(directory)
    decoder = {str(index): {"content": token.content, "lstrip": token.lstrip, "rstrip": token.rstrip,
                            "normalized": token.normalized, "single_word": token.single_word,
                            "special": token.special}
               for index, token in GPT2Tokenizer.from_pretrained(directory).added_tokens_decoder.items()}
    decoder["5000"] = {"content": "<extra>", "lstrip": False, "rstrip": False, "normalized": False,
                       "single_word": False, "special": True}
    edit_config(directory, added_tokens_decoder=decoder, pad_token="<|endoftext|>")
    (directory / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<ignored>"}))
    return specials + ["<extra>", "<ignored>"]


CASES = {
    "smolvlm": smolvlm_backend,
    "smolvlm_gpt2": smolvlm_gpt2,
    "florence2": florence2_bart,
    "moondream2": moondream2_codegen,
    "added_specials": added_specials,
    "special_tokens_map": special_tokens_map_file,
    "added_tokens_decoder": added_tokens_decoder,
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    specials = CASES[request.param](directory)
    return request.param, directory, AutoTokenizer.from_pretrained(directory), \
        imagetotext.Tokenizer.from_pretrained(str(directory)), specials


def report(mismatches: list[str]) -> str:
    return f"{len(mismatches)} mismatches; first ones:\n" + "\n".join(mismatches[:10])


def test_encode_and_decode_match_auto_tokenizer(case):
    name, _, oracle, ours, specials = case
    rng = random.Random(zlib.crc32(name.encode()))
    texts = [random_text(rng, specials) for _ in range(STRINGS_PER_CASE)]
    mismatches = []
    for add_special_tokens in (False, True):
        expected_ids = oracle(texts, add_special_tokens=add_special_tokens)["input_ids"]
        for text, expected in zip(texts, expected_ids):
            got = ours.encode(text, add_special_tokens=add_special_tokens)
            if got != expected:
                mismatches.append(f"encode({text!r}, add_special_tokens={add_special_tokens}): {got} != {expected}")
        for skip in (False, True):
            expected_texts = oracle.batch_decode(expected_ids, skip_special_tokens=skip)
            for ids, expected_text in zip(expected_ids, expected_texts):
                got_text = ours.decode(ids, skip_special_tokens=skip)
                if got_text != expected_text:
                    mismatches.append(f"decode({ids}, skip_special_tokens={skip}): {got_text!r} != {expected_text!r}")
    assert not mismatches, report(mismatches)


def test_special_token_attributes_match_auto_tokenizer(case):
    _, _, oracle, ours, _ = case
    for attribute in STANDARD_NAMES:
        assert getattr(ours, attribute) == getattr(oracle, attribute), attribute
        assert getattr(ours, attribute + "_id") == getattr(oracle, attribute + "_id"), attribute
    assert ours.special_tokens_map == oracle.special_tokens_map
    assert ours.extra_special_tokens == [str(token) for token in oracle.extra_special_tokens]
    assert ours.model_max_length == oracle.model_max_length
    assert ours.clean_up_tokenization_spaces == oracle.clean_up_tokenization_spaces
    assert ours.vocab_size == len(oracle)
    for token, token_id in oracle.get_vocab().items():
        assert ours.token_to_id(token) == token_id, token


def test_each_case_exercises_what_it_is_meant_to(case):
    """The oracle really does what the case is about, so agreement above means something."""
    name, directory, oracle, ours, _ = case
    config = json.loads((directory / "tokenizer_config.json").read_text())
    if name == "smolvlm_gpt2":
        # transformers drops the Digits step that tokenizer.json has; the tokenizers library keeps it.
        library = imagetotext.Tokenizer.from_file(directory / "tokenizer.json")
        assert oracle("2024 1000 42")["input_ids"] != [1] + library.encode("2024 1000 42")
        assert oracle("hi")["input_ids"][0] == oracle.bos_token_id == 1
        assert ours.tokenizer_class == "GPT2Tokenizer"
    elif name == "florence2":
        assert config["tokenizer_class"] in ("BartTokenizer", "RobertaTokenizer")
        assert oracle.decode(oracle("a .")["input_ids"]) == "<s>a .</s>"  # no clean-up for BPE
    elif name == "added_specials":
        assert oracle.convert_tokens_to_ids("<bos>") >= oracle.vocab_size
        ids = oracle("a . b's", add_special_tokens=False)["input_ids"]
        assert oracle.decode(ids) == ours.decode(ids) == " a. b's"  # cleaned (the template adds a prefix space)
    elif name == "special_tokens_map":
        assert oracle.unk_token == "<unk_new>" and oracle.eos_token == "<end_of_utterance>"
    elif name == "added_tokens_decoder":
        assert "<extra>" in oracle.get_vocab() and oracle.bos_token == "<|endoftext|>"


def test_from_file_reads_no_config(case):
    _, directory, _, _, _ = case
    plain = imagetotext.Tokenizer.from_file(directory / "tokenizer.json")
    assert plain.bos_token is None and plain.special_tokens_map == {} and plain.extra_special_tokens == []
    assert plain.model_max_length == int(1e30) and plain.tokenizer_class == "TokenizersBackend"


# ---- Bad files ------------------------------------------------------------------------------------------------

@pytest.fixture
def smolvlm_directory(tmp_path):
    smolvlm_backend(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("field", "value", "message"), [
    ("model_max_length", "long", "model_max_length is not a non-negative integer"),
    ("bos_token", 5, "bos_token is not a string or an AddedToken object"),
    ("eos_token", {"lstrip": True}, "eos_token.content is missing"),
    ("add_bos_token", "yes", "add_bos_token is not true or false"),
    ("clean_up_tokenization_spaces", 1, "clean_up_tokenization_spaces is not true or false"),
    ("additional_special_tokens", "<image>", "additional_special_tokens is not a list"),
    ("tokenizer_class", "LlamaTokenizerFast", "tokenizer_class 'LlamaTokenizer' is not supported"),
    ("split_special_tokens", True, "split_special_tokens true is not supported"),
])
def test_wrong_fields_name_the_file_and_field(smolvlm_directory, field, value, message):
    edit_config(smolvlm_directory, extra_special_tokens=..., **{field: value})
    with pytest.raises(imagetotext.CheckpointError, match=message) as error:
        imagetotext.Tokenizer.from_pretrained(str(smolvlm_directory))
    assert str(smolvlm_directory / "tokenizer_config.json") in str(error.value)


def test_invalid_json_names_the_file(smolvlm_directory):
    (smolvlm_directory / "tokenizer_config.json").write_text('{"bos_token": ')
    with pytest.raises(imagetotext.CheckpointError, match="not valid JSON") as error:
        imagetotext.Tokenizer.from_pretrained(str(smolvlm_directory))
    assert "tokenizer_config.json" in str(error.value)


def test_missing_tokenizer_json_names_it(smolvlm_directory):
    (smolvlm_directory / "tokenizer.json").unlink()
    with pytest.raises(imagetotext.CheckpointError, match="tokenizer.json"):
        imagetotext.Tokenizer.from_pretrained(str(smolvlm_directory))


def test_without_config_files_it_is_the_tokenizer_json(tmp_path):
    """Only tokenizer.json: what the tokenizers library gives, and no named special tokens."""
    oracle, _ = smolvlm_tokenizer()
    oracle.save(str(tmp_path / "tokenizer.json"))
    ours = imagetotext.Tokenizer.from_pretrained(str(tmp_path))
    text = "<|im_start|>User: 2024 cats<end_of_utterance>\nAssistant:"
    assert ours.encode(text, add_special_tokens=True) == oracle.encode(text).ids
    assert ours.bos_token is None and ours.special_tokens_map == {} and ours.tokenizer_class == "TokenizersBackend"
