"""Issue 15's parts, each on its own: the teacher's step schedule and collapse handling, transfer-set augmentation,
the small text students' ONNX export, the classical student's ONNX against scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modelfactory import tasks
from modelfactory.compress.export import export_and_verify
from modelfactory.compress.quantize import quantize_dynamic_int8
from modelfactory.factory import teacher_fit
from modelfactory.factory.teacher_fit import class_weights, epochs_for, is_collapsed, majority_macro_f1
from modelfactory.tasks.base import ONNX_FILE, copy_model_files
from modelfactory.tasks.text_augment import MASK, augment_texts
from modelfactory.tasks.text_classical import ClassicalPredictor, export_classical, fit_classical


@pytest.fixture(scope="module")
def reviews(corpus_df) -> pd.DataFrame:
    parts = [g.sample(n=60, random_state=1) for _, g in corpus_df.groupby("label")]
    return pd.concat(parts).sample(frac=1, random_state=1).reset_index(drop=True)


# --- teacher schedule and collapse ------------------------------------------------------------------------------
def test_epochs_are_raised_to_reach_the_minimum_number_of_steps():
    assert epochs_for(1.0, n_rows=300, batch_size=32, min_steps=300) == pytest.approx(300 / 10)
    assert epochs_for(3.0, n_rows=100_000, batch_size=32, min_steps=300) == 3.0  # big data: epochs as asked
    assert epochs_for(2.0, n_rows=10, batch_size=32, min_steps=0) == 2.0


def test_class_weights_balance_rare_classes():
    w = class_weights(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2]), 3)
    assert w[0] < w[1] < w[2]
    assert torch.allclose(class_weights(torch.tensor([0, 1, 2, 0, 1, 2]), 3), torch.ones(3))


def test_collapse_is_no_better_than_the_majority_class():
    labels = ["a", "b", "c"]
    floor = majority_macro_f1(["a"] * 5 + ["b"] * 3 + ["c"] * 2, ["a", "a", "b", "c"], labels)
    assert floor == pytest.approx((2 * 0.5 / 1.5) / 3)  # F1 of 'a' = 2PR/(P+R), P=0.5, R=1; others 0
    assert is_collapsed(floor, floor) and is_collapsed(floor + 0.01, floor)
    assert not is_collapsed(floor + 0.3, floor)


class _FakeFit(teacher_fit.TeacherFit):
    """TeacherFit whose attempts are scripted: the retry policy alone, without training anything."""

    def __init__(self, work: Path, scores: list[float], retries: int):
        self.ctx = type("Ctx", (), {"work": work, "out": work / "out", "notes": {}})()
        self.params = {"retries": retries}
        self.majority_f1 = 0.2
        self.log_path = work / "attempts.json"
        self.scores, self.ran = scores, []
        self.task = type("Task", (), {"name": "fake", "load": staticmethod(lambda d: d),
                                      "save": staticmethod(lambda b, out: None)})()
        self.labels = ["a", "b"]

    def _attempt(self, k):
        self.ran.append(k)
        f1 = self.scores[k]
        return {"attempt": k + 1, "lr": 1.0, "seed": k, "epochs": 1, "steps": 10, "best_step": 10,
                "val_accuracy": f1, "val_macro_f1": f1, "final_loss": 0.0, "collapsed": is_collapsed(f1, 0.2),
                "dir": str(self.ctx.work / f"attempt{k}")}


def test_a_collapsed_run_is_retried_until_one_learns(tmp_path):
    fit = _FakeFit(tmp_path, [0.21, 0.8, 0.9], retries=2)
    metrics = fit.run()["metrics"]
    assert fit.ran == [0, 1]  # stopped at the first attempt that learned
    assert metrics["collapsed"] is False and metrics["val_macro_f1"] == 0.8
    assert [a["collapsed"] for a in metrics["attempts"]] == [True, False]


def test_every_attempt_collapsing_is_reported_not_hidden(tmp_path):
    fit = _FakeFit(tmp_path, [0.21, 0.1, 0.22], retries=2)
    metrics = fit.run()["metrics"]
    assert fit.ran == [0, 1, 2] and metrics["collapsed"] is True
    assert metrics["val_macro_f1"] == 0.22  # the best of them is kept


def test_finished_attempts_are_not_rerun_after_a_restart(tmp_path):
    first = _FakeFit(tmp_path, [0.21, 0.8], retries=1)
    first._attempt = lambda k: (_ for _ in ()).throw(KeyboardInterrupt) if k == 1 else _FakeFit._attempt(first, k)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert len(json.loads((tmp_path / "attempts.json").read_text())) == 1
    again = _FakeFit(tmp_path, [0.21, 0.8], retries=1)
    assert again.run()["metrics"]["val_macro_f1"] == 0.8 and again.ran == [1]


# --- augmentation ------------------------------------------------------------------------------------------------
def test_augmentation_is_deterministic_by_seed_and_leaves_the_originals_alone(reviews):
    texts = reviews["text"].tolist()[:50]
    before = list(texts)
    a = augment_texts(texts, 4, seed=3)
    assert a == augment_texts(texts, 4, seed=3)
    assert a != augment_texts(texts, 4, seed=4)
    assert texts == before and not set(a) & set(texts)  # new texts only; inputs untouched
    assert 100 < len(a) <= 200 and any(MASK in t for t in a)


def test_the_text_family_augments_inputs_and_keeps_labels_out_of_it(reviews):
    family = tasks.get("text-classification")
    out = family.augment_rows(reviews, 2, 0, {})
    assert list(out.columns) == ["text"] and len(out) > len(reviews)


def test_the_transfer_set_is_labeled_in_length_sorted_batches_and_returned_in_row_order():
    """Batches of similar length are what make labeling the transfer set cheap; the logits must still land on
    their own rows (a mix-up would distil every student on another text's soft labels)."""
    from types import SimpleNamespace

    from modelfactory.factory.stages import _teacher_logits

    batches: list[list[str]] = []

    class Teacher:  # logits that name their text: its length and its first letter
        def encode(self, texts):
            batches.append(list(texts))
            return texts

        def logits(self, texts):
            return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)

    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefgh"), size=int(n))) for n in rng.integers(1, 300, size=200)]
    out = _teacher_logits(SimpleNamespace(progress=lambda *a: None), Teacher(), texts)
    np.testing.assert_array_equal(out, [[len(t), ord(t[0])] for t in texts])
    assert sorted(t for b in batches for t in b) == sorted(texts)
    spread = max(max(map(len, b)) - min(map(len, b)) for b in batches)
    assert spread < 150  # unsorted batches of 64 from 1-300 characters would span nearly all of it


