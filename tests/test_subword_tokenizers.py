"""Word labels (NER) and answer offsets (QA) stay right with the other families' tokenizers: RoBERTa's
byte-level BPE (`Ġ` marks a leading space) and XLM-R's SentencePiece-style unigram (`▁` marks it).

Both tokenizers are trained here in a moment with the `tokenizers` library and saved as transformers fast
tokenizers, as the families' checkpoints ship them.
"""

import numpy as np
import pytest

from jaxft.data import tokenize
from jaxft.data.conll import Sentence
from jaxft.data.squad import QAExample
from jaxft.tasks import squad, tagging

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = ["the cat sat on the mat", "John Smith lives in New York", "a very good movie", "not a bad film"] * 20
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
NAMES = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>")
NAMES.update(pad_token="<pad>", mask_token="<mask>")


def _bpe(out: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        TEXTS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, initial_alphabet=alphabet)
    )
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    transformers.RobertaTokenizerFast(tokenizer_object=tok, **NAMES).save_pretrained(out)
    return out


def _unigram(out: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        TEXTS, trainers.UnigramTrainer(vocab_size=120, special_tokens=SPECIAL, unk_token="<unk>")
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    transformers.XLMRobertaTokenizerFast(tokenizer_object=tok, **NAMES).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tokenizer_dir(request, tmp_path_factory) -> str:
    build = {"bpe": _bpe, "unigram": _unigram}[request.param]
    return build(str(tmp_path_factory.mktemp(request.param)))


def test_words_are_encoded_as_running_text_encodes_them(tokenizer_dir):
    tokenizer = tokenize.load_tokenizer(tokenizer_dir, words=True)
    words = ["John", "Smith", "lives", "in", "New", "York"]
    encoded = tokenizer([words], is_split_into_words=True)
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    running = tokenizer.convert_ids_to_tokens(tokenizer(" ".join(words))["input_ids"])
    # The words after the first get the same pieces as in the sentence (a leading-space mark included).
    first_word_end = encoded.word_ids(0).index(1)
    assert pieces[first_word_end:] == running[-len(pieces[first_word_end:]) :]
    assert pieces[first_word_end][0] in "Ġ▁"


def test_word_tags_land_on_each_words_first_piece(tokenizer_dir):
    tokenizer = tokenize.load_tokenizer(tokenizer_dir, words=True)
    words = ("John", "Smith", "lives", "in", "New", "York")
    sentence = Sentence(words=words, tags=("B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"), source="s:1")
    tag_ids = [np.array([1, 2, 0, 0, 3, 4])]
    features = tagging.tokenize_words([sentence], tokenizer, 32, tag_ids)
    encoded = tokenizer([list(words)], is_split_into_words=True)
    word_ids = encoded.word_ids(0)
    firsts = [word_ids.index(w) for w in range(len(words))]
    assert features["word_index"][0][firsts].tolist() == list(range(len(words)))
    labels = features["labels"][0]
    assert labels[firsts].tolist() == [1, 2, 0, 0, 3, 4]
    others = np.setdiff1d(np.arange(32), firsts)
    assert (labels[others] == tagging.IGNORE).all()  # special tokens, later pieces, padding


def test_answer_offsets_give_back_the_answer_text(tokenizer_dir):
    tokenizer = tokenize.load_tokenizer(tokenizer_dir)
    context = "John Smith lives in New York"
    examples = [
        QAExample("a", "Who lives in New York?", context, (("John Smith", 0),), "q:a"),
        QAExample("b", "Where does he live?", context, (("New York", 20),), "q:b"),
    ]
    windows = squad.make_windows(examples, tokenizer, 64, 32, 16)
    for row, example in enumerate(examples):
        start, end = windows["targets"][row]
        offsets = windows["offsets"][row]
        assert 0 < start <= end
        assert context[offsets[start, 0] : offsets[end, 1]] == example.answers[0][0]
