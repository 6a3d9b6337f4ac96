"""Text classification: a Hugging Face encoder + classification head as the teacher; students of five kinds
(`arch`): a shrunken transformer (`transformer`: the teacher's bottom layers; `tiny`: a few narrow layers), a
fastText-style bag of n-grams, a 1-D CNN (text_students.py), or TF-IDF + logistic regression fitted on the
teacher's probabilities (text_classical.py); and blends of a neural and a classical one (text_blend.py). Every
model ships its tokenizer beside its ONNX graph (or tokenizes inside it), so predictors take raw text."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from . import text_students
from .base import (
    ONNX_FILE,
    Bundle,
    Encoded,
    Outputs,
    Predictor,
    TaskFamily,
    onnx_session,
    read_meta,
    write_meta,
)
from .pretrained import load_error, resolve
from .text_augment import augment_texts
from .text_shrink import init_from_teacher, init_narrow_embeddings, layer_map, shrink_vocab

DEFAULT_MAX_LENGTH = 128


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class LogitsOnly(torch.nn.Module):
    """An encoder as its ONNX graph sees it: two feeds in, logits out (no hidden states, no dict)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


class TextClassification(TaskFamily):
    name = "text-classification"
    roles = ("text", "label")
    teacher_min_steps = 200
    teacher_retries = 2

    # --- models -------------------------------------------------------------------------------------
    def load_teacher(self, pretrained: str, labels: list[str], params: Mapping[str, Any],
                     train: pd.DataFrame | None = None) -> Bundle:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        _quiet_transformers()
        path = resolve(pretrained)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={lab: i for i, lab in enumerate(labels)})
        except OSError as e:
            raise load_error(pretrained, e) from e
        max_length = int(params.get("max_length") or DEFAULT_MAX_LENGTH)
        return Bundle(model, tokenizer, list(labels), {"max_length": max_length})

    # Small students distil over the augmented transfer set (Tang et al. 2019): it is what makes them learn
    # from the teacher rather than from the labels alone, and they train on 20x the rows in seconds. Shrunken
    # transformers cost 20x the time on it, so they train on the labeled rows unless a recipe asks otherwise; the
    # tiny one does use it, for 2 epochs (as many row passes as its 4 over the former 15k-row transfer set: 4 over
    # 31k rows took 5.4 minutes of the demo's search).
    STUDENT_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "transformer": {"epochs": 3.0, "lr": 1e-4, "batch_size": 32, "transfer": False},
        "tiny": {"epochs": 2.0, "lr": 6e-4, "batch_size": 32, "transfer": True},
        "bag": {"epochs": 6.0, "lr": 5e-3, "batch_size": 64, "transfer": True},
        "cnn": {"epochs": 5.0, "lr": 2e-3, "batch_size": 64, "transfer": True},
        "lstm": {"epochs": 5.0, "lr": 2e-3, "batch_size": 64, "transfer": True},
        "classical": {"transfer": True},
    }
    STUDENT_PARAMS: ClassVar[dict[str, set[str]]] = {  # what each arch reads; the rest would only split caches
        "transformer": {"layers", "hidden", "heads", "ffn", "layer_map", "freeze_embeddings", "vocab",
                        "hidden_weight", "attention_weight"},
        "tiny": {"size", "hidden_weight", "attention_weight"},
        "bag": {"size", "init", "tokens"}, "cnn": {"size", "init", "tokens"}, "lstm": {"size", "init", "tokens"},
        "classical": {"size", "C"},
    }
    # `tiny`: the teacher's encoder shrunk to a few narrow layers (layers, hidden, ffn per size), its vocabulary cut
    # to the tokens the data uses, every weight trained, distilled over the transfer set at a high learning rate.
    # The narrow width is what makes it 10x smaller than the INT8 teacher; the teacher's tokenizer and its
    # PCA-narrowed embeddings are what it keeps of pretraining (tasks/text_shrink.py). Measured on rotten-tomatoes
    # (INT8, README): xs 0.787 / 2.12 MB and s 0.791 / 2.21 MB (8 epochs), m 0.795 / 2.35 MB (4); bag 0.760.
    TINY_SIZES: ClassVar[dict[str, dict[str, int]]] = {
        "xs": {"layers": 1, "hidden": 128, "ffn": 512}, "s": {"layers": 2, "hidden": 128, "ffn": 256},
        "m": {"layers": 2, "hidden": 128, "ffn": 512}, "l": {"layers": 3, "hidden": 192, "ffn": 384}}
    TRAINING: ClassVar[set[str]] = {"epochs", "lr", "batch_size", "alpha", "temperature", "checkpoint_every"}

    def student_defaults(self, params: Mapping[str, Any]) -> dict[str, Any]:
        arch = params.get("arch") or "transformer"
        if arch not in self.STUDENT_DEFAULTS:
            raise ValueError(f"unknown student arch '{arch}' (use one of {sorted(self.STUDENT_DEFAULTS)})")
        return dict(self.STUDENT_DEFAULTS[arch])

    def student_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        arch = params.get("arch") or "transformer"
        keep = self.STUDENT_PARAMS.get(arch, set(params)) | {"arch", "transfer"}
        if arch != "classical":
            keep |= self.TRAINING
        return {k: v for k, v in params.items() if k in keep}

    def default_search_space(self) -> dict[str, list[Any]]:
        # Small students first: they train in seconds, so a default budget affords many of them; the search's
        # first trials take each arch in this order (cheapest first, the 6-minute default budget may stop before
        # the last), then the sampler narrows in. One shrunken transformer is in the space for data where word
        # order matters more than a budget. Small students read the teacher's word pieces by default (unseen words
        # still split into pieces they know) and start from the teacher's static token embeddings (model2vec); a
        # word vocabulary from the data is the alternative.
        return {"arch": ["bag", "classical", "lstm", "cnn", "tiny", "transformer"], "size": ["s", "m", "xs", "l"],
                "tokens": ["teacher", "word"], "init": ["teacher_outputs", "teacher", "random"],
                "alpha": [0.7, 0.9, 0.5], "temperature": [2.0, 4.0], "quantize": ["dynamic", "none"]}

    def direct_student(self, params: Mapping[str, Any]) -> bool:
        return params.get("arch") == "classical"

    def baseline_student(self) -> dict[str, Any] | None:
        return {"arch": "classical", "size": "l", "C": 10.0}

    blend_groups = ("neural", "classical")

    def blend_group(self, params: Mapping[str, Any]) -> str | None:
        return "classical" if params.get("arch") == "classical" else "neural"

    def blend_members(self) -> list[dict[str, Any]]:
        # Fitted in seconds from the cached transfer set; the compact ones are what keep a blend 10x smaller
        # than the INT8 teacher (a TF-IDF graph stores its n-grams: xs 0.2 MB, s 0.9 MB, l 3.4 MB on rotten-tomatoes).
        return [{"arch": "classical", "size": "xs"}, {"arch": "classical", "size": "s"}]

    def blend(self, members: Mapping[str, Path], out_dir: Path) -> None:
        """The neural member's softmax and the distilled TF-IDF member's probabilities, averaged in one ONNX
        graph (tasks/text_blend.py)."""
        from .text_blend import blend_onnx

        blend_onnx(Path(members["neural"]), Path(members["classical"]), out_dir)

    def fit_student(self, train: pd.DataFrame, params: Mapping[str, Any], out_dir: Path,
                    teacher_labels: list[str] | None = None,
                    soft_targets: np.ndarray | None = None) -> dict[str, Any]:
        """TF-IDF + logistic regression on the rows' labels (the baseline) or, distilled, on the teacher's
        probabilities over the transfer set (`soft_targets`)."""
        from .text_classical import SIZES, export_classical, fit_classical

        labels = sorted(train["label"].unique().tolist()) if teacher_labels is None else teacher_labels
        size = params.get("size") or "l"
        pipe = fit_classical(train["text"].tolist(), train["label"].tolist(), C=float(params.get("C") or 10.0),
                             max_features=params.get("max_features") or SIZES[size], soft_targets=soft_targets,
                             classes=labels)
        export_classical(pipe, labels, out_dir, {"student_arch": "classical"})
        n_params = int(pipe.steps[-1][1].coef_.size + pipe.steps[-1][1].intercept_.size)
        return {"parameters": n_params, "features": int(len(pipe.steps[0][1].vocabulary_))}

    def build_student(self, teacher: Bundle, params: Mapping[str, Any], train: pd.DataFrame | None = None) -> Bundle:
        arch = params.get("arch") or "transformer"
        if arch == "tiny":
            params = {**params, **self._tiny_size(params), "vocab": "train", "freeze_embeddings": False}
        elif arch != "transformer":
            return self._build_small_student(teacher, arch, params, train)
        from transformers import AutoModelForSequenceClassification

        tcfg = teacher.model.config
        cfg = copy.deepcopy(tcfg)
        cfg.num_hidden_layers = int(params.get("layers") or max(1, tcfg.num_hidden_layers // 3))
        hidden = int(params.get("hidden") or tcfg.hidden_size)
        if hidden != tcfg.hidden_size:
            cfg.hidden_size = hidden
            cfg.num_attention_heads = int(params.get("heads") or max(1, hidden // 64))
            cfg.intermediate_size = int(params.get("ffn") or 4 * hidden)
        elif params.get("heads") or params.get("ffn"):
            cfg.num_attention_heads = int(params.get("heads") or tcfg.num_attention_heads)
            cfg.intermediate_size = int(params.get("ffn") or tcfg.intermediate_size)
        if arch == "tiny":  # inputs are cut at max_length: position rows past it would be bytes never read
            cfg.max_position_embeddings = min(tcfg.max_position_embeddings,
                                              int(teacher.extra.get("max_length", DEFAULT_MAX_LENGTH)))
        student = AutoModelForSequenceClassification.from_config(cfg)
        chosen = layer_map(tcfg.num_hidden_layers, cfg.num_hidden_layers, params.get("layer_map", "bottom"))
        init_from_teacher(student, teacher.model, chosen)
        if hidden < tcfg.hidden_size:
            init_narrow_embeddings(student, teacher.model, hidden)
        if params.get("freeze_embeddings") and hidden == tcfg.hidden_size:
            # Copied from the fine-tuned teacher already; freezing them saves the dense update of the largest
            # matrix at every step and keeps rare tokens where the teacher put them.
            student.get_input_embeddings().requires_grad_(False)
        return Bundle(student, teacher.preprocessor, teacher.labels,
                      {**teacher.extra, "layer_map": chosen})

    def _build_small_student(self, teacher: Bundle, arch: str, params: Mapping[str, Any],
                             train: pd.DataFrame | None) -> Bundle:
        """A bag/CNN student over either a word vocabulary from the training texts (`tokens: word`) or the
        teacher's own word pieces (`tokens: teacher`: unseen words still split into known pieces, which matters
        when the labeled rows are few). Its embeddings start from the teacher: its input embeddings
        (`init: teacher`) or its outputs for each token alone, model2vec's static embeddings
        (`init: teacher_outputs`)."""
        max_length = int(teacher.extra.get("max_length", DEFAULT_MAX_LENGTH))
        cfg = text_students.student_config(arch, params, len(teacher.labels))
        if (params.get("tokens") or "word") == "teacher":
            tokenizer = teacher.preprocessor
            cfg["vocab"] = len(tokenizer)
        else:
            if train is None:
                raise ValueError(f"a {arch} student chooses its vocabulary from the training texts")
            tokenizer = text_students.word_tokenizer(train["text"].tolist(), cfg["vocab"], max_length)
            cfg["vocab"] = len(tokenizer)
        torch.manual_seed(int(params.get("seed", 0)))
        model = text_students.build(cfg)
        init = params.get("init") or "teacher"
        if init != "random":
            words = [w for w, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
            vecs = (text_students.teacher_output_vectors(teacher.model, len(words), cfg["dim"])
                    if init == "teacher_outputs" and tokenizer is teacher.preprocessor else
                    text_students.teacher_word_vectors(words, teacher.model.get_input_embeddings().weight,
                                                       teacher.preprocessor, cfg["dim"]))
            with torch.no_grad():
                model.embed.weight.copy_(vecs * model.embed.weight.std() / vecs.std().clamp(min=1e-6))
                model.embed.weight[tokenizer.pad_token_id or 0].zero_()
        return Bundle(model, tokenizer, teacher.labels, {"max_length": max_length, "student_arch": cfg})

    def _tiny_size(self, params: Mapping[str, Any]) -> dict[str, int]:
        size = params.get("size") or "m"
        if size not in self.TINY_SIZES:
            raise ValueError(f"unknown size '{size}' for tiny students (use one of {sorted(self.TINY_SIZES)})")
        return self.TINY_SIZES[size]

    def specialize(self, bundle: Bundle, train: pd.DataFrame, params: Mapping[str, Any]) -> Bundle:
        vocab = "train" if params.get("arch") == "tiny" else params.get("vocab", "full")
        if vocab == "full" or "student_arch" in bundle.extra:
            return bundle
        if vocab != "train":
            raise ValueError(f"unknown vocab mode '{vocab}' (use 'full' or 'train')")
        return shrink_vocab(bundle, train["text"].tolist())

    def feature_widths(self, bundle: Bundle) -> list[int]:
        if "student_arch" in bundle.extra:
            return []
        cfg = bundle.model.config
        return [cfg.hidden_size] * cfg.num_hidden_layers

    def prunable(self, bundle: Bundle, example: Mapping[str, torch.Tensor]):
        """Attention heads and FFN channels (tasks/hf_prune.py), really removed. BERT's config cannot describe the
        result, so each step's shapes before and after go into `prune_history`; `load` rebuilds from the first."""
        import warnings

        from .hf_prune import encoder_prunable

        described = encoder_prunable(bundle.model.eval(), example)
        finish = described.finish

        def record() -> dict[str, Any]:
            with warnings.catch_warnings():  # "not reloadable by from_pretrained": load rebuilds it
                warnings.simplefilter("ignore")
                report = finish()
            bundle.extra["prune_history"] = [*bundle.extra.get("prune_history", []), {
                k: report[k] for k in ("heads_before", "ffn_before", "heads_after", "ffn_after")}]
            return report

        described.finish = record
        return described

    def onnx_optimizer_hints(self, bundle: Bundle) -> dict[str, Any] | None:
        if "student_arch" in bundle.extra:
            return None
        cfg = bundle.model.config
        if cfg.model_type not in ("bert", "roberta", "distilbert", "xlm-roberta", "electra"):
            return None
        return {"model_type": "bert",  # the optimizer's BERT fusions cover these encoders
                "num_heads": cfg.num_attention_heads, "hidden_size": cfg.hidden_size}

    def save(self, bundle: Bundle, out_dir: Path) -> None:
        if "student_arch" in bundle.extra:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in bundle.model.state_dict().items()},
                      str(out_dir / "model.safetensors"))
            bundle.preprocessor.save_pretrained(out_dir)
            write_meta(out_dir, {"task": self.name, "labels": bundle.labels, **bundle.extra})
            return
        bundle.model.save_pretrained(out_dir)  # config.json + model.safetensors
        bundle.preprocessor.save_pretrained(out_dir)
        write_meta(out_dir, {"task": self.name, "labels": bundle.labels, **bundle.extra})

    def load(self, model_dir: Path) -> Bundle:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        _quiet_transformers()
        meta = read_meta(model_dir)
        if "student_arch" in meta:
            from safetensors.torch import load_file
            from transformers import PreTrainedTokenizerFast

            model = text_students.build(meta["student_arch"])
            model.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")))
            tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
            extra = {k: v for k, v in meta.items() if k not in ("task", "labels")}
            return Bundle(model.eval(), tokenizer, meta["labels"], extra)
        if meta.get("prune_history"):
            model = _load_pruned(Path(model_dir), meta["prune_history"])
        else:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        extra = {k: v for k, v in meta.items() if k not in ("task", "labels")}
        return Bundle(model, tokenizer, meta["labels"], extra)

    # --- data ---------------------------------------------------------------------------------------
    def encode(self, bundle: Bundle, df: pd.DataFrame) -> Encoded:
        enc = bundle.preprocessor(df["text"].tolist(), truncation=True,
                                  max_length=bundle.extra.get("max_length", DEFAULT_MAX_LENGTH))
        index = {lab: i for i, lab in enumerate(bundle.labels)}
        targets = torch.tensor([index[lab] for lab in df["label"]], dtype=torch.long)
        pad = bundle.preprocessor.pad_token_id or 0
        return Encoded([(ids, pad) for ids in enc["input_ids"]], targets)

    def collate(self, encoded: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        seqs = [encoded.examples[i][0] for i in indices]
        pad = encoded.examples[indices[0]][1]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, hidden_states: bool = False,
                attentions: bool = False) -> Outputs:
        if isinstance(model, tuple(text_students.ARCHS.values())):
            return Outputs(model(**batch).logits)
        if attentions and getattr(model.config, "_attn_implementation", "eager") != "eager":
            model.set_attn_implementation("eager")  # fused attention kernels do not return the weights
        out = model(**batch, output_hidden_states=hidden_states, output_attentions=attentions)
        return Outputs(out.logits, out.hidden_states, out.attentions)

    # --- export and inference -------------------------------------------------------------------------
    def export_onnx(self, bundle: Bundle, out_dir: Path, sample: pd.DataFrame) -> None:
        model = bundle.model.eval()
        batch = self.collate(self.encode(bundle, sample.head(2)), [0, 1] if len(sample) > 1 else [0])

        import warnings

        # Exported from the eager attention's plain ops, an encoder's attention is a pattern onnxruntime's
        # optimizer fuses into one Attention kernel (sdpa's export is not): fewer kernels per layer, which is most
        # of a narrow student's batch-1 time. Same numbers; the export's parity check still compares them.
        attn = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
        if attn != "eager":
            model.set_attn_implementation("eager")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LogitsOnly(model), (batch["input_ids"], batch["attention_mask"]), str(out_dir / ONNX_FILE),
                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                              "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
                opset_version=17, dynamo=False,
            )
        if attn != "eager":
            model.set_attn_implementation(attn)
        bundle.preprocessor.save_pretrained(out_dir)
        tok = bundle.preprocessor
        write_meta(out_dir, {
            "task": self.name, "labels": bundle.labels, "format": "onnx",
            "max_length": bundle.extra.get("max_length", DEFAULT_MAX_LENGTH),
            "pad_id": tok.pad_token_id or 0, "pad_token": tok.pad_token or "[PAD]",
        })

    def augment_rows(self, df: pd.DataFrame, copies: int, seed: int, params: Mapping[str, Any]) -> pd.DataFrame:
        """Tang et al. (2019)'s transfer-set augmentation: masked words, in-vocabulary replacement, n-gram
        samples; `copies` new texts per row (the rows themselves are not included)."""
        texts = augment_texts(df["text"].tolist(), copies, seed, p_mask=params.get("p_mask", 0.1),
                              p_replace=params.get("p_replace", 0.1), p_ngram=params.get("p_ngram", 0.25))
        return pd.DataFrame({"text": texts})

    def load_predictor(self, model_dir: Path, threads: int | None = None) -> Predictor:
        fmt = read_meta(Path(model_dir)).get("format")
        if fmt == "onnx-classical":
            from .text_classical import ClassicalPredictor

            return ClassicalPredictor(Path(model_dir), threads)
        if fmt == "onnx-blend":
            from .text_blend import BlendPredictor

            return BlendPredictor(Path(model_dir), threads)
        return TextPredictor(Path(model_dir), threads)


def _load_pruned(model_dir: Path, history: list[dict]) -> torch.nn.Module:
    """Rebuild a head-pruned model: BERT's config cannot describe heads narrower than hidden/heads, so build the
    original shape, narrow its layers to the checkpoint's (tasks/hf_prune.py), then load the saved weights
    strictly, which fails loudly if any shape differs."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .hf_prune import fit_to_checkpoint

    cfg = AutoConfig.from_pretrained(model_dir)
    cfg.num_attention_heads = history[0]["heads_before"]
    cfg.intermediate_size = history[0]["ffn_before"]
    state = load_file(str(model_dir / "model.safetensors"))
    model = fit_to_checkpoint(AutoModelForSequenceClassification.from_config(cfg).eval(), state)
    model.load_state_dict(state, strict=True)
    return model


class TextPredictor(Predictor):
    def __init__(self, model_dir: Path, threads: int | None = None):
        from tokenizers import Tokenizer

        meta = read_meta(model_dir)
        self.model_dir = model_dir
        self.labels = meta["labels"]
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(meta.get("max_length", DEFAULT_MAX_LENGTH)))
        self.tokenizer.enable_padding(pad_id=int(meta.get("pad_id", 0)), pad_token=meta.get("pad_token", "[PAD]"))
        self.session = onnx_session(model_dir, threads)

    def encode(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        encs = self.tokenizer.encode_batch([str(t) for t in inputs])
        return {"input_ids": np.asarray([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encs], dtype=np.int64)}

    @property
    def signature(self) -> dict[str, list[dict[str, Any]]]:
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.labels)]}]}


