"""PI-QUAL v2 technical prerequisites per sequence, from a study's technical metadata.

Rules (PI-QUAL v2, 2024):
- T2W: slice thickness <= 3 mm.
- DWI / high-b (HBV): slice thickness <= 4 mm; high b-value >= 1400 s/mm2 (acquired or calculated).
- ADC: computed from >= 2 b-values, the highest <= 1000 s/mm2.
- DCE (optional): slice thickness <= 3 mm; temporal resolution <= 15 s.

Each rule gives ``pass``, ``fail`` or ``unknown`` (the fact is missing) with a reason a radiographer can
act on, e.g. "DWI high b-value 800 < 1400". Slice thickness falls back to the slice spacing of the image
geometry when no header value is known, and the reason says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from proqual.study import Sequence, Study, TechnicalMetadata

Status = Literal["pass", "fail", "unknown"]


class PrerequisiteResult(BaseModel):
    rule: str
    sequence: str
    status: Status
    reason: str
    value: float | None = None
    limit: float | None = None


def _thickness(meta: TechnicalMetadata) -> tuple[float | None, str]:
    if meta.slice_thickness_mm is not None and meta.source == "dicom":
        return meta.slice_thickness_mm, "slice thickness"
    if meta.slice_thickness_mm is not None:
        return meta.slice_thickness_mm, "slice thickness (from the image geometry)"
    if meta.spacing_mm is not None:
        return meta.spacing_mm[2], "slice thickness (from the image geometry)"
    return None, "slice thickness"


def _limit_rule(
    rule: str, seq: str, label: str, value: float | None, limit: float, unit: str, *, upper: bool
) -> PrerequisiteResult:
    name = f"{seq} {label}"
    if value is None:
        return PrerequisiteResult(
            rule=rule, sequence=seq, status="unknown", reason=f"{name} unknown", limit=limit
        )
    ok = value <= limit if upper else value >= limit
    op = ("<=" if ok else ">") if upper else (">=" if ok else "<")
    return PrerequisiteResult(
        rule=rule,
        sequence=seq,
        status="pass" if ok else "fail",
        reason=f"{name} {value:g}{unit} {op} {limit:g}{unit}",
        value=value,
        limit=limit,
    )


def check_prerequisites(sequence: Sequence | str, meta: TechnicalMetadata) -> list[PrerequisiteResult]:
    """Results of every PI-QUAL v2 prerequisite that applies to ``sequence`` (none for OTHER)."""
    seq = Sequence.parse(sequence)
    out: list[PrerequisiteResult] = []
    thick, label = _thickness(meta)
    if seq is Sequence.T2W:
        out.append(_limit_rule("t2w_slice_thickness", "T2W", label, thick, 3.0, " mm", upper=True))
    elif seq in (Sequence.HBV, Sequence.DWI):
        out.append(_limit_rule("dwi_slice_thickness", "DWI", label, thick, 4.0, " mm", upper=True))
        high = max(meta.b_values) if meta.b_values else None
        res = _limit_rule("dwi_high_b_value", "DWI", "high b-value", high, 1400.0, "", upper=False)
        if meta.calculated_b_value and res.status != "unknown":
            res.reason += " (calculated)"
        out.append(res)
    elif seq is Sequence.ADC:
        bs = sorted(set(meta.b_values))
        if not bs:
            out.append(
                PrerequisiteResult(
                    rule="adc_b_values", sequence="ADC", status="unknown", reason="ADC b-values unknown"
                )
            )
        else:
            n_ok = len(bs) >= 2
            out.append(
                PrerequisiteResult(
                    rule="adc_b_value_count",
                    sequence="ADC",
                    status="pass" if n_ok else "fail",
                    reason=f"ADC from {len(bs)} b-value(s) {'>=' if n_ok else '<'} 2",
                    value=len(bs),
                    limit=2,
                )
            )
            out.append(
                _limit_rule("adc_highest_b_value", "ADC", "highest b-value", bs[-1], 1000.0, "", upper=True)
            )
    elif seq is Sequence.DCE:
        out.append(_limit_rule("dce_slice_thickness", "DCE", label, thick, 3.0, " mm", upper=True))
        out.append(
            _limit_rule(
                "dce_temporal_resolution",
                "DCE",
                "temporal resolution",
                meta.temporal_resolution_s,
                15.0,
                " s",
                upper=True,
            )
        )
    return out


def check_study(study: Study) -> dict[str, list[PrerequisiteResult]]:
    """Prerequisite results of every sequence of a study, keyed by sequence name."""
    return {seq.value: check_prerequisites(seq, ref.metadata) for seq, ref in study.sequences.items()}
