import pytest

from trl_dynamicpo.data import normalize_row, tokenize_prompt_answers, tokenize_rows

from .testing_utils import make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_normalize_row_formats():
    assert normalize_row({"prompt": "p", "chosen": "a", "rejected": "b"}, 0)["rejected"] == ["b"]
    row = {"prompt": "p", "chosen": "a", "rejected1": "b", "rejected2": "c", "rejected3": None}
    assert normalize_row(row, 0, ["rejected1", "rejected2", "rejected3"])["rejected"] == ["b", "c"]
    chat = {
        "prompt": [{"role": "user", "content": "p"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [[{"role": "assistant", "content": "b"}], [{"role": "assistant", "content": "c"}]],
    }
    assert len(normalize_row(chat, 0)["rejected"]) == 2


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "chosen": 3, "rejected": ["b"]}, r"Row 7, field `chosen`: expected a string, got int"),
        ({"prompt": "p", "chosen": "a", "rejected": ["b", 4]}, r"Row 7, field `rejected\[1\]`: expected a string"),
        ({"prompt": None, "chosen": "a", "rejected": ["b"]}, r"Row 7, field `prompt`"),
        (
            {
                "prompt": [{"role": "user", "content": "p"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": ["b"],
            },
            r"Row 7, field `rejected\[0\]`: expected a list of messages",
        ),
    ],
)
def test_normalize_row_errors(row, message):
    with pytest.raises(ValueError, match=message):
        normalize_row(row, 7)


def test_separator_and_eos(tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    prompt_ids, answers = tokenize_prompt_answers(tokenizer, "choose from jaws up answer:", ["jaws", "up </s>"])
    assert prompt_ids == ids(["choose", "from", "jaws", "up", "answer:"])
    # EOS appended once: not again when the answer already ends with it.
    assert answers == [[ids("jaws"), tokenizer.eos_token_id], [ids("up"), tokenizer.eos_token_id]]
    # Without a separator the texts are concatenated as TRL does ("answer:jaws" is one unknown word here).
    prompt_ids, answers = tokenize_prompt_answers(tokenizer, "answer:", ["jaws"], separator="")
    assert prompt_ids == [] and answers == [[tokenizer.unk_token_id, tokenizer.eos_token_id]]


class _MergingTokenizer:
    """A character tokenizer that merges ':' with a following letter, so the prompt/answer boundary is ambiguous."""

    eos_token, eos_token_id = "<eos>", 0

    def _ids(self, text):
        out, i = [], 0
        while i < len(text):
            if text[i] == ":" and i + 1 < len(text) and text[i + 1].isalpha():
                out.append(1000 + ord(text[i + 1]))
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self._ids(t) for t in text]}
        return {"input_ids": self._ids(text)}


def test_boundary_mismatch_uses_shared_prefix():
    tokenizer = _MergingTokenizer()
    prompt_ids, answers = tokenize_prompt_answers(tokenizer, "ab:", ["cd", "ef"], separator="")
    # "ab:" + "cd" tokenizes as a, b, ":c", d: the prompt stops before ':' and ':' joins each answer's first token.
    assert prompt_ids == [ord("a"), ord("b")]
    assert answers == [[1000 + ord("c"), ord("d"), 0], [1000 + ord("e"), ord("f"), 0]]


def test_tokenize_rows_keeps_row_indices(tokenizer):
    batch = {"prompt": ["answer:", "answer:"], "chosen": ["jaws", "up"], "rejected": [["up"], ["cars", "coco"]]}
    out = tokenize_rows(batch, [10, 11], tokenizer=tokenizer)
    assert out["row_index"] == [10, 11] and [len(r) for r in out["rejected_ids"]] == [1, 2]
