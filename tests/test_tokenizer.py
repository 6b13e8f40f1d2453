import pytest

from shakegpt.errors import ShakeGPTError
from shakegpt.tokenizer import CharTokenizer


def test_vocabulary_is_the_sorted_characters_of_the_text():
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.chars == sorted(set("hello world\n"))
    assert tok.vocab_size == 9


def test_encode_decode_round_trip_and_serialisation():
    tok = CharTokenizer.from_text("To be, or not to be")
    ids = tok.encode("not to be")
    assert tok.decode(ids) == "not to be"
    assert CharTokenizer(tok.vocab).encode("be") == tok.encode("be")


def test_unknown_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ShakeGPTError, match=r"'z', 'é'"):
        tok.encode("abzé")


def test_shakespeare_has_65_characters(shakespeare_path):
    assert CharTokenizer.from_text(shakespeare_path.read_text()).vocab_size == 65


def test_the_default_prompt_is_a_newline_where_the_corpus_has_one_else_its_first_character():
    assert CharTokenizer.from_text("to be\nor not").default_prompt == "\n"
    assert CharTokenizer.from_text("一行だけの本文").default_prompt == min("一行だけの本文")


def test_a_large_vocabulary_is_listed_short_in_one_line():
    tok = CharTokenizer([chr(0x4E00 + i) for i in range(70_000)])
    with pytest.raises(ShakeGPTError) as error:
        tok.encode("a")
    message = str(error.value)
    assert "\n" not in message and len(message) < 300 and "70,000 characters" in message