def test_rows_a_max_rows_sample_left_out_join_the_transfer_set_without_labels_or_held_out_inputs(corpus_df, tmp_path):
    """A split that samples `max_rows` (a quick teacher on big data) leaves the user's other rows out; their inputs
    are real texts a student can learn the teacher from. None may equal a validation or test input: the corpus
    has every text twice here, so a held-out text's twin is among the left-out rows unless it is filtered."""
    from types import SimpleNamespace

    from modelfactory.data import versions
    from modelfactory.data.split import sample_rows, stratified_split
    from modelfactory.factory.stages import left_out_inputs

    rows = corpus_df.groupby("label").head(40)
    csv = tmp_path / "twice.csv"
    pd.concat([rows, rows]).to_csv(csv, index=False)
    ref = versions.add_file("twice", csv, {"text": "text", "label": "label"})
    df = versions.load_rows(ref.artifact_id)
    (tmp_path / "split").mkdir()
    parts = stratified_split(df, val=0.1, test=0.2, seed=0, max_rows=60)
    for name, part in parts.items():
        part.to_parquet(tmp_path / "split" / f"{name}.parquet")
    held_out = set(parts["val"]["text"]) | set(parts["test"]["text"])
    _, left_rows = sample_rows(df, 60, 0)
    assert held_out & set(left_rows["text"])  # twins of held-out texts were left out: the filter has work to do

    split = SimpleNamespace(path=tmp_path / "split", manifest={"params": {"max_rows": 60, "seed": 0},
                                                               "inputs": {"dataset": ref.artifact_id}})
    left = left_out_inputs(split, "text", limit=10_000)
    assert list(left.columns) == ["text"]  # the rows' labels stay behind: the teacher labels them
    assert set(left["text"]) == set(left_rows["text"]) - held_out and left["text"].is_unique
    assert len(left_out_inputs(split, "text", limit=7)) == 7
    split.manifest["params"] = {"seed": 0}  # no sample, nothing left out
    assert left_out_inputs(split, "text", limit=10_000).empty


