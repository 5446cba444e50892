"""params.yaml schema and validation.

Every stage calls :func:`load_params` first, so a typo or an impossible value stops the run
before any work, with one message that names the key and what it accepts, instead of surfacing
minutes later as a shape error deep in a stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lavise import options

Validator = Callable[[str, Any], None]


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing, or has a value outside its allowed set."""


def fail(key: str, value: Any, allowed: str) -> None:
    raise ParamsError(f"params.yaml: `{key}` = {value!r} is invalid; allowed: {allowed}.")


def one_of(*choices: Any) -> Validator:
    def check(key: str, value: Any) -> None:
        if value not in choices:
            fail(key, value, " | ".join(map(str, choices)))

    return check


def integer(low: int | None = None, high: int | None = None, nullable: bool = False) -> Validator:
    def check(key: str, value: Any) -> None:
        if value is None and nullable:
            return
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            bounds = f"an integer in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            fail(key, value, bounds + (" or null" if nullable else ""))

    return check


def _parses_as_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def number(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Validator:
    def check(key: str, value: Any) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
        if not ok:
            lb = "(" if open_low else "["
            rb = ")" if open_high else "]"
            hint = ""
            if isinstance(value, str) and _parses_as_float(value):
                hint = f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-4, or as 0.0001)"
            fail(key, value, f"a number in {lb}{low}, {high}{rb}{hint}")

    return check


def text(nullable: bool = False) -> Validator:
    def check(key: str, value: Any) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, str) or not value:
            fail(key, value, "a non-empty string" + (" or null" if nullable else ""))

    return check


def triple(low: float, nullable: bool = False) -> Validator:
    """Three numbers, each above ``low`` (a per-channel mean or std), or null."""

    def check(key: str, value: Any) -> None:
        if value is None and nullable:
            return
        numbers = isinstance(value, list) and len(value) == 3
        numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > low for v in value)
        if not numbers:
            fail(key, value, f"a list of 3 numbers > {low} (R, G, B)" + (" or null" if nullable else ""))

    return check


def all_or_indices(key: str, value: Any) -> None:
    if value == "all":
        return
    if isinstance(value, dict):
        every = value.get("every")
        if set(value) != {"every"} or not isinstance(every, int) or isinstance(every, bool) or every < 1:
            fail(key, value, "`all`, `{every: k}` with an integer k >= 1, or a list of filter indices")
        return
    if not (isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value)):
        fail(key, value, "`all`, `{every: k}` or a non-empty list of filter indices (integers >= 0)")
    if len(set(value)) != len(value):
        fail(key, value, "a list without repeated filter indices")


def index_list(key: str, value: Any) -> None:
    if not (isinstance(value, list) and all(isinstance(v, int) and v >= 0 for v in value)):
        fail(key, value, "a list of filter indices (integers >= 0), possibly empty")


def subset_of(*choices: str) -> Validator:
    def check(key: str, value: Any) -> None:
        if not (isinstance(value, list) and value and set(value) <= set(choices) and len(set(value)) == len(value)):
            fail(key, value, f"a non-empty list without repeats drawn from {list(choices)}")

    return check


def top_s_list(key: str, value: Any) -> None:
    if not (isinstance(value, list) and value and all(isinstance(v, int) and v >= 1 for v in value)):
        fail(key, value, "a non-empty list of integers >= 1")
    if sorted(set(value)) != value:
        fail(key, value, "a strictly increasing list of integers >= 1")


def positive_increasing(key: str, value: Any) -> None:
    """A non-empty, strictly increasing list of numbers > 0 (relevance.mu)."""
    numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not (numbers and value and all(v > 0 for v in value)):
        fail(key, value, "a non-empty list of numbers > 0")
    if any(b <= a for a, b in zip(value, value[1:])):
        fail(key, value, "a strictly increasing list of numbers > 0")


def all_or_count(key: str, value: Any) -> None:
    if value != "all" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        fail(key, value, "`all` or an integer >= 1")


def optional_fraction(key: str, value: Any) -> None:
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
        fail(key, value, "null or a number in [0, 1]")


def percentile_list(key: str, value: Any) -> None:
    ok = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or sorted(set(value)) != value or value[0] < 1 or value[-1] > 99:
        fail(key, value, "a non-empty, strictly increasing list of integer percentiles in [1, 99]")


