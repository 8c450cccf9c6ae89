"""Hoster scoring within precision classes: outputs are compared only with their own class.

An int8 or nf4 hoster's probe outputs differ from float32 ones by the quantization error
(~1e-2 relative), far beyond the scoring tolerance, while two honest hosters of the same class
agree to float rounding. So each class is scored on its own (`consensus.scoring.score_hosters`
over that class's hosters, with that class's references and calibrated parameters) and the
results are merged. docs/PROTOCOL.md "Scoring with precision classes" is the normative text:

- a hoster's class is the one it declared in its *signed commit record* (`precision`, checked
  by `hoster_class`): never guessed, never taken from an unsigned claim; a commit without the
  field declares float32 (the probe dtype, what every hoster computed before classes existed);
- a reference counts only for the classes its signed reference commit declares (`precision`,
  a list: one validator holding the weights may compute the probe in several classes);
- nobody referees a block it serves itself, whatever the class of either;
- inside a class the existing rules apply unchanged: reference median if any, else the
  hosters' robust median with a strict-majority rule (else **disputed**), a block whose class
  has a single output and no reference is **uncompared** (left out of the mean; a hoster with
  nothing compared scores `uncompared_score`, 0 by default: otherwise a cheater would pick an
  unpopular class, like an unpopular block range);
- parameters per class come from `class_params` (calibrated on measured honest noise,
  benchmarks/honest_noise.py --classes).

Pure and deterministic: classes are processed in sorted order and each is scored by the same
bit-exact code as a single-class epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from consensus.precision import CLASSES
from consensus.scoring import DEFAULT_PARAMS, HosterScoring, ScoringParams, score_hosters

DEFAULT_CLASS = "float32"  # what a commit without a `precision` field declares
MAX_REFERENCE_CLASSES = len(CLASSES)

# Per-class overrides of the scoring parameters, from measured honest noise within the class
# (docs/PROTOCOL.md "Scoring with precision classes" has the table). float32 keeps the defaults.
CLASS_OVERRIDES: dict[str, dict[str, float]] = {
    "float32": {},
    "int8": {},
    "nf4": {},
    # honest bfloat16 noise 1.35e-3 (another batch size): s >= 0.99 up to d = 2e-3; a float32 or int8
    # output declared bfloat16 (1e-2 .. 2.2e-2 away) mostly falls past the tolerance. float16 has 3 more
    # mantissa bits than bfloat16, so its noise is smaller: the same parameters (not measured separately).
    "bfloat16": {"scale": 2e-2, "agreement": 1e-2, "tolerance": 1.5e-2},
    "float16": {"scale": 2e-2, "agreement": 1e-2, "tolerance": 1.5e-2},
}


def class_params(cls: str, base: ScoringParams = DEFAULT_PARAMS) -> ScoringParams:
    """Scoring parameters for precision class `cls`: `base` with that class's calibrated overrides."""
    return dataclasses.replace(base, **CLASS_OVERRIDES.get(cls, {}))


def hoster_class(payload: Mapping) -> str:
    """The class a hoster's signed commit payload declares; ValueError if it declares an unknown one."""
    cls = payload.get("precision", DEFAULT_CLASS)
    if not isinstance(cls, str) or cls not in CLASSES:
        raise ValueError(f"unknown precision class {cls!r}")
    return cls


def reference_classes(payload: Mapping) -> tuple[str, ...]:
    """The classes a validator's signed reference commit declares, in its order (the blobs' order)."""
    classes = payload.get("precision", [DEFAULT_CLASS])
    if (not isinstance(classes, list) or not 1 <= len(classes) <= MAX_REFERENCE_CLASSES
            or any(not isinstance(c, str) or c not in CLASSES for c in classes) or len(set(classes)) != len(classes)):
        raise ValueError(f"bad reference precision classes {classes!r}")
    return tuple(classes)