def test_rows_a_train_rows_cut_dropped_join_the_transfer_set_unlabeled(corpus_df, tmp_path):
    """An order on a few labeled rows of a bigger corpus (`split.train_rows`) still has the other training rows'
    texts: they join the transfer set unlabeled, with the rows a `max_rows` sample left out, and never a text the
    order validates or tests on."""
    from types import SimpleNamespace

    from modelfactory.data import versions
    from modelfactory.data.split import sample_rows, stratified_cut, stratified_split
    from modelfactory.factory.stages import left_out_inputs

    csv = tmp_path / "rows.csv"
    corpus_df.groupby("label").head(60).to_csv(csv, index=False)
    ref = versions.add_file("rows", csv, {"text": "text", "label": "label"})
    df = versions.load_rows(ref.artifact_id)

    def split_of(max_rows: int | None) -> tuple[SimpleNamespace, set[str], set[str]]:
        """The split stage's files for these params, and the texts the cut dropped and the sample left out."""
        params = {"val": 0.1, "test": 0.2, "seed": 0, "max_rows": max_rows, "train_rows": 30}
        parts = stratified_split(df, val=0.1, test=0.2, seed=0, max_rows=max_rows)
        before_cut = parts["train"]
        parts["train"] = stratified_cut(parts["train"], 30, 0)
        out = tmp_path / f"split{max_rows}"
        out.mkdir()
        for name, part in parts.items():
            part.to_parquet(out / f"{name}.parquet")
        held_out = set(parts["val"]["text"]) | set(parts["test"]["text"])
        return (SimpleNamespace(path=out, manifest={"params": params, "inputs": {"dataset": ref.artifact_id}}),
                set(before_cut["text"]) - set(parts["train"]["text"]) - held_out,
                set(sample_rows(df, max_rows, 0)[1]["text"]) - held_out)

    split, cut_away, sampled_away = split_of(150)
    assert len(cut_away) >= 50 and sampled_away  # both sources have rows to give
    left = left_out_inputs(split, "text", limit=10_000)
    assert list(left.columns) == ["text"] and left["text"].is_unique
    assert set(left["text"]) == cut_away | sampled_away
    few = left_out_inputs(split, "text", limit=20)
    assert len(few) == 20 and set(few["text"]) <= cut_away | sampled_away
    split, cut_away, sampled_away = split_of(None)  # a cut alone: only the rows it dropped
    assert not sampled_away and len(cut_away) >= 90
    assert set(left_out_inputs(split, "text", limit=10_000)["text"]) == cut_away


# --- students and their ONNX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "tokens", "init"), [("bag", "word", "teacher"), ("cnn", "word", "teacher"),
                                                     ("bag", "teacher", "teacher_outputs"),
                                                     ("lstm", "teacher", "teacher_outputs")])
