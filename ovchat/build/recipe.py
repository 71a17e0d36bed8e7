"""How weights are compressed: the `Recipe` an export follows, and the named recipes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import OvchatError

WEIGHT_FORMATS = ("int4", "int8", "fp16")


@dataclass(frozen=True)
class Recipe:
    """How weights are compressed. The defaults are ovchat's: int4 sym group 32 for half of the layers
    (the rest int8), with AWQ and scale estimation calibrated on a shipped text: the best quality per
    byte among the fast recipes in benchmarks/results/recipes_smollm2*.md, by the rule in
    docs/quality.md, and no slower than group 128 at Phi-3-mini's widths (docs/speed.md).
    SAMPLE_RECIPE is the OpenVINO Phi-3 chat sample's."""

    weight_format: str = "int4"
    group_size: int = 32
    ratio: float = 0.5
    sym: bool = True
    # Data-aware int4, calibrated on the shipped calibration text (never the evaluation text).
    # None: on for int4, off for int8 and fp16 (which have no int4 layers to calibrate).
    awq: bool | None = None
    scale_estimation: bool | None = None

    def __post_init__(self) -> None:
        if self.weight_format not in WEIGHT_FORMATS:
            raise OvchatError(f"unknown weight format '{self.weight_format}': use one of {', '.join(WEIGHT_FORMATS)}")
        int4 = self.weight_format == "int4"
        for name, flag in (("awq", "--awq"), ("scale_estimation", "--scale-estimation")):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, int4)
            elif value and not int4:
                raise OvchatError(
                    f"{name} calibrates int4 layers and {self.weight_format} has none: "
                    f"drop {flag} or use --weight-format int4"
                )
        gs = self.group_size
        if isinstance(gs, bool) or not isinstance(gs, int) or gs <= 0 or gs & (gs - 1):
            raise OvchatError(f"group size must be a positive power of two (e.g. 32, 64, 128), not {gs}")
        if not 0 < self.ratio <= 1:
            raise OvchatError(f"ratio must be in (0, 1] (the share of layers in int4), not {self.ratio}")

    @property
    def data_aware(self) -> bool:
        return self.awq or self.scale_estimation

    @property
    def tag(self) -> str:
        if self.weight_format != "int4":
            return self.weight_format
        extra = "-awq" * self.awq + "-se" * self.scale_estimation
        return f"int4-{'sym' if self.sym else 'asym'}-g{self.group_size}-r{self.ratio:g}{extra}"

    def optimum_args(self) -> list[str]:
        args = ["--weight-format", self.weight_format]
        if self.weight_format == "int4":
            # "adjust": layers the group size does not divide get the largest power of two that does.
            args += [
                "--group-size",
                str(self.group_size),
                "--ratio",
                str(self.ratio),
                "--group-size-fallback",
                "adjust",
            ]
            args += ["--sym"] if self.sym else []
        return args


# The OpenVINO Phi-3 chat sample's: --weight-format int4 --group-size 128 --ratio 0.6 --sym.
SAMPLE_RECIPE = Recipe(group_size=128, ratio=0.6, awq=False, scale_estimation=False)

# From this many parameters on, the default is LARGE_RECIPE, the sample's: a calibrated export holds
# the IR and a float32 compiled copy of it (ovchat.build.estimate), over 16 GB at Phi-3-mini's 3.8 B
# on every CPU, and takes half an hour or more on 2 cores; group 32 also decodes slower there. Of the
# data-free recipes measured at full size, the sample's decoded fastest and lost least (docs/quality.md,
# "What an export costs, and the default recipe by size").
LARGE_MODEL_PARAMETERS = 2e9
LARGE_RECIPE = SAMPLE_RECIPE
FIELDS = ("weight_format", "group_size", "ratio", "sym", "awq", "scale_estimation")


def default_recipe(parameters: float | None) -> Recipe:
    """ovchat's default for a model of `parameters` (None: not known, the small-model default)."""
    return LARGE_RECIPE if parameters is not None and parameters >= LARGE_MODEL_PARAMETERS else Recipe()


def with_defaults(parameters: float | None, **given) -> Recipe:
    """The recipe asked for: the fields given (None: not given) over the default for the model's size."""
    base = asdict(default_recipe(parameters))
    if given.get("weight_format") not in (None, "int4"):  # no int4 layers: nothing to calibrate
        base.update(awq=None, scale_estimation=None)
    return Recipe(**{**base, **{k: v for k, v in given.items() if v is not None}})