SCHEMA: dict[str, Any] = {
    "dataset": one_of(*options.DATASETS),
    "download": {
        "source": one_of(*options.SOURCES),
        "datasets": subset_of(*options.DATASETS),
        "glove_dim": one_of(*options.GLOVE_DIMS),
        "demo_seed": integer(0),
    },
    "annotations": {
        "min_images": integer(1),
        "coco_crowd": one_of(*options.COCO_CROWD),
        "val_fraction": number(0.0, 1.0, open_low=True, open_high=True),
        "seen_fraction": number(0.0, 1.0, open_low=True, open_high=True),
        "split_coco_categories": one_of(True, False),
        "seed": integer(0),
    },
    "backbone": {
        "name": text(),
        "weights": text(),
        "layer": text(),
        "num_classes": integer(1, nullable=True),
    },
    "images": {
        "max_pixels": integer(1),
    },
    "transform": {
        "resize": integer(16, nullable=True),
        "crop": integer(16, nullable=True),
        "interpolation": one_of(*options.INTERPOLATIONS, None),
        "mean": triple(-1.0, nullable=True),
        "std": triple(0.0, nullable=True),
    },
    "target": {
        "init": text(),
        "epochs": integer(1),
        "batch_size": integer(1),
        "lr": number(0.0, 10.0, open_low=True),
        "weight_decay": number(0.0, 1.0),
        "crop": integer(16),
        "seed": integer(0),
        "num_workers": integer(0, 64),
        "device": one_of(*options.DEVICES),
        "nproc": integer(1, 1024),
    },
    "features": {
        "batch_size": integer(1),
        "num_workers": integer(0, 64),
        "device": one_of(*options.DEVICES),
        "decode": one_of(*options.DECODE_MODES),
        "chunk_images": integer(1),
        "nproc": integer(1, 1024),
        "precision": one_of(*options.PRECISIONS),
    },
    "train": {
        "hidden_dim": integer(1, nullable=True),
        "dropout": number(0.0, 1.0, open_high=True),
        "margin": number(0.0, 100.0, open_low=True),
        "optimizer": one_of(*options.OPTIMIZERS),
        "lr": number(0.0, 100.0, open_low=True),
        "batch_size": integer(2),  # BatchNorm needs two samples
        "epochs": integer(1),
        "holdout_fraction": number(0.0, 1.0, open_low=True, open_high=True),
        "patience": integer(1),
        "lr_patience": integer(0),
        "seed": integer(0),
        "device": one_of(*options.DEVICES),
    },
    "evaluate": {
        "p": integer(1),
        "quantile": number(0.0, 1.0, open_low=True, open_high=True),
        "iou_threshold": number(0.0, 1.0, open_high=True),
        "top_s": top_s_list,
        "vocabulary": text(),
        "presence_top_k": integer(1),
        "bootstrap": {
            "resamples": integer(1),
            "confidence": number(0.0, 1.0, open_low=True, open_high=True),
            "seed": integer(0),
        },
        "filters": all_or_indices,
        "image_masking_filters": all_or_indices,
        "word_weighting": one_of(*options.WORD_WEIGHTINGS),
        "heatmap_filters": index_list,
        "batch_size": integer(1),
        "device": one_of(*options.DEVICES),
    },
    "probe": {
        "root": text(),
        "listing": text(nullable=True),
        "groups": one_of(*options.PROBE_GROUPINGS),
        "path_column": text(),
        "group_column": text(),
        "p": integer(1),
        "quantile": number(0.0, 1.0, open_low=True, open_high=True),
        "filters": all_or_indices,
        "image_masking_filters": all_or_indices,
        "words_per_image": integer(1),
        "word_weighting": one_of(*options.WORD_WEIGHTINGS),
        "vocabulary": text(),
        "heatmap_filters": index_list,
        "batch_size": integer(1),
        "device": one_of(*options.DEVICES),
    },
    "compare": {
        "fdr": number(0.0, 1.0, open_low=True, open_high=True),
        "top_filters": integer(1),
        "examples": integer(1),
    },
    "report": {
        "table_rows": integer(1),
    },
    "relevance": {
        "mu": positive_increasing,
        "scaling": one_of(*options.LASSO_SCALINGS),
        "labels": one_of(*options.RELEVANCE_LABELS),
        "repeats": integer(1),
        "seed": integer(0),
        "random_control": one_of(True, False),
        "single_filter_reference": one_of(True, False),
        "top_filters": integer(1),
        "sheet_filters": integer(1),
        "sheet_images": integer(1),
        "batch_size": integer(1),
        "num_workers": integer(0, 64),
        "device": one_of(*options.DEVICES),
    },
    "saliency": {
        "images": all_or_count,
        "methods": subset_of(*options.SALIENCY_METHODS),
        "layer": text(nullable=True),
        "batch_size": integer(1),
        "scorecam_channels": integer(1, nullable=True),
        "ablationcam_channels": integer(1, nullable=True),
        "lime_samples": integer(1),
        "lime_features": integer(1),
        "lime_hide_color": optional_fraction,
        "top_q": number(0.0, 1.0, open_low=True),
        "pointing_tolerance": integer(0),
        "gaussian_sigma": number(0.0, 10.0, open_low=True),
        "road_percentiles": percentile_list,
        "road_images": all_or_count,
        "sheets": integer(0),
        "bootstrap_resamples": integer(1),
        "confidence": number(0.0, 1.0, open_low=True, open_high=True),
        "seed": integer(0),
        "device": one_of(*options.DEVICES),
    },
}