def test_small_students_export_to_onnx_that_matches_pytorch(arch, tokens, init, reviews, tiny_teacher, tmp_path):
    family = tasks.get("text-classification")
    labels = sorted(reviews["label"].unique())
    teacher = family.load_teacher(str(tiny_teacher), labels, {"max_length": 32}, reviews)
    params = {"arch": arch, "size": "xs", "tokens": tokens, "init": init}
    student = family.build_student(teacher, params, reviews)
    if tokens == "teacher":  # the teacher's word pieces, embeddings from its outputs for each token alone
        assert len(student.preprocessor) == len(teacher.preprocessor)
        assert float(student.model.embed.weight[1000:1010].detach().abs().sum()) > 0
    assert student.model.embed.weight.shape[0] == len(student.preprocessor)
    batch = family.collate(family.encode(student, reviews.head(3)), [0, 1, 2])
    assert family.forward(student.model, batch).logits.shape == (3, len(labels))
    (tmp_path / "model").mkdir()
    (tmp_path / "onnx").mkdir()
    family.save(student, tmp_path / "model")
    reloaded = family.load(tmp_path / "model")
    parity = export_and_verify(family, reloaded, tmp_path / "onnx", reviews.head(24))  # raises beyond 1e-3
    assert parity["parity_argmax_agreement"] == 1.0
    assert (tmp_path / "onnx" / "tokenizer.json").is_file()
    predictor = family.load_predictor(tmp_path / "onnx")
    assert predictor.predict(["a dazzling film"])[0][0] in labels


def test_a_bilstm_answers_a_row_the_same_alone_or_beside_longer_rows(reviews, tiny_teacher, tmp_path):
    """Padding must not reach a row's states: its backward LSTM reads the row's own tokens reversed, so the
    answer to a short review is the same alone and in a batch padded to a long one, in PyTorch and in its ONNX
    (a server's dynamic batching must not change answers)."""
    family = tasks.get("text-classification")
    labels = sorted(reviews["label"].unique())
    teacher = family.load_teacher(str(tiny_teacher), labels, {"max_length": 32}, reviews)
    student = family.build_student(teacher, {"arch": "lstm", "size": "xs", "tokens": "word", "init": "random"},
                                   reviews)
    student.model.eval()  # dropout off: the same weights, the same answer
    short, long = "a dazzling film", " ".join(reviews["text"].tolist()[:3])
    alone = family.collate(family.encode(student, pd.DataFrame({"text": [short], "label": [labels[0]]})), [0])
    batch = family.collate(family.encode(student, pd.DataFrame({"text": [short, long], "label": labels[:2]})),
                           [0, 1])
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1] + 5  # the short row really is padded
    with torch.no_grad():
        torch.testing.assert_close(family.forward(student.model, batch).logits[:1],
                                   family.forward(student.model, alone).logits, atol=1e-5, rtol=0)
    for d in ("model", "onnx", "int8"):
        (tmp_path / d).mkdir()
    family.save(student, tmp_path / "model")
    export_and_verify(family, family.load(tmp_path / "model"), tmp_path / "onnx", reviews.head(24))
    quantize_dynamic_int8(tmp_path / "onnx" / ONNX_FILE, tmp_path / "int8" / ONNX_FILE)
    copy_model_files(tmp_path / "onnx", tmp_path / "int8")
    assert (tmp_path / "int8" / ONNX_FILE).stat().st_size < (tmp_path / "onnx" / ONNX_FILE).stat().st_size / 2
    # Dynamic INT8 quantizes activations with one scale per batch, so a companion moves it a little (any model)
    for d, atol in (("onnx", 1e-5), ("int8", 5e-3)):
        predictor = family.load_predictor(tmp_path / d)
        np.testing.assert_allclose(predictor.predict_proba([short, long])[:1], predictor.predict_proba([short]),
                                   atol=atol, err_msg=d)