INVALID_CLASS = "invalid"  # a commit whose declaration does not parse: its hoster scores 0


def declared_classes(commit_payloads: Mapping[str, Mapping]) -> dict[str, str]:
    """Hoster -> class declared in its signed commit payload (INVALID_CLASS if malformed)."""
    out = {}
    for peer in sorted(commit_payloads):
        try:
            out[peer] = hoster_class(commit_payloads[peer])
        except ValueError:
            out[peer] = INVALID_CLASS
    return out


@dataclass
class ClassScoring(HosterScoring):
    """`HosterScoring` merged over classes, plus each hoster's class and per-class details.

    `disputed` lists a block's hosters of every class disputed there; `uncompared` keeps one lone
    hoster per block (the first class in sorted order), `uncompared_by_class` all of them.
    """

    classes: dict[str, str] = field(default_factory=dict)
    uncompared_by_class: dict[str, dict[int, str]] = field(default_factory=dict)


def score_hosters_by_class(
    outputs: Mapping[str, Mapping[int, object]],
    participants: Iterable[str] = (),
    *,
    classes: Mapping[str, str],
    references: Mapping[str, Mapping[str, Mapping[int, object]]] | None = None,
    expected_shape: tuple[int, ...] | None = None,
    params: ScoringParams = DEFAULT_PARAMS,
    params_by_class: Mapping[str, ScoringParams] | None = None,
    threads: int | None = None,
) -> ClassScoring:
    """Score hosters within their declared precision classes.

    `outputs`: hoster -> {block -> output} (valid reveals); `classes`: hoster -> declared class
    (missing: DEFAULT_CLASS; unknown: the hoster scores 0); `references`: class -> validator ->
    {block -> reference output}; `params` the base parameters, `class_params(cls, params)` per
    class unless `params_by_class` names them.
    """
    served = {p: {int(b) for b in blocks} for p, blocks in outputs.items()}
    groups: dict[str, dict[str, Mapping[int, object]]] = {}
    declared: dict[str, str] = {}
    for peer in sorted(outputs):
        cls = classes.get(peer, DEFAULT_CLASS)
        declared[peer] = cls
        if cls in CLASSES:
            groups.setdefault(cls, {})[peer] = outputs[peer]
    result = ClassScoring({})
    block_scores: dict[int, dict[str, float]] = {}
    for cls in sorted(groups):
        refs = {v: {b: t for b, t in by_block.items() if int(b) not in served.get(v, ())}
                for v, by_block in (references or {}).get(cls, {}).items()}  # nobody referees itself
        refs = {v: r for v, r in refs.items() if r}
        p = (params_by_class or {}).get(cls) or class_params(cls, params)
        r = score_hosters(groups[cls], (), references=refs, expected_shape=expected_shape, params=p,
                          threads=threads)
        result.scores.update(r.scores)
        for b, s in r.block_scores.items():
            block_scores.setdefault(b, {}).update(s)
        for b, lone in r.uncompared.items():
            result.uncompared.setdefault(b, lone)
        if r.uncompared:
            result.uncompared_by_class[cls] = dict(r.uncompared)
        for b, peers in r.disputed.items():
            result.disputed[b] = sorted(set(result.disputed.get(b, [])) | set(peers))
        for b, vals in r.referenced.items():
            result.referenced[b] = sorted(set(result.referenced.get(b, [])) | set(vals))
        result.reference_conflicts = sorted(set(result.reference_conflicts) | set(r.reference_conflicts))
    for peer in sorted(set(participants) | set(outputs)):
        result.scores.setdefault(peer, 0.0)  # no valid reveal, or an unknown class
    result.scores = dict(sorted(result.scores.items()))
    result.block_scores = {b: dict(sorted(v.items())) for b, v in sorted(block_scores.items())}
    result.disputed = dict(sorted(result.disputed.items()))
    result.referenced = dict(sorted(result.referenced.items()))
    result.classes = declared
    return result
