"""Every encoder family through the one trainer: a tiny random checkpoint of each is fine-tuned, predicted
with and exported to its own transformers class, whose probabilities equal jaxft's."""

import json

import numpy as np
import pytest
from flax import traverse_util

from jaxft import export, predict
from jaxft.configs import common, tiny
from jaxft.data import readers
from jaxft.models import families
from jaxft.strategies import peft as peft_lib
from jaxft.training import train, trained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOKENIZER = common.shipped("tiny_tokenizer")  # WordPiece, 555 tokens, [PAD] 0, [CLS] 2, [SEP] 3
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
HF_CONFIGS = {
    "roberta": lambda: transformers.RobertaConfig(max_position_embeddings=66, **SIZES),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(max_position_embeddings=66, **SIZES),
    "electra": lambda: transformers.ElectraConfig(embedding_size=24, max_position_embeddings=64, **SIZES),
    "distilbert": lambda: transformers.DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64
    ),
    "deberta-v2": lambda: transformers.DebertaV2Config(
        max_position_embeddings=64,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=8,
        max_relative_positions=16,
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        norm_rel_ebd="layer_norm",
        **SIZES,
    ),
    "modernbert": lambda: transformers.ModernBertConfig(
        max_position_embeddings=64,
        local_attention=8,
        global_attn_every_n_layers=2,
        cls_token_id=2,
        sep_token_id=3,
        bos_token_id=2,
        eos_token_id=3,
        **SIZES,
    ),
}


def _checkpoint(family: str, directory) -> str:
    """A random `*ForSequenceClassification` of the family with the tiny tokenizer's vocabulary, saved as a
    Hugging Face directory (safetensors and the tokenizer files)."""
    hf_config = HF_CONFIGS[family]()
    hf_config.vocab_size, hf_config.pad_token_id, hf_config.num_labels = 555, 0, 2
    torch.manual_seed(0)
    name = families.named(family).class_prefix + "ForSequenceClassification"
    getattr(transformers, name)(hf_config).save_pretrained(str(directory))
    tokenizer = transformers.BertTokenizerFast.from_pretrained(TOKENIZER)
    tokenizer.save_pretrained(str(directory))  # with tokenizer.json, which every family's AutoTokenizer reads
    return str(directory)


@pytest.mark.parametrize("family", sorted(HF_CONFIGS))
def test_family_fine_tunes_with_strategies_predicts_and_exports(family, tmp_path):
    """One run per family through the one trainer, the strategies composed: LoRA on the family's attention
    projections, FGM on its embedding output, R-Drop and layer-wise decay over its layers. Only what LoRA
    trains and the head move; the export (LoRA merged) to the family's own class gives jaxft's
    probabilities."""
    config = tiny.get_config()
    config.model.checkpoint = _checkpoint(family, tmp_path / "checkpoint")
    config.model.tokenizer = ""
    config.training.num_train_steps = 3
    config.training.eval_every = 3
    config.training.checkpoint_every = 3
    config.peft.method = "lora"
    config.peft.lora_targets = ("qkv",) if family == "modernbert" else ("query", "value")
    config.adversarial.method = "fgm"
    config.regularization.rdrop_alpha = 1.0
    config.optimizer.layer_decay = 0.8
    workdir = tmp_path / "run"
    final = train.train_and_evaluate(config, str(workdir))
    assert 0.0 <= final["eval"]["accuracy"] <= 1.0 and np.isfinite(final["eval"]["loss"])
    config.training.num_train_steps = 4  # resumed: the workdir's model config is read back and agrees
    train.train_and_evaluate(config, str(workdir))
    assert json.loads((workdir / "final_metrics.json").read_text())["params_from_step"] in (3, 4)

    run = predict.load_run(str(workdir))
    assert type(run.bert_config).model_type == family
    peft = peft_lib.from_config(run.config)
    base = trained.base_params(
        run.config, predict.create_model(run.config, run.bert_config, 2, run.tokenizer)
    )
    base = flatten(base)
    moved = {path for path, value in flatten(run.params).items() if not np.array_equal(value, base[path])}
    assert moved and all(peft.trains(path) for path in moved)
    assert any(name.endswith("_lora") for path in moved for name in path)

    examples = readers.read_examples(run.config.data.eval_path, text_field="text", label_field="label")[:12]
    ours = predict.predict_probabilities(run, examples)
    out = export.export(str(workdir), str(tmp_path / "hf"))
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(exported).__name__ == families.named(family).class_prefix + "ForSequenceClassification"
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    encoded = tokenizer(
        [e.text for e in examples], truncation=True, max_length=32, padding=True, return_tensors="pt"
    )
    if family in ("distilbert", "deberta-v2", "modernbert") or HF_CONFIGS[family]().type_vocab_size < 2:
        encoded.pop("token_type_ids", None)
    with torch.no_grad():
        theirs = torch.softmax(exported(**encoded).logits, -1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def flatten(tree) -> dict:
    return {path: np.asarray(value) for path, value in traverse_util.flatten_dict(dict(tree)).items()}