def test_tiny_student_is_a_narrow_encoder_over_the_datas_tokens_and_exports(reviews, tmp_path):
    """`arch: tiny` from the real MiniLM teacher: the size preset's depth and widths (not the order's `layers`),
    the vocabulary cut to the rows' tokens, every weight trainable, and an ONNX export that matches PyTorch."""
    from modelfactory.tasks.pretrained import resolve

    family = tasks.get("text-classification")
    labels = sorted(reviews["label"].unique())
    teacher = family.load_teacher(resolve("sentence-transformers/all-MiniLM-L6-v2"), labels, {"max_length": 32})
    params = family.student_params({"arch": "tiny", "size": "xs", "layers": 6, "vocab": "full", "seed": 0})
    assert "layers" not in params and "vocab" not in params  # the preset decides: the spec's defaults would not
    assert family.student_defaults(params)["transfer"] is True
    student = family.specialize(family.build_student(teacher, params, reviews), reviews, params)
    cfg = student.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (1, 128, 512)
    assert cfg.max_position_embeddings == 32  # the teacher's max_length, not its 512 positions
    embeddings = student.model.get_input_embeddings()
    assert embeddings.weight.shape[0] < len(teacher.preprocessor) // 5 and embeddings.weight.requires_grad
    (tmp_path / "model").mkdir()
    (tmp_path / "onnx").mkdir()
    family.save(student, tmp_path / "model")
    parity = export_and_verify(family, family.load(tmp_path / "model"), tmp_path / "onnx", reviews.head(24))
    assert parity["parity_argmax_agreement"] == 1.0
    assert family.load_predictor(tmp_path / "onnx").predict(["a dazzling film"])[0][0] in labels
    with pytest.raises(ValueError, match="size 'xxl' for tiny"):
        family.build_student(teacher, {"arch": "tiny", "size": "xxl"}, reviews)


@pytest.mark.parametrize("max_features", [None, 300])
def test_classical_student_onnx_matches_scikit_learn(max_features, reviews, tmp_path):
    """The served graph computes what the fitted pipeline does, to float precision: one-letter and non-ASCII
    words (the tokenizer's pattern), repeated words (sublinear tf) and, with a size cap, bigrams whose words were
    cut from the vocabulary (how the n-grams are named for skl2onnx) each broke this before."""
    labels = sorted(reviews["label"].unique())
    train, test = reviews.iloc[:140], reviews.iloc[140:]
    pipe = fit_classical(train["text"], train["label"], max_features=max_features)
    export_classical(pipe, labels, tmp_path)
    texts = test["text"].tolist() + ["I a film, a film: the film of films", "Ça, c'est un beau film naïf",
                                     "", "  ", "ÉTÉ film 1½ x_y"]
    onnx_probs = ClassicalPredictor(tmp_path).predict_proba(texts)
    sk_probs = pipe.predict_proba(texts)
    np.testing.assert_allclose(onnx_probs, sk_probs, atol=1e-5)
    assert tasks.get("text-classification").load_predictor(tmp_path).labels == labels


def test_classical_export_keeps_a_bigram_whose_words_are_not_in_the_vocabulary(tmp_path):
    """A size cap can keep "running mate" and cut "mate" (ties at the cut: it happened on convention-2012)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipe = Pipeline([("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                                               vocabulary=["running mate", "film", "great film"])),
                     ("lr", LogisticRegression())])
    pipe.fit(["his running mate", "a great film", "running mate and film", "great great"], ["a", "b", "a", "b"])
    export_classical(pipe, ["a", "b"], tmp_path)
    texts = ["the running mate", "running mate, running mate", "a film"]
    np.testing.assert_allclose(ClassicalPredictor(tmp_path).predict_proba(texts), pipe.predict_proba(texts),
                               atol=1e-5)


def test_classical_student_fits_a_teachers_probabilities(reviews, tmp_path):
    """Distilling into TF-IDF + LR: one-hot targets give the hard-label fit, and the fit follows whatever
    distribution it is given, not the rows' own labels (so a bug that kept the labels would fail here)."""
    labels = sorted(reviews["label"].unique())
    train, test = reviews.iloc[:140], reviews.iloc[140:]
    one_hot = np.eye(len(labels))[[labels.index(lab) for lab in train["label"]]]
    hard = fit_classical(train["text"], train["label"])
    soft = fit_classical(train["text"], train["label"], soft_targets=one_hot, classes=labels)
    np.testing.assert_allclose(soft.predict_proba(test["text"]), hard.predict_proba(test["text"]), atol=1e-3)

    flipped = np.roll(one_hot, 1, axis=1) * 0.9 + 0.1 / len(labels)  # a "teacher" naming another class, unsure
    contrary = fit_classical(train["text"], train["label"], soft_targets=flipped, classes=labels)
    preds = contrary.predict(train["text"])
    assert (preds != train["label"].to_numpy()).mean() > 0.9
    export_classical(contrary, labels, tmp_path)  # every class present: the export's class check holds
    assert ClassicalPredictor(tmp_path).predict_proba(test["text"].tolist()).shape == (len(test), len(labels))

    with pytest.raises(ValueError, match="soft targets"):
        fit_classical(train["text"], train["label"], soft_targets=one_hot[:10], classes=labels)


