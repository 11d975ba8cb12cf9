"""Cross-validation of a change-detection config (``data.folds``), e.g. leaving OSCD cities out: every
labelled pair is scored once, by a model that never saw it.

``data.train`` is the pool of labelled pairs; fold ``k`` trains on the pool without its ``test`` and ``val``
pairs, keeps the weights that score best on ``val``, and predicts ``test``. Each fold is an ordinary run
(its own band normalisation, from its training pairs only; its ``config.json`` names its three splits, so
``diffsat cd predict RUN/folds/<k>`` and ``--resume`` work on it as on any run)::

    RUN/config.json          the cross-validation config
    RUN/folds/<k>/           fold k's run (methods, baselines, test masks and figures, test_metrics.json)
    RUN/features/            backbone features, shared by the folds (keyed by content)
    RUN/test_metrics.json    per method: one confusion matrix summed over the folds and its scores, every
                             pair's change-F1 and counts (which sum to it) with its fold, each fold's scores
    RUN/report.html
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data.dataset import DataError
from ..fileio import atomic_write_text
from ..rundir import CD_FEATURES_DIR, CD_FOLDS_DIR, CD_TEST_METRICS_FILE, CONFIG_FILE
from .config import CDConfig, FoldConfig, PairSource, save_cd_config
from .metrics import from_counts, scores
from .pairs import PairInput, load_pairs
from .report import write_cd_report
from .run import has_training, train_split

FOLD_SCORES = ("f1", "iou", "precision", "recall", "kappa", "tn", "fp", "fn", "tp")


@dataclass(frozen=True)
class FoldSplit:
    """The pair names fold ``index`` trains on, validates on and scores."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def fold_splits(pool: Sequence[str], folds: Sequence[FoldConfig]) -> list[FoldSplit]:
    """Each fold's split of the ``pool`` names (``data.train``'s pairs, in order): its test and val as
    configured, its training pairs every other one. A fold naming a pair outside the pool, a pool pair no
    fold scores, or a fold left without training pairs is a :class:`DataError`."""
    names = list(pool)
    tested = {n for fold in folds for n in fold.test}
    for k, fold in enumerate(folds):
        unknown = [n for n in (*fold.test, *fold.val) if n not in names]
        if unknown:
            raise DataError(f"data.folds[{k}] names pair '{unknown[0]}', which data.train does not hold; fix the "
                            "fold or add the pair to data.train")
    unscored = [n for n in names if n not in tested]
    if unscored:
        raise DataError(f"pair '{unscored[0]}' of data.train is in no fold's test; every pair is scored by one "
                        "fold: add it to a fold's test")
    splits = []
    for k, fold in enumerate(folds):
        held = set(fold.test) | set(fold.val)
        train = tuple(n for n in names if n not in held)
        if not train:
            raise DataError(f"data.folds[{k}] leaves no training pair (its test and val hold the whole pool)")
        splits.append(FoldSplit(k, train, tuple(fold.val), tuple(fold.test)))
    return splits


def fold_config(cfg: CDConfig, split: FoldSplit, sources: Sequence[tuple[PairSource, list[str]]]) -> CDConfig:
    """``cfg`` as an ordinary run of one fold: ``data.train`` / ``val`` / ``test`` the pool's sources narrowed
    to the fold's names (``sources``: each pool source with the names it holds)."""

    def narrowed(chosen: tuple[str, ...]) -> tuple[PairSource, ...]:
        out = []
        for source, held in sources:
            names = tuple(n for n in chosen if n in held)
            if names:
                out.append(source.model_copy(update={"names": names}))
        return tuple(out)

    data = cfg.data.model_copy(update={"train": narrowed(split.train), "val": narrowed(split.val),
                                       "test": narrowed(split.test), "folds": ()})
    return cfg.model_copy(update={"data": data})


def pool_folds(fold_docs: Sequence[dict]) -> dict[str, dict]:
    """Per method, the folds' test documents (:func:`~diffsat.cd.run.train_split`'s) pooled: the summed
    confusion matrix and its :func:`scores`, ``per_image`` (each pair's F1, counts and fold), ``per_image_f1``
    and ``folds`` (each fold's scores and training summary)."""
    methods: dict[str, dict] = {}
    for name in fold_docs[0]["methods"]:
        results = [doc["methods"][name] for doc in fold_docs]
        cm = sum(from_counts(r) for r in results)
        per_image = {pair: {**row, "fold": k} for k, r in enumerate(results) for pair, row in r["per_image"].items()}
        folds = [{"test": doc["split"]["test"], **{key: r[key] for key in FOLD_SCORES}, "training": r["training"]}
                 for doc, r in zip(fold_docs, results)]
        methods[name] = {**scores(cm), "pairs": len(per_image),
                         "per_image_f1": {p: row["f1"] for p, row in per_image.items()},
                         "per_image": per_image, "folds": folds}
    return methods


def _pool_inputs(cfg: CDConfig) -> tuple[dict[str, PairInput], list[tuple[PairSource, list[str]]]]:
    inputs: dict[str, PairInput] = {}
    sources = []
    for source in cfg.data.train:
        pairs = load_pairs([source], need_labels=True, what="training pairs", bands=cfg.data.bands).pairs
        for p in pairs:
            if p.name in inputs:
                raise DataError(f"{source.root}: pair '{p.name}' is also in another data.train source; folds name "
                                "pairs, so each name must be unique across the pool")
            inputs[p.name] = p
        sources.append((source, [p.name for p in pairs]))
    return inputs, sources


def cross_validate(cfg: CDConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train and score every fold of ``cfg.data.folds`` into ``run_dir/folds/<k>`` (``resume``: folds with
    their scores are kept, an interrupted one continues from its checkpoint), then write the pooled
    ``test_metrics.json`` and ``report.html``; returns the pooled document."""
    run_dir = Path(run_dir)
    if not cfg.data.folds:
        raise DataError("data.folds is empty: a config without folds trains with diffsat.cd.train_cd")
    fold_root = run_dir / CD_FOLDS_DIR
    if not resume and ((run_dir / CD_TEST_METRICS_FILE).is_file() or
                       (fold_root.is_dir() and any(has_training(d) for d in fold_root.iterdir()))):
        raise DataError(f"{run_dir}: already holds a cross-validation run; continue it with --resume or choose "
                        "another --out")
    inputs, sources = _pool_inputs(cfg)
    splits = fold_splits(list(inputs), cfg.data.folds)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_cd_config(cfg, run_dir / CONFIG_FILE)
    docs = []
    for split in splits:
        folder = fold_root / str(split.index)
        done = folder / CD_TEST_METRICS_FILE
        if resume and done.is_file():
            docs.append(json.loads(done.read_text()))
            continue
        pick = lambda names: [inputs[n] for n in names]  # noqa: E731
        docs.append(train_split(fold_config(cfg, split, sources), folder, pick(split.train), pick(split.val),
                                pick(split.test), resume=resume, progress=progress,
                                features_dir=run_dir / CD_FEATURES_DIR))
    folds = [{"index": s.index, "train": list(s.train), "val": list(s.val), "test": list(s.test)} for s in splits]
    doc = {"folds": folds, "bands": docs[0]["bands"], "methods": pool_folds(docs)}
    atomic_write_text(run_dir / CD_TEST_METRICS_FILE, json.dumps(doc, indent=2) + "\n")
    write_cd_report(run_dir)
    return doc
