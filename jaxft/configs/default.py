"""Default fine-tuning config: text (or text-pair) classification on any CSV, TSV or JSONL file.

Every field is documented here, the task-specific ones too (`task.*`: regression, multi-label, NER); task
configs start from this one and change what they need (jaxft/configs/mrpc.py, stsb.py, multilabel.py,
conll03.py).

Run (paths come from the command line or environment variables, never a default outside the repo):

    python train.py --config jaxft.configs.default --workdir runs/x \
        --config.model.checkpoint=PATH_TO_HF_BERT_DIR \
        --config.data.train_path=train.jsonl --config.data.eval_path=dev.jsonl \
        --config.data.text_field=text --config.data.label_field=label

Paths may contain environment variables (`--config.data.train_path='$DATA/sst2/train.tsv'`).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds parameter init of new layers, dropout and the data order

    # ---- task ---------------------------------------------------------------------------------------------
    # What is learnt from the labels (jaxft/tasks/): the head, the loss, the evaluation report.
    config.task = task = ml_collections.ConfigDict()
    # "classification" (one label per text or pair; softmax cross-entropy; sklearn report),
    # "regression" (one float per text or pair; MSE; Pearson / Spearman / MSE report),
    # "multilabel" (any subset of the labels; sigmoid + binary cross-entropy; sklearn multi-label report),
    # "ner" (a tag per word of CoNLL column files; token cross-entropy; seqeval entity-level report),
    # "qa", "pet", "relation", "mlm" (see below).
    task.name = "classification"
    task.threshold = 0.5  # multilabel: a label is predicted when its sigmoid probability exceeds this
    task.label_separator = ","  # multilabel: joins an example's labels in a CSV/TSV cell (JSONL: a list)
    # multilabel: "" (keep task.threshold), "macro_f1" or "micro_f1": after training, the threshold (0.01 to
    # 0.99 by 0.01) that maximises it on the eval split replaces task.threshold for the final reports, predict
    # and export (saved as WORKDIR/threshold.json); the evaluations during training use task.threshold.
    task.tune_threshold = ""
    task.subword_labels = "first"  # ner: train on a word's first sub-token ("first") or all of them ("all")
    task.tag_scheme = "iob2"  # ner: the files' tags: "iob2" (B- starts every entity) or "iob1" (CoNLL-2003)
    task.tag_column = -1  # ner: 0-based column of the tag in the CoNLL file; -1 = the last
    # "qa" (an answer span per question of SQuAD v1.1 JSON files; start/end cross-entropy; official EM / F1):
    task.doc_stride = 128  # qa: tokens shared by consecutive windows of a long context (HF `stride`)
    task.max_query_length = 64  # qa: a question is cut to this many tokens
    task.max_answer_length = 30  # qa: the longest answer span, in tokens
    task.n_best = 20  # qa: start and end candidates per window when decoding the answer
    # "pet" (prompt-based classification through the checkpoint's masked-LM head, PET / LM-BFF style):
    task.template = "{text} It was [MASK]."  # pet: {text} (and {text_pair}) filled in; one [MASK]
    task.verbalizer = config_dict.placeholder(tuple)  # pet: one single-token word per label, in label order
    # "relation" (the relation between two marked entities of a text; softmax cross-entropy; sklearn report):
    task.head_field = "head"  # relation: key / column of the first entity's [start, end) character span
    task.tail_field = "tail"  # relation: key / column of the second entity's [start, end) character span
    task.relation_pooling = "markers"  # relation: "markers" (the two start markers' vectors) or "cls"
    # "mlm" (continued masked-LM pre-training on unlabelled text: a .txt file, a document a line, or the
    # data.text_field of JSONL / CSV / Parquet; labels ignored; docs/pretraining.md). Masks are drawn anew
    # every step on the device from the run's key; evaluation uses one fixed mask. Reports masked-token
    # accuracy, loss and perplexity:
    task.mlm_probability = 0.15  # mlm: share of the tokens (special tokens and padding never) to predict
    task.mlm_mask_ratio = 0.8  # mlm: share of the chosen tokens replaced by the mask token
    task.mlm_random_ratio = 0.1  # mlm: share replaced by a random token (the rest stay unchanged)
    task.whole_word_mask = False  # mlm: choose whole words (each with mlm_probability) and mask all pieces
    # mlm: True packs the documents, joined by the separator token, into rows of data.max_seq_length tokens
    # (run_mlm's group_texts); False gives each document a row of its own, cut to data.max_seq_length
    task.mlm_packing = True

    # ---- model --------------------------------------------------------------------------------------------
    config.model = model = ml_collections.ConfigDict()
    model.checkpoint = config_dict.placeholder(str)  # Hugging Face BERT dir (config.json + model.safetensors)
    model.init_from_workdir = config_dict.placeholder(
        str
    )  # warm start: params of another jaxft run's workdir
    model.tokenizer = config_dict.placeholder(str)  # tokenizer dir; default: model.checkpoint
    # compute dtype: "float32" or "bfloat16" (params and optimizer state stay float32); on a CPU with AMX
    # bfloat16 steps take ~60% of float32's time (bench/README.md)
    model.dtype = "float32"
    model.attention = "auto"  # "auto" (cuDNN fused on GPU, XLA elsewhere), "xla" or "cudnn"
    model.remat = False  # recompute each layer in the backward pass to save memory on long sequences
    model.classifier_dropout = config_dict.placeholder(
        float
    )  # dropout before the head; default: hidden dropout
    model.hidden_dropout = config_dict.placeholder(
        float
    )  # override the checkpoint's hidden dropout (0 = off)
    model.attention_dropout = config_dict.placeholder(float)  # override the checkpoint's attention dropout
    # Architecture of a randomly initialised encoder, used only when model.checkpoint is unset.
    model.random_init = random_init = ml_collections.ConfigDict()
    random_init.hidden_size = 768  # width of every layer
    random_init.num_hidden_layers = 12  # transformer layers
    random_init.num_attention_heads = 12  # heads per layer (hidden_size must divide evenly)
    random_init.intermediate_size = 3072  # feed-forward width
    random_init.max_position_embeddings = 512  # longest sequence the position table covers
    random_init.hidden_dropout_prob = 0.1  # dropout on embeddings and sub-layer outputs
    random_init.attention_probs_dropout_prob = 0.1  # dropout on attention weights

    # ---- data ---------------------------------------------------------------------------------------------
    config.data = data = ml_collections.ConfigDict()
    # Labelled examples: CSV / TSV / JSONL (optionally .gz), Parquet, Arrow, a datasets save_to_disk
    # directory, hf:NAME[:CONFIG]:SPLIT (the local datasets cache) or tfds:NAME[/CONFIG]:SPLIT
    # (docs/data.md); ner: also a CoNLL column file, qa: also SQuAD JSON
    data.train_path = config_dict.placeholder(str)
    data.eval_path = config_dict.placeholder(str)  # evaluated every training.eval_every steps and at the end
    data.test_path = config_dict.placeholder(str)  # evaluated once at the end (labelled), if given
    # "auto" (by extension or directory), "csv", "tsv", "jsonl", "parquet", "arrow" or "hf" (a datasets
    # save_to_disk directory); hf: and tfds: paths are read as such whatever it says; a data set as
    # distributed: "semeval2010" (relation: SemEval-2010 Task 8's .TXT blocks) or "goemotions" (multilabel:
    # its TSV, names from emotions.txt)
    data.format = "auto"
    data.has_header = True  # CSV/TSV: first row names the columns; False: fields are 0-based column indices
    data.text_field = "text"  # column / key holding the text (ner records: the words)
    data.text_pair_field = config_dict.placeholder(str)  # second text for sentence-pair tasks (token type 1)
    data.label_field = "label"  # column / key holding the label (multilabel: a list; ner records: the tags)
    data.labels = config_dict.placeholder(
        tuple
    )  # label (ner: tag) vocabulary in order; default: sorted train labels (ner: "O", then B-/I- per type)
    data.positive_label = config_dict.placeholder(str)  # also report this class's F1 as "f1" (GLUE MRPC)
    # Class weights of the loss, for imbalanced data (docs/strategies.md); unset = unweighted. "balanced":
    # scikit-learn's n_samples / (n_classes * count) on the train split as trained on (ner: its word tags;
    # multilabel: each label's pos_weight n_negative / n_positive); or label -> weight, as a dict in a config
    # file, `--config.data.class_weights='{"pos": 2.0}'` or the string "pos=2.0,neg=1.0" (unlisted labels:
    # 1.0). Classification, pet and relation: weighted cross-entropy normalised by the total weight, as
    # PyTorch's CrossEntropyLoss(weight=); multilabel: BCEWithLogitsLoss(pos_weight=); ner: weighted token
    # cross-entropy. The eval loss is weighted too (its report says so). Saved as WORKDIR/class_weights.json.
    data.class_weights = config_dict.placeholder(object)
    data.max_train_examples = 0  # if > 0, train on a fixed random subset of this many (seeded by `seed`)
    data.max_eval_examples = 0  # if > 0, evaluate eval/test on a fixed random subset of this many
    data.max_seq_length = 128  # tokens per example after truncation, [CLS] and [SEP] included
    # What a text longer than max_seq_length tokens becomes (docs/long-inputs.md; classification only):
    # "truncate" (its first tokens), "head_tail" (its first data.head_tokens and its last tokens: Sun et al.
    # 2019) or "windows" (overlapping windows of max_seq_length tokens, each a training example with the
    # text's label; evaluation and prediction average a text's window logits: one result per text).
    data.long_inputs = "truncate"
    data.head_tokens = -1  # head_tail: tokens kept from a cut text's start, the rest from its end; -1 = 1/4
    data.window_stride = 0  # windows: tokens shared by consecutive windows (like task.doc_stride)
    data.max_windows = 0  # windows: at most this many windows per text (its first ones); 0 = no cap
    data.num_buckets = 4  # length buckets up to max_seq_length; 1 pads everything to max_seq_length
    data.num_shards = 0  # train-data shards over processes; 0 = one per process (see jaxft.training.pipeline)
    data.k_shot = 0  # if > 0, train on k examples per class (seeded by `seed`): few-shot experiments
    data.cache = True  # cache tokenised splits in WORKDIR/cache (ner, qa and mlm splits are tokenised anew)

    # ---- optimizer ----------------------------------------------------------------------------------------
    config.optimizer = opt = ml_collections.ConfigDict()
    opt.name = "adamw"  # "adamw" or "sgd" (with momentum)
    opt.learning_rate = 5e-5  # peak learning rate, reached at the end of warm-up
    opt.schedule = "linear"  # "linear" (warm-up, then linear decay to 0) or "constant" (after warm-up)
    opt.warmup_steps = 0  # warm-up steps; if 0, warmup_ratio decides
    opt.warmup_ratio = 0.0  # warm-up as a fraction of all training steps
    opt.weight_decay = 0.01  # decoupled weight decay (AdamW); biases and LayerNorm are never decayed
    opt.l2_penalty = 0.0  # coefficient of 0.5 * ||w||^2 added to the loss (same mask); distinct from decay
    opt.b1 = 0.9  # Adam first-moment decay
    opt.b2 = 0.999  # Adam second-moment decay
    opt.eps = 1e-8  # Adam epsilon (as torch.optim.AdamW)
    opt.momentum = 0.9  # SGD momentum
    opt.nesterov = False  # SGD Nesterov momentum
    opt.max_grad_norm = 1.0  # clip gradients to this global norm; 0 disables clipping
    opt.layer_decay = 1.0  # layer-wise lr decay: layer i of n gets lr * decay^(n - i); 1.0 = off

    # ---- strategies (jaxft/strategies/): each a switch on the same trainer, composable ---------------------
    # Parameter-efficient fine-tuning: what trains (the task head always does); checkpoints hold only that.
    config.peft = peft = ml_collections.ConfigDict()
    peft.method = "none"  # "none" (everything trains), "bitfit", "lora", "adapter", "prompt" or "prefix"
    peft.lora_rank = 8  # lora: rank r of the update B @ A
    peft.lora_alpha = 16.0  # lora: the update is scaled by alpha / r
    peft.lora_dropout = 0.0  # lora: dropout on the input of the low-rank path
    peft.lora_targets = ("query", "value")  # lora: names of the Dense layers adapted in every BERT layer
    peft.adapter_size = 64  # adapter: bottleneck width of each Houlsby adapter
    peft.num_virtual_tokens = 20  # prompt / prefix: trainable virtual tokens
    # Adversarial training on the embedding output (Miyato et al. FGM, Madry et al. PGD, Zhu et al. FreeLB).
    config.adversarial = adversarial = ml_collections.ConfigDict()
    adversarial.method = "none"  # "none", "fgm", "pgd" or "freelb"
    adversarial.epsilon = 1.0  # L2 bound of each example's perturbation (0 = plain training, exactly)
    adversarial.step_size = 0.3  # pgd / freelb: ascent step size
    adversarial.steps = 3  # pgd / freelb: ascent steps K
    # Regularisation beyond weight decay and dropout.
    config.regularization = regularization = ml_collections.ConfigDict()
    regularization.label_smoothing = 0.0  # classification: targets (1 - s) one-hot + s / classes
    regularization.rdrop_alpha = 0.0  # R-Drop: weight of the symmetric KL between two dropout passes
    # Data augmentation of the train split only (jaxft/strategies/augment.py), seeded by `seed`.
    config.augment = augment = ml_collections.ConfigDict()
    augment.eda_ops = ()  # EDA operations: any of "synonym", "insert", "swap", "delete"; () = off
    augment.eda_alpha = 0.1  # EDA: fraction of an example's words each operation changes
    augment.num_augmented = 1  # new examples per training example (EDA and paraphrases)
    augment.synonyms = config_dict.placeholder(str)  # EDA synonym file; default: the one jaxft ships
    augment.paraphrases_path = config_dict.placeholder(str)  # JSONL {"text", "paraphrases": [...]}

    # ---- training -----------------------------------------------------------------------------------------
    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 32  # global batch (all devices, all hosts) per optimizer step
    training.grad_accum_steps = 1  # micro-batches per step: each device sees batch_size / devices / this
    # How steps run over the devices (jaxft/training/parallel.py), with the same results: "pmap" (the state
    # replicated on every device), or one sharded jit over a mesh of all devices: "dp" (the state replicated)
    # or "fsdp" (parameters and optimizer state sharded over the devices: for encoders too large to
    # replicate).
    training.parallelism = "pmap"
    # fsdp only: parameter (and Adam moment) leaves with fewer elements stay replicated; sharding a bias or a
    # LayerNorm scale saves almost no memory and adds a gather per step. 0 shards every leaf it can.
    training.fsdp_min_size = 16384
    training.num_epochs = 3  # passes over the train split
    training.num_train_steps = -1  # if > 0, overrides num_epochs
    training.eval_batch_size = 128  # global evaluation batch (rounded up to a multiple of the devices)
    training.eval_every = 0  # evaluate every N steps; 0 = at the end of every epoch
    training.log_every = 50  # write train metrics every N steps
    training.checkpoint_every = 500  # save the full train state every N steps (and at the end)
    training.keep_checkpoints = 2  # latest checkpoints kept (the best one is kept separately)
    # Eval metric that picks the best checkpoint and drives early stopping; "auto" = the task's own:
    # accuracy (classification), pearson (regression), micro_f1 (multilabel), f1 (ner: entity micro F1),
    # loss (mlm: masked-token cross-entropy).
    training.best_metric = "auto"
    # "max", "min", or "auto": "min" for the metrics that fall as a model improves (loss, mse, perplexity),
    # else "max"
    training.best_mode = "auto"
    training.early_stopping_patience = 0  # stop after this many evaluations without improvement; 0 = off
    training.early_stopping_min_delta = 0.0  # smallest change that counts as an improvement
    training.max_nonfinite_steps = (
        0  # stop once more steps than this had a non-finite loss (they are skipped)
    )
    training.async_checkpoints = True  # write checkpoints in the background
    # On one CPU device: XLA's per-step temporaries stay in glibc's heap instead of being mapped (and page-
    # faulted) afresh every step (jaxft/cpu.py); the process then keeps its peak heap until it exits.
    # Applied by the command line (train.py, jaxft-train) for its own process, never by a library call.
    training.keep_cpu_step_memory = True
    training.progress_bar = True  # show a progress bar with loss, learning rate and examples/s
    training.tensorboard = True  # write TensorBoard event files to WORKDIR/tensorboard
    # Where metrics go (docs/tracking.md): any of "tensorboard" (WORKDIR/tensorboard, also needs
    # training.tensorboard), "jsonl" (WORKDIR/metrics.jsonl, which curves.png is drawn from), "mlflow" and
    # "wandb" (pip install 'jaxft[mlflow]' / 'jaxft[wandb]'); a tuple or a comma-separated string.
    training.loggers = ("tensorboard", "jsonl")
    training.experiment = "jaxft"  # the MLflow experiment and the W&B project of the run
    return config