# --- blends ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantized", [False, True])
def test_a_blend_is_one_onnx_graph_averaging_its_members(quantized, reviews, tiny_teacher, tmp_path):
    """A neural and a classical student in one graph: its probabilities are the average of the members' own
    (softmax of the neural logits, the TF-IDF model's probabilities) on every row, INT8 member included; raw
    text in through the family's predictor, so serving needs nothing new."""
    from modelfactory.tasks.text_blend import BlendPredictor, blend_probabilities

    family = tasks.get("text-classification")
    labels = sorted(reviews["label"].unique())
    train, test = reviews.iloc[:140], reviews.iloc[140:]
    teacher = family.load_teacher(str(tiny_teacher), labels, {"max_length": 32}, train)
    student = family.build_student(teacher, {"arch": "cnn", "size": "xs", "tokens": "word", "init": "random"}, train)
    neural, classical, blended = (tmp_path / d for d in ("neural", "classical", "blend"))
    for d in (neural, classical, blended):
        d.mkdir()
    export_and_verify(family, student, neural, train.head(8))
    if quantized:
        (tmp_path / "int8").mkdir()
        quantize_dynamic_int8(neural / ONNX_FILE, tmp_path / "int8" / ONNX_FILE)
        for f in neural.iterdir():
            if f.name != ONNX_FILE:
                (tmp_path / "int8" / f.name).write_bytes(f.read_bytes())
        neural = tmp_path / "int8"
    export_classical(fit_classical(train["text"], train["label"]), labels, classical)
    assert family.blend_group({"arch": "classical"}) == "classical" and family.blend_group({"arch": "cnn"}) == "neural"

    family.blend({"neural": neural, "classical": classical}, blended)
    predictor = family.load_predictor(blended)
    assert isinstance(predictor, BlendPredictor) and predictor.labels == labels
    texts = test["text"].tolist()
    neural_predictor = family.load_predictor(neural)
    expected = blend_probabilities(np.concatenate([neural_predictor.logits(neural_predictor.encode(texts[i:i + 8]))
                                                   for i in range(0, len(texts), 8)]),
                                   ClassicalPredictor(classical).predict_proba(texts))
    got = predictor.predict_proba(texts, batch_size=8)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    assert predictor.predict(["a dazzling film"])[0][0] in labels
    # One file: its size is what the registry and the cost figures count, both members' weights included (give or
    # take the members' shape annotations and metadata, which the blend drops).
    members = (neural / ONNX_FILE).stat().st_size + (classical / ONNX_FILE).stat().st_size
    assert abs((blended / ONNX_FILE).stat().st_size - members) <= 0.02 * members

    other = tmp_path / "other"
    other.mkdir()
    relabeled = train.assign(label=train["label"].map(lambda s: f"x-{s}"))
    export_classical(fit_classical(relabeled["text"], relabeled["label"]), sorted(relabeled["label"].unique()), other)
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match="labels differ"):
        family.blend({"neural": neural, "classical": other}, tmp_path / "bad")
