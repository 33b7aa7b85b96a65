"""A bag-of-words baseline beside the fine-tuned encoder on the same files: TF-IDF of word uni- and
bigrams (sublinear tf, min_df 2) and a linear SVM (scikit-learn's LinearSVC, C=1); test accuracy, macro-F1.

    python bench/tfidf_baseline.py --train ../shared/data/20newsgroups/train.jsonl.gz \
        --test ../shared/data/20newsgroups/test.jsonl.gz

The texts as jaxft reads them (`jaxft.data.readers`), nothing stripped (20 Newsgroups: headers kept).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxft.data import readers  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    args = parser.parse_args()

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.svm import LinearSVC

    start = time.time()
    train, test = (
        readers.read_examples(path, text_field=args.text_field, label_field=args.label_field)
        for path in (args.train, args.test)
    )
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    features = vectorizer.fit_transform([e.text for e in train])
    classifier = LinearSVC(C=1.0).fit(features, [e.label for e in train])
    predicted = classifier.predict(vectorizer.transform([e.text for e in test]))
    truth = [e.label for e in test]
    result = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "train_examples": len(train),
        "test_examples": len(test),
        "wall_s": round(time.time() - start, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
