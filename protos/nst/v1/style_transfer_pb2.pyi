from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ColourPreservation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLOUR_PRESERVATION_UNSPECIFIED: _ClassVar[ColourPreservation]
    COLOUR_PRESERVATION_NONE: _ClassVar[ColourPreservation]
    COLOUR_PRESERVATION_LUMINANCE: _ClassVar[ColourPreservation]
    COLOUR_PRESERVATION_HISTOGRAM: _ClassVar[ColourPreservation]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_LBFGS: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]

class Init(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INIT_UNSPECIFIED: _ClassVar[Init]
    INIT_CONTENT: _ClassVar[Init]
    INIT_GRAY: _ClassVar[Init]
    INIT_NOISE: _ClassVar[Init]
    INIT_IMAGE: _ClassVar[Init]
    INIT_MATCHED: _ClassVar[Init]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_BUDGET: _ClassVar[StopReason]
    STOP_REASON_CONVERGED: _ClassVar[StopReason]
COLOUR_PRESERVATION_UNSPECIFIED: ColourPreservation
COLOUR_PRESERVATION_NONE: ColourPreservation
COLOUR_PRESERVATION_LUMINANCE: ColourPreservation
COLOUR_PRESERVATION_HISTOGRAM: ColourPreservation
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_LBFGS: Optimizer
OPTIMIZER_ADAM: Optimizer
INIT_UNSPECIFIED: Init
INIT_CONTENT: Init
INIT_GRAY: Init
INIT_NOISE: Init
INIT_IMAGE: Init
INIT_MATCHED: Init
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_BUDGET: StopReason
STOP_REASON_CONVERGED: StopReason

class StylizeRequest(_message.Message):
    __slots__ = ("content_image", "style_images", "options", "model")
    CONTENT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    STYLE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    content_image: bytes
    style_images: _containers.RepeatedCompositeFieldContainer[StyleImage]
    options: StylizeOptions
    model: str
    def __init__(self, content_image: _Optional[bytes] = ..., style_images: _Optional[_Iterable[_Union[StyleImage, _Mapping]]] = ..., options: _Optional[_Union[StylizeOptions, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class StyleImage(_message.Message):
    __slots__ = ("image", "blend_weight", "scale", "mask", "source_mask")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BLEND_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MASK_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    blend_weight: float
    scale: float
    mask: bytes
    source_mask: bytes
    def __init__(self, image: _Optional[bytes] = ..., blend_weight: _Optional[float] = ..., scale: _Optional[float] = ..., mask: _Optional[bytes] = ..., source_mask: _Optional[bytes] = ...) -> None: ...

class StylizeOptions(_message.Message):
    __slots__ = ("max_side_px", "max_evaluations", "optimizer", "learning_rate", "content_weight", "style_weight", "tv_weight", "init", "seed", "preview_every", "output_format", "lbfgs_history", "colour_preservation", "scales", "coarse_evaluations", "init_image", "content_layers", "style_layers", "style_layer_weights", "width_px", "height_px", "min_improvement", "tileable", "content_only_mask", "coarse_to_fine")
    MAX_SIDE_PX_FIELD_NUMBER: _ClassVar[int]
    MAX_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STYLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    LBFGS_HISTORY_FIELD_NUMBER: _ClassVar[int]
    COLOUR_PRESERVATION_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    COARSE_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYER_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_PX_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_PX_FIELD_NUMBER: _ClassVar[int]
    MIN_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    TILEABLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ONLY_MASK_FIELD_NUMBER: _ClassVar[int]
    COARSE_TO_FINE_FIELD_NUMBER: _ClassVar[int]
    max_side_px: int
    max_evaluations: int
    optimizer: Optimizer
    learning_rate: float
    content_weight: float
    style_weight: float
    tv_weight: float
    init: Init
    seed: int
    preview_every: int
    output_format: ImageFormat
    lbfgs_history: int
    colour_preservation: ColourPreservation
    scales: int
    coarse_evaluations: int
    init_image: bytes
    content_layers: _containers.RepeatedScalarFieldContainer[str]
    style_layers: _containers.RepeatedScalarFieldContainer[str]
    style_layer_weights: _containers.RepeatedScalarFieldContainer[float]
    width_px: int
    height_px: int
    min_improvement: float
    tileable: bool
    content_only_mask: bytes
    coarse_to_fine: bool
    def __init__(self, max_side_px: _Optional[int] = ..., max_evaluations: _Optional[int] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., learning_rate: _Optional[float] = ..., content_weight: _Optional[float] = ..., style_weight: _Optional[float] = ..., tv_weight: _Optional[float] = ..., init: _Optional[_Union[Init, str]] = ..., seed: _Optional[int] = ..., preview_every: _Optional[int] = ..., output_format: _Optional[_Union[ImageFormat, str]] = ..., lbfgs_history: _Optional[int] = ..., colour_preservation: _Optional[_Union[ColourPreservation, str]] = ..., scales: _Optional[int] = ..., coarse_evaluations: _Optional[int] = ..., init_image: _Optional[bytes] = ..., content_layers: _Optional[_Iterable[str]] = ..., style_layers: _Optional[_Iterable[str]] = ..., style_layer_weights: _Optional[_Iterable[float]] = ..., width_px: _Optional[int] = ..., height_px: _Optional[int] = ..., min_improvement: _Optional[float] = ..., tileable: _Optional[bool] = ..., content_only_mask: _Optional[bytes] = ..., coarse_to_fine: _Optional[bool] = ...) -> None: ...

class StylizeResponse(_message.Message):
    __slots__ = ("queued", "started", "progress", "preview", "result", "scale_started")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SCALE_STARTED_FIELD_NUMBER: _ClassVar[int]
    queued: JobQueued
    started: JobStarted
    progress: Progress
    preview: Preview
    result: Result
    scale_started: ScaleStarted
    def __init__(self, queued: _Optional[_Union[JobQueued, _Mapping]] = ..., started: _Optional[_Union[JobStarted, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., preview: _Optional[_Union[Preview, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., scale_started: _Optional[_Union[ScaleStarted, _Mapping]] = ...) -> None: ...

class JobQueued(_message.Message):
    __slots__ = ("job_id", "position")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    position: int
    def __init__(self, job_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class JobStarted(_message.Message):
    __slots__ = ("job_id", "model", "width", "height", "max_evaluations", "optimizer", "device", "scales")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    width: int
    height: int
    max_evaluations: int
    optimizer: Optimizer
    device: str
    scales: int
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., max_evaluations: _Optional[int] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., device: _Optional[str] = ..., scales: _Optional[int] = ...) -> None: ...

class ScaleStarted(_message.Message):
    __slots__ = ("scale", "scales", "width", "height", "max_evaluations")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    scale: int
    scales: int
    width: int
    height: int
    max_evaluations: int
    def __init__(self, scale: _Optional[int] = ..., scales: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., max_evaluations: _Optional[int] = ...) -> None: ...

class Losses(_message.Message):
    __slots__ = ("total", "content", "style", "tv")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    TV_FIELD_NUMBER: _ClassVar[int]
    total: float
    content: float
    style: float
    tv: float
    def __init__(self, total: _Optional[float] = ..., content: _Optional[float] = ..., style: _Optional[float] = ..., tv: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("iteration", "evaluations", "losses", "elapsed_s")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    evaluations: int
    losses: Losses
    elapsed_s: float
    def __init__(self, iteration: _Optional[int] = ..., evaluations: _Optional[int] = ..., losses: _Optional[_Union[Losses, _Mapping]] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class Preview(_message.Message):
    __slots__ = ("iteration", "image", "format")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    image: bytes
    format: ImageFormat
    def __init__(self, iteration: _Optional[int] = ..., image: _Optional[bytes] = ..., format: _Optional[_Union[ImageFormat, str]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queued_s", "warmup_s", "optimise_s", "total_s", "evaluate_s", "step_s", "host_s")
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    WARMUP_S_FIELD_NUMBER: _ClassVar[int]
    OPTIMISE_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_S_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    HOST_S_FIELD_NUMBER: _ClassVar[int]
    queued_s: float
    warmup_s: float
    optimise_s: float
    total_s: float
    evaluate_s: float
    step_s: float
    host_s: float
    def __init__(self, queued_s: _Optional[float] = ..., warmup_s: _Optional[float] = ..., optimise_s: _Optional[float] = ..., total_s: _Optional[float] = ..., evaluate_s: _Optional[float] = ..., step_s: _Optional[float] = ..., host_s: _Optional[float] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("image", "format", "width", "height", "losses", "iterations", "evaluations", "timings", "stop_reason", "full_size_evaluations")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    FULL_SIZE_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    format: ImageFormat
    width: int
    height: int
    losses: Losses
    iterations: int
    evaluations: int
    timings: Timings
    stop_reason: StopReason
    full_size_evaluations: float
    def __init__(self, image: _Optional[bytes] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., losses: _Optional[_Union[Losses, _Mapping]] = ..., iterations: _Optional[int] = ..., evaluations: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., stop_reason: _Optional[_Union[StopReason, str]] = ..., full_size_evaluations: _Optional[float] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeModelResponse(_message.Message):
    __slots__ = ("models", "limits")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: Limits
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "weights", "weights_sha256", "pooling", "preprocessing", "content_layers", "style_layers", "default_content_weight", "default_style_weight", "default_tv_weight", "device", "opset", "exporter", "recipe", "seed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CONTENT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STYLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    name: str
    weights: str
    weights_sha256: str
    pooling: str
    preprocessing: str
    content_layers: _containers.RepeatedScalarFieldContainer[str]
    style_layers: _containers.RepeatedScalarFieldContainer[str]
    default_content_weight: float
    default_style_weight: float
    default_tv_weight: float
    device: str
    opset: int
    exporter: str
    recipe: str
    seed: int
    def __init__(self, name: _Optional[str] = ..., weights: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., pooling: _Optional[str] = ..., preprocessing: _Optional[str] = ..., content_layers: _Optional[_Iterable[str]] = ..., style_layers: _Optional[_Iterable[str]] = ..., default_content_weight: _Optional[float] = ..., default_style_weight: _Optional[float] = ..., default_tv_weight: _Optional[float] = ..., device: _Optional[str] = ..., opset: _Optional[int] = ..., exporter: _Optional[str] = ..., recipe: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_pixels", "max_message_bytes", "max_styles", "max_evaluations", "max_concurrent", "max_queue", "max_regions")
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STYLES_FIELD_NUMBER: _ClassVar[int]
    MAX_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_REGIONS_FIELD_NUMBER: _ClassVar[int]
    max_pixels: int
    max_message_bytes: int
    max_styles: int
    max_evaluations: int
    max_concurrent: int
    max_queue: int
    max_regions: int
    def __init__(self, max_pixels: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_styles: _Optional[int] = ..., max_evaluations: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_regions: _Optional[int] = ...) -> None: ...