def _validate_tree(schema: Mapping[str, Any], values: Any, prefix: str) -> None:
    if not isinstance(values, Mapping):
        fail(prefix or "<root>", values, f"a mapping with keys {sorted(schema)}")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ParamsError(f"params.yaml: unknown key `{key}`; allowed keys here: {sorted(schema)}.")
    missing = sorted(set(schema) - set(values))
    if missing:
        raise ParamsError(f"params.yaml: missing key `{prefix}{missing[0]}`.")
    for name, rule in schema.items():
        key = f"{prefix}{name}"
        if isinstance(rule, Mapping):
            _validate_tree(rule, values[name], key + ".")
        else:
            rule(key, values[name])


def validate_params(params: Mapping[str, Any], root: Path = Path(".")) -> None:
    """Raise ParamsError for the first unknown key, missing key or bad value."""
    _validate_tree(SCHEMA, params, "")
    download = params["download"]
    if params["dataset"] not in download["datasets"]:
        fail("dataset", params["dataset"], f"one of download.datasets {download['datasets']}")
    if download["source"] == "demo" and download["glove_dim"] != options.DEMO_GLOVE_DIM:
        fail(
            "download.glove_dim",
            download["glove_dim"],
            f"{options.DEMO_GLOVE_DIM} with download.source: demo (the offline GloVe is {options.DEMO_GLOVE_DIM}d)",
        )
    resize, crop = params["transform"]["resize"], params["transform"]["crop"]
    if resize is not None and crop is not None and crop > resize:
        fail(
            "transform.crop", params["transform"]["crop"], f"at most transform.resize ({params['transform']['resize']})"
        )

    vocabulary = params["evaluate"]["vocabulary"]
    if vocabulary not in options.VOCABULARIES and not (root / vocabulary).is_file() and not Path(vocabulary).is_file():
        fail(
            "evaluate.vocabulary",
            vocabulary,
            " | ".join(options.VOCABULARIES) + " | a path to an existing word-list file",
        )
    _validate_probe(params["probe"], root)


def _validate_probe(probe: Mapping[str, Any], root: Path) -> None:
    """The probe's vocabulary file, and a CSV listing (not a folder) where one is named."""
    vocabulary = probe["vocabulary"]
    if vocabulary not in options.VOCABULARIES and not (root / vocabulary).is_file() and not Path(vocabulary).is_file():
        allowed = " | ".join(options.VOCABULARIES) + " | a path to an existing word-list file"
        fail("probe.vocabulary", vocabulary, allowed)
    if probe["listing"] is not None and not str(probe["listing"]).lower().endswith(".csv"):
        fail("probe.listing", probe["listing"], "null, or the path of a .csv file")
    if probe["groups"] == "column" and probe["listing"] is None:
        fail("probe.groups", probe["groups"], "subfolders | none without a `probe.listing` (column needs a CSV)")
    if probe["groups"] == "subfolders" and probe["listing"] is not None:
        fail("probe.groups", probe["groups"], "column | none with a CSV `probe.listing` (subfolders needs none)")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML says last wins, silently;
    `dvc repro` rejects such a file, so the stage scripts must too)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ParamsError(
                    f"params.yaml line {line}: duplicate key `{key}` (first written at line {first_line[key]})."
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_params_text(data: bytes, name: str = "params.yaml") -> Any:
    """YAML from bytes, every problem as one ParamsError naming the line: bad UTF-8, a tab, a
    syntax error, a duplicate key."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ParamsError(
            f"{name} line {line}: byte 0x{data[error.start]:02x} is not UTF-8 text; save the file as UTF-8."
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (error.problem or error.context or "invalid YAML").replace("\t", "\\t")
        hint = " (indent with spaces, not tabs)" if "\\t" in problem else ""
        raise ParamsError(f"{name}{where}: {problem}{hint}.") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{name}: invalid YAML: {error}.") from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate params.yaml; the returned dict is the only source of settings."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} not found; run the stage from the repository root.")
    params = parse_params_text(path.read_bytes(), path.name)
    validate_params(params, path.resolve().parent)
    return params
