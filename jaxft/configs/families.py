"""SST-2 with each encoder family's base checkpoint: the SST-2 recipe (jaxft/configs/sst2.py) on another
encoder.

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.families:roberta --workdir runs/roberta

The variant names the family: bert, roberta, xlm-roberta, electra, distilbert, deberta-v3, modernbert. Each
takes its Hugging Face hub checkpoint (downloaded once into the hub cache, so the first run needs the
network; `HF_HUB_OFFLINE=1` then runs from the cache) and the learning rate its authors fine-tuned GLUE with
(base sizes: RoBERTa 2e-5, ELECTRA 1e-4, DeBERTa-v3 2e-5, ModernBERT 8e-5; the rest 5e-5). DeBERTa-v3 ships a
SentencePiece model only, which transformers converts to a fast tokenizer with the `sentencepiece` extra
(`pip install 'jaxft[sentencepiece]'`). For LoRA, ModernBERT's attention projection is one fused layer:
`--config.peft.lora_targets='("qkv",)'` (set here).

Measured: not yet (no checkpoint but MiniLM installs offline on the benchmark machine).
"""

from jaxft.configs import sst2

CHECKPOINTS = {
    "bert": ("google-bert/bert-base-uncased", 5e-5),
    "roberta": ("FacebookAI/roberta-base", 2e-5),
    "xlm-roberta": ("FacebookAI/xlm-roberta-base", 2e-5),
    "electra": ("google/electra-base-discriminator", 1e-4),
    "distilbert": ("distilbert/distilbert-base-uncased", 5e-5),
    "deberta-v3": ("microsoft/deberta-v3-base", 2e-5),
    "modernbert": ("answerdotai/ModernBERT-base", 8e-5),
}


def get_config(variant: str = "roberta"):
    if variant not in CHECKPOINTS:
        raise ValueError(f"unknown variant {variant!r} ({', '.join(CHECKPOINTS)})")
    config = sst2.get_config()
    config.model.checkpoint, config.optimizer.learning_rate = CHECKPOINTS[variant]
    if variant == "modernbert":
        config.peft.lora_targets = ("qkv",)
    return config
