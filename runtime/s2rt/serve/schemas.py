"""Request and response bodies of the daemon's API; FastAPI turns them into the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, WithJsonSchema

MAX_ID = 2**62
_LABEL = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}
# Checked by the service (unknown names, out-of-range indices, count against x) for messages naming y[i].
LabelOrLabels = Annotated[Any, WithJsonSchema({"anyOf": [_LABEL, {"type": "array", "items": _LABEL, "minItems": 1}]})]
# Numbers or nested lists of them; the shape and values are checked against the bundle by `inputs`, so that
# a batch of thousands of numbers is not validated number by number here.
_NESTED = {"anyOf": [{"type": "number"}, {"type": "array", "minItems": 1}]}
Samples = Annotated[list[Any], WithJsonSchema({"type": "array", "minItems": 1, "items": _NESTED})]
MIN_LEARNING_RATE = 1e-10  # smaller steps change nothing in float32, and underflow Adam's bias-corrected step


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    error: str = Field(description="short machine-readable code: invalid_input, not_found, conflict, too_large, unauthorized, …")
    field: str | None = Field(description="the request field at fault, when there is one")
    message: str


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    bundle_digest: str
    adapter_version: int
    training: bool


class ModelInfo(BaseModel):
    bundle_digest: str
    format_version: list[int]
    input: dict[str, Any]
    signature: str
    labels: list[str] = Field(
        description="the served classes, in the order of predict's probabilities: the bundle's, then the active version's new_labels"
    )
    new_labels: list[str] = Field(
        [], description="classes the active adapter version learned on the device (s2rt serve --allow-new-classes)"
    )
    loss: str
    taps: list[dict[str, Any]]
    head: dict[str, Any]
    train_defaults: dict[str, Any]
    provenance: dict[str, Any]
    backend: str
    adapter_version: int


class PredictRequest(Strict):
    x: Samples = Field(
        min_length=1, description="one sample (nested lists of numbers in the input's shape, see /v1/model) or a list of samples"
    )


class PredictResponse(BaseModel):
    adapter_version: int = Field(description="the adapter version that made these predictions")
    classes: list[int]
    labels: list[str] = Field(description="the class names, from the active version's labels (see /v1/model)")
    probabilities: list[list[float]] | None = None
    outputs: list[list[float]] | None = Field(None, description="regression heads: the outputs")
    learned_samples: int | None = Field(
        None, description="with --online: the labelled samples the served head has learned (adapter_version is the last snapshot)"
    )


class SamplesRequest(Strict):
    x: Samples = Field(min_length=1, description="one sample or a list of samples, as for predict")
    y: LabelOrLabels = Field(
        description="class index or label name; a list of them for a list of samples. A name the bundle lacks is refused, "
        "or with s2rt serve --allow-new-classes stored as a new class (index after the bundle's labels and the earlier "
        "new classes; see /v1/samples' labels) that the next job learns"
    )


class SamplesCreated(BaseModel):
    ids: list[int] = Field(description="ids of the stored samples, in order; durable once this response is sent")
    count: int


class SamplesSummary(BaseModel):
    signature: str
    count: int = Field(description="samples of the served bundle's input signature")
    count_all_signatures: int
    labels: list[str] = Field(
        [], description="the names of by_label's class indices: the bundle's labels, then the new classes samples brought"
    )
    by_label: dict[int, int]
    ids: list[int]
    next_after_id: int | None


class Sample(BaseModel):
    id: int
    signature: str
    x: list[Any] | None = Field(description="the sample, or null if it belongs to another input signature")
    y: int
    label: str | None
    created: float


class TrainRequest(Strict):
    # The held-out split is what check_accuracy checks against: it needs val_fraction > 0.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"check_accuracy": {"const": False}}, "required": ["check_accuracy"]},
                {"properties": {"val_fraction": {"exclusiveMinimum": 0}}},
            ]
        }
    )

    epochs: StrictInt | None = Field(None, ge=1, le=10_000, description="default: the bundle's")
    batch_size: StrictInt | None = Field(None, ge=1, le=65_536, description="default: the bundle's")
    learning_rate: float | None = Field(
        None, ge=MIN_LEARNING_RATE, le=100, allow_inf_nan=False, description=f"default: the bundle's; {MIN_LEARNING_RATE:g} to 100"
    )
    optimizer: Literal["sgd", "adam"] | None = Field(None, description="default: the bundle's")
    seed: StrictInt = Field(0, ge=0, le=2**32 - 1, description="seeds the shuffling")
    val_fraction: float = Field(
        0.2, ge=0, lt=1, allow_inf_nan=False, description="share of samples held out (fixed by content); > 0 unless check_accuracy is false"
    )
    check_accuracy: StrictBool = Field(True, description="activate only if held-out accuracy is not worse than the active version's")
    start_from: Literal["active", "initial"] | Annotated[StrictInt, Field(ge=0, le=MAX_ID)] = Field(
        "active",
        description="continue the active adapters, start afresh from the bundle's initial head, or start from this adapter "
        "version (e.g. a global version imported with POST /v1/adapters)",
    )
    method: str | None = Field(
        None,
        max_length=32,
        description="the fine-tuning method (as s2rt train --method: skip2lora, ft-last, skip2relu, oselm, ...); "
        "default: the start version's; another method's family starts from that method's fresh head",
    )
    logit_adjustment: float = Field(
        0.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="train on z + tau log(prior of the training samples' classes): a class the device has no sample of "
        "leaves the softmax (a fleet device holding a few classes stops pushing the others down); 0: off",
    )
    new_classes: bool = Field(
        True,
        description="learn the classes that stored samples brought beyond the start version's (s2rt serve --allow-new-classes: "
        "the skip2lora head grows a row per class); false: train on the start version's classes only, leaving the other "
        "samples out (a fleet round: the global adapters hold the bundle's classes)",
    )
    commit: Literal["accepted", "always"] = Field(
        "accepted",
        description="accepted: keep the trained adapters only if the accuracy gate activates them; always: keep them as a new "
        "version either way (a fleet member downloads and sends it), activating it only if the gate accepts it",
    )


class JobInfo(BaseModel):
    id: int
    state: str = Field(description="running, succeeded, rejected, failed, cancelled or interrupted")
    bundle_digest: str
    options: dict[str, Any]
    created_utc: str
    finished_utc: str | None
    start_version: int
    n_train: int
    n_val: int
    examples: int = Field(0, description="samples the job trains on (n_train): a fleet update's weight")
    progress: dict[str, Any]
    loss: float | None
    val_accuracy: float | None
    history: list[dict[str, Any]]
    result: dict[str, Any] | None
    message: str


class JobList(BaseModel):
    jobs: list[JobInfo]


class VersionInfoModel(BaseModel):
    version: int
    active: bool
    created_utc: str | None
    metrics: dict[str, Any]
    job: int | None
    parent: int | None
    origin: str | None = Field(None, description="where the version came from: 'fleet' for an imported global version")
    fleet_round: int | None = Field(None, description="the fleet round of an imported global version, when its file names one")
    method: str = Field("skip2lora", description="the fine-tuning method whose head the version holds (s2rt train --method)")
    new_labels: list[str] = Field([], description="classes the version learned beyond the bundle's labels")
    online: dict[str, Any] | None = Field(
        None, description="an online snapshot (--online): samples learned, the last sample id seen, what triggered it"
    )
    loadable: bool
    error: str | None


class VersionList(BaseModel):
    active: int
    history: list[int]
    versions: list[VersionInfoModel]


class Activated(BaseModel):
    active: int


class Imported(BaseModel):
    version: int = Field(description="the stored version's number")
    active: int = Field(description="the version active after the import")
    activated: bool
    reason: str
    signed_by: str = Field(description="the fleet key id that signed it")
    val_accuracy: float | None = None
    active_val_accuracy: float | None = None


class StatisticsRequest(Strict):
    kappa: float = Field(4.0, gt=0, le=1000, allow_inf_nan=False, description="the target margin: T = kappa (onehot - 1/C) - frozen logits")


class OnlineStatus(BaseModel):
    method: str = Field(description="the online head's method: oselm or oselm-rf")
    warmup: int = Field(description="learnable samples fitted in closed form before learning goes sample by sample")
    holdout: float = Field(description="share of samples (fixed by content) that judge snapshots, pick kappa and lambda, are never learned")
    learned_samples: int
    warming_up: bool
    warmup_samples: int = Field(description="learnable samples collected for the warm-up fit")
    held_out_seen: int = Field(description="held-out samples seen: they pick kappa and lambda again at 2, 4, 8, ... x warmup learned")
    since_snapshot: int = Field(description="samples learned since the last snapshot")
    through_sample: int = Field(description="the id of the last stored sample the learner has seen")
    kappa: float | None
    lambda_: float | None = Field(alias="lambda")
    adapter_version: int = Field(description="the active version: the last accepted snapshot")
    snapshot_every: int
    snapshot_seconds: float


class Snapshot(BaseModel):
    accepted: bool
    reason: str
    version: int | None = Field(None, description="the new version, when the gate accepted the snapshot")
    learned_samples: int
    active_version: int = Field(description="the version the snapshot was judged against")
    val_accuracy: float | None = None
    active_val_accuracy: float | None = None


class Deployed(BaseModel):
    bundle_digest: str
    changed: bool
    samples: int = Field(description="stored samples of the new bundle's input signature")
