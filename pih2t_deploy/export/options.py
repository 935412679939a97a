"""The options of one export, validated against its format's entry (``pih2t_deploy.formats``) before any work
starts."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.formats import FormatSpec, get_format

DEFAULT_OPSET = 18  # the ONNX opset every ONNX-based format is exported at unless --opset says otherwise
ONNX_TOLERANCE = 1e-3
HALF_TOLERANCE = 5e-2
# bfloat16 keeps 8 significant bits: logits through a whole network move by a few percent of their scale.
BF16_TOLERANCE = 1e-1


# options every format accepts; each format's entry (pih2t_deploy.formats) names the others it takes
COMMON = frozenset(
    {
        "output",
        "format",
        "max_batch",
        "logit_adjust_tau",
        "temperature",
        "fuse_bn",
        "seed",
        "class_counts",
        "class_names",
        "eval_data",
        "tolerance",
        "force",
        "sign_key",
    }
)


@dataclass
class ExportOptions:
    """Settings of one export; ``validate`` rejects unknown formats, options that do not apply, bad values."""

    output: Path
    format: str = "onnx"
    opset: int = DEFAULT_OPSET
    static_batch: int | None = None
    max_batch: int = 8
    opt_batch: int | None = None
    half: bool = False
    int8: bool = False
    bf16: bool = False
    simplify: bool = False
    embed_preprocessing: bool = False
    probs: bool = False
    logit_adjust_tau: float | None = None  # None: the checkpoint's value chosen on validation, else 0
    temperature: float | None = None  # None: the checkpoint's value chosen on validation, else 1
    fuse_bn: bool = False
    tolerance: float | None = None
    seed: int = 0
    calib_data: str | None = None
    calib_count: int = 256
    eval_data: str | None = None
    max_group_drop: float = 2.0
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    force: bool = False
    sign_key: Path | None = None
    class_counts: list[int] | None = field(default=None)
    class_names: list[str] | None = field(default=None)

    @property
    def spec(self) -> FormatSpec:
        """The format's entry in the format table (ConfigError for an unknown format)."""
        return get_format(self.format)

    @property
    def quantized(self) -> bool:
        """INT8 output (a format that needs calibration, or trt --int8): judged on real-image accuracy, not on logit
        parity."""
        return self.spec.needs_calibration or self.int8

    @property
    def reduced_precision(self) -> str | None:
        """'int8' or 'bf16' when the artifact computes in reduced precision (then the Many/Medium/Few accuracy
        gate applies), else None."""
        return "int8" if self.quantized else "bf16" if self.bf16 else None

    @property
    def parity_tolerance(self) -> float:
        """Largest allowed max-abs logit difference (given, or by precision)."""
        if self.tolerance is not None:
            return self.tolerance
        return BF16_TOLERANCE if self.bf16 else HALF_TOLERANCE if self.half else ONNX_TOLERANCE

    def validate(self) -> None:
        """Raise ConfigError naming the first problem, before any work starts."""
        spec = self.spec
        defaults = ExportOptions(output=self.output)
        allowed = COMMON | spec.options
        for item in fields(self):
            if item.name not in allowed and getattr(self, item.name) != getattr(defaults, item.name):
                flag = "--" + item.name.replace("_", "-")
                raise ConfigError(f"{flag} does not apply to --format {self.format}")
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"--opset must be between 7 and 23, got {self.opset}")
        for name in ("static_batch", "opt_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.opt_batch is not None and self.opt_batch > self.max_batch:
            raise ConfigError("--opt-batch must not exceed --max-batch")
        if self.tolerance is not None and self.tolerance <= 0:
            raise ConfigError("--tolerance must be positive")
        if self.half and self.int8:
            raise ConfigError("choose one of --half and --int8")
        if spec.needs_calibration and not self.calib_data:
            raise ConfigError(
                f"--format {self.format} needs --calib-data (an image folder, or 'recipe' for the training set)"
            )
        if self.bf16 and not self.eval_data:
            raise ConfigError(
                "--bf16 needs --eval-data (labelled images, or 'recipe' for the test set) for its accuracy gate"
            )
        if self.int8 and not self.calib_data:
            raise ConfigError("--int8 needs --calib-data (an image folder, or 'recipe' for the training set)")
        if self.calib_count < 16:
            raise ConfigError(f"--calib-count must be at least 16, got {self.calib_count}")
        if self.sign_key is not None and not Path(self.sign_key).is_file():
            raise ConfigError(f"--sign-key {self.sign_key}: no such private key file")
        if self.max_group_drop < 0 or self.workspace_gb <= 0:
            raise ConfigError("--max-group-drop must be >= 0 and --workspace-gb > 0")
