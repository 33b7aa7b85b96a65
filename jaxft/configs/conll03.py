"""CoNLL-2003 English NER (token classification) with MiniLM-L6: seqeval's strict entity-level F1.

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.conll03 --workdir runs/conll03
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.conll03:tiny --workdir runs/ner  #
    smoke

Files (`$JAXFT_DATA/conll2003/`): eng.train (14,041 sentences), eng.testa (dev, 3,250), eng.testb (test,
3,453); columns `token POS chunk NER`, `-DOCSTART-` lines, a blank line between sentences. Tags are IOB1 and
are converted to IOB2 on reading (task.tag_scheme="iob1"); the tag set is O and B-/I- of LOC, MISC, ORG, PER.
Only a word's first sub-token is trained and read (task.subword_labels="first"); words cut off by
max_seq_length are predicted "O" (so they still count). Recipe: max_seq_length 128, batch 32, AdamW lr 5e-5
with 10% warm-up, weight decay 0.01, 3 epochs (1,323 steps), evaluated every epoch; best checkpoint by
entity micro-F1 on dev, reported on dev and test. Measured (`bench/tasks.sh DATA conll03`, 3 epochs,
2-core CPU, 2026-12-07): entity micro-F1 dev 0.8972, test 0.8588 (after 1 epoch on 2026-11-29: 0.8463,
0.8108; BERT-base: test 92.4). `:tiny` is the same data on jaxft/configs/tiny.py's random 2-layer model: a
pipeline check only.
"""

from jaxft.configs import finetune


def get_config(variant: str = "default"):
    config = finetune.get_config(variant)
    config.task.name = "ner"
    config.task.tag_scheme = "iob1"
    config.task.subword_labels = "first"
    config.task.tag_column = -1
    config.data.train_path = "$JAXFT_DATA/conll2003/eng.train"
    config.data.eval_path = "$JAXFT_DATA/conll2003/eng.testa"
    config.data.test_path = "$JAXFT_DATA/conll2003/eng.testb"
    config.training.best_metric = "auto"  # f1 (entity-level micro average)
    return config
