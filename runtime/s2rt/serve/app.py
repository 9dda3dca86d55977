"""The HTTP/JSON API under /v1, on FastAPI: routes are thin, the work is in `Service`.

Every refusal is a JSON body `{"error": code, "field": name-or-null, "message": text}`
with a 4xx status; a full disk is 507 (insufficient_storage); an unexpected failure is
logged and answered 500 while the daemon keeps serving. No route reads or writes a path
a client gives. The OpenAPI schema's request examples are made from the served bundle,
so each one is a request the daemon accepts.
"""

from __future__ import annotations

import copy
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from s2rt import __version__
from s2rt.errors import RuntimeInputError
from s2rt.serve import schemas as s
from s2rt.serve.access import Access, ControlGuard
from s2rt.serve.errors import ApiError, disk_full, not_found
from s2rt.serve.fleet import import_version as import_version_of
from s2rt.serve.fleet_signing import KEY_HEADER, SEQUENCE_HEADER, SIGNATURE_HEADER
from s2rt.serve.fleet_statistics import statistics as fleet_statistics
from s2rt.serve.jobs import JobOptions
from s2rt.serve.middleware import BearerAuth, BodyLimit, Options, RequestMetrics
from s2rt.serve.service import Service, store_call

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/v1/health/live", "/v1/health/ready"})
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": s.ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422)}
WRITES: dict[int | str, dict[str, Any]] = {507: {"model": s.ErrorResponse, "description": "the disk holding the state is full"}}
UPLOADS = "/v1/bundle"
RAW_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
Id = Annotated[int, Path(ge=0, le=s.MAX_ID)]
ACTIVATE_IMPORT = "activate it if the accuracy gate accepts it on this device's held-out samples (default: store only)"


@dataclass(frozen=True)
class Limits:
    body_bytes: int = 8 << 20
    bundle_bytes: int = 16 << 20


def create_app(
    service: Service, tokens: tuple[bytes, ...] = (), limits: Limits = Limits(), log_requests: bool = False, access: Access | None = None
) -> FastAPI:
    app = FastAPI(
        title="s2rt",
        version=__version__,
        description="On-device Skip2-LoRA runtime: predict, collect labelled samples, fine-tune, manage adapter versions.",
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses=ERRORS,
    )
    _errors(app)
    _health(app, service)
    _predict(app, service)
    _samples(app, service)
    _jobs(app, service)
    _adapters(app, service)
    _bundle(app, service)
    _online(app, service)
    _fleet(app, service)
    _openapi_examples(app, service)
    uploads = _spool_dir(service.state_dir)
    app.add_middleware(
        BodyLimit, limit=limits.body_bytes, overrides={UPLOADS: limits.bundle_bytes}, spool=frozenset({UPLOADS}), spool_dir=uploads
    )
    app.add_middleware(ControlGuard, access=access or Access())  # before the body is read
    app.add_middleware(Options, routes=app.routes)
    app.add_middleware(BearerAuth, tokens=tokens, public=PUBLIC_PATHS)
    app.add_middleware(RequestMetrics, metrics=service.metrics, log_requests=log_requests)
    return app


def _errors(app: FastAPI) -> None:
    def reply(status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": code, "field": field, "message": message}, status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        full = disk_full(e) if e.status >= 409 else None  # e.g. a state file that could not be written
        if full is not None:
            return reply(507, "insufficient_storage", full)
        return reply(e.status, e.code, e.message, e.field)

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.Error)
    async def storage_error(request: Request, e: Exception) -> JSONResponse:
        full = disk_full(e)
        if full is None:
            return await internal_error(request, e)
        log.error("%s %s: %s", request.method, request.url.path, full)
        return reply(507, "insufficient_storage", full)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        first: dict[str, Any] = dict(errors[0]) if errors else {"loc": ("body",), "msg": "invalid request"}
        loc = [p for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
        if first.get("type") == "json_invalid":
            field, msg = "body", f"malformed JSON: {first.get('ctx', {}).get('error', 'decode error')} at byte {first['loc'][-1]}"
        else:
            msg = first.get("msg", "invalid")
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return reply(422, "invalid_input", f"{field}: {msg}{more}", field)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        field = "body" if e.status_code == 400 else None  # FastAPI's 400 is a body it could not parse (too deep, not UTF-8)
        return reply(e.status_code, code, str(e.detail), field, headers=getattr(e, "headers", None))

    @app.exception_handler(RuntimeInputError)
    async def input_error(_: Request, e: RuntimeInputError) -> JSONResponse:
        return reply(422, "invalid_input", str(e))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, e, exc_info=e)
        return reply(500, "internal_error", f"internal error ({type(e).__name__}); the daemon keeps serving, see its log")


def _health(app: FastAPI, service: Service) -> None:
    @app.get("/v1/health/live", response_model=s.Health, tags=["health"])
    def live() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/v1/health/ready", response_model=s.Readiness, tags=["health"], responses={503: {"model": s.Readiness}})
    def ready() -> Any:
        """Ready to serve predictions (503 while shutting down)."""
        serving = service.serving
        body = {
            "ready": not service.closing,
            "bundle_digest": serving.deployment.bundle.digest,
            "adapter_version": serving.version,
            "training": service.jobs.busy,
        }
        return body if not service.closing else JSONResponse(body, 503)

    @app.get("/v1/model", response_model=s.ModelInfo, tags=["model"])
    def model() -> dict[str, Any]:
        """The served bundle: input signature, classes, taps, head, digest, active adapter version."""
        serving = service.serving
        b = serving.deployment.bundle
        return {
            "bundle_digest": b.digest,
            "format_version": list(b.format_version),
            "input": {"name": b.input.name, "shape": list(b.input.shape), "dtype": b.input.dtype.name.lower()},
            "signature": serving.deployment.signature,
            "labels": list(serving.labels),
            "new_labels": list(serving.new_labels),
            "loss": b.head.loss.name.lower(),
            "taps": [{"name": t.name, "layer": t.layer, "shape": list(t.shape), "reduction": t.reduction.name.lower()} for t in b.taps],
            "head": {
                "rank": b.head.rank,
                "alpha": b.head.alpha,
                "trainable_parameters": b.head.num_parameters,
                "method": serving.method,
            },
            "train_defaults": {
                "optimizer": b.head.defaults.optimizer.name.lower(),
                "learning_rate": b.head.defaults.learning_rate,
                "epochs": b.head.defaults.epochs,
                "batch_size": b.head.defaults.batch_size,
            },
            "provenance": {
                "source_name": b.provenance.source_name,
                "source_sha256": b.provenance.source_sha256,
                "producer": f"{b.provenance.producer} {b.provenance.producer_version}",
                "created_utc": b.provenance.created_utc,
            },
            "backend": serving.deployment.frozen.backend.name,
            "adapter_version": serving.version,
        }

    @app.get("/v1/metrics", response_class=PlainTextResponse, tags=["health"])
    def metrics() -> PlainTextResponse:
        """Prometheus text format: requests and latencies, predictions, samples, cache hits, training runs."""
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")


def _predict(app: FastAPI, service: Service) -> None:
    @app.post("/v1/predict", response_model=s.PredictResponse, tags=["predict"])
    def predict(body: s.PredictRequest) -> JSONResponse:
        """Class and probabilities for one sample or a list of samples (JSON)."""
        return JSONResponse(service.predict_json(body.x))

    @app.post("/v1/predict/npy", response_model=s.PredictResponse, tags=["predict"], openapi_extra=RAW_BODY)
    async def predict_npy(request: Request) -> JSONResponse:
        """As /v1/predict, with the samples as a raw `.npy` body (one sample or a batch; float32 is fastest)."""
        body = await request.body()
        return JSONResponse(await run_in_threadpool(service.predict_npy, body))


def _samples(app: FastAPI, service: Service) -> None:
    @app.post("/v1/samples", response_model=s.SamplesCreated, status_code=201, tags=["samples"], responses=WRITES)
    def add(body: s.SamplesRequest) -> dict[str, Any]:
        """Store labelled samples. They are on disk (SQLite, WAL, synchronous=FULL) before this answers."""
        ids = service.ingest_json(body.x, body.y)
        return {"ids": ids, "count": len(ids)}

    @app.get("/v1/samples", response_model=s.SamplesSummary, tags=["samples"])
    def summary(
        after_id: Annotated[int, Query(ge=0, le=s.MAX_ID)] = 0, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
    ) -> dict[str, Any]:
        """How many samples (per class) the served bundle trains on, and a page of their ids."""
        deployment = service.serving.deployment
        sig = deployment.signature
        labels = [*deployment.bundle.labels, *service.samples.new_classes(sig)]
        return {"signature": sig, "labels": labels, **service.samples.summary(sig, after_id, limit)}

    @app.get("/v1/samples/{sample_id}", response_model=s.Sample, tags=["samples"])
    def get(sample_id: Id) -> dict[str, Any]:
        """One stored sample."""
        row = service.samples.get(sample_id)
        if row is None:
            raise not_found(f"sample {sample_id} does not exist", "sample_id")
        sig, raw, label, created = row
        deployment = service.serving.deployment
        same = sig == deployment.signature
        x = None
        if same:
            inp = deployment.bundle.input
            x = np.frombuffer(raw, dtype=inp.dtype.numpy).reshape(inp.shape).tolist()
        labels = deployment.bundle.labels + service.samples.new_classes(sig) if same else ()
        return {
            "id": sample_id,
            "signature": sig,
            "x": x,
            "y": label,
            "label": labels[label] if same and 0 <= label < len(labels) else None,
            "created": created,
        }


def _jobs(app: FastAPI, service: Service) -> None:
    busy: dict[int | str, dict[str, Any]] = {**WRITES, 503: {"model": s.ErrorResponse}}

    @app.post("/v1/jobs", response_model=s.JobInfo, status_code=202, tags=["training"], responses=busy)
    def start(body: s.TrainRequest) -> dict[str, Any]:
        """Start a fine-tune job on the stored samples (409 while another runs)."""
        return service.jobs.start(JobOptions(**body.model_dump()))

    @app.get("/v1/jobs", response_model=s.JobList, tags=["training"])
    def jobs(limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
        """The latest jobs, newest first."""
        return {"jobs": service.jobs.list(limit)}

    @app.get("/v1/jobs/{job_id}", response_model=s.JobInfo, tags=["training"])
    def job(job_id: Id) -> dict[str, Any]:
        """A job's state, progress, loss, held-out accuracy and outcome."""
        return service.jobs.get(job_id)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=s.JobInfo, tags=["training"])
    def cancel(job_id: Id) -> dict[str, Any]:
        """Ask a running job to stop at its next batch; the active adapters stay."""
        return service.jobs.cancel(job_id)


def _adapters(app: FastAPI, service: Service) -> None:
    @app.get("/v1/adapters", response_model=s.VersionList, tags=["adapters"])
    def versions() -> dict[str, Any]:
        """Adapter versions of the served bundle with their metrics; version 0 is the bundle's initial head."""
        serving = service.serving
        store, active = serving.deployment.adapters, serving.version
        return {"active": active, "history": list(store.history), "versions": [v.describe(active) for v in store.versions()]}

    @app.post("/v1/adapters", response_model=s.Imported, status_code=201, tags=["adapters"], openapi_extra=RAW_BODY, responses=WRITES)
    async def import_version(
        request: Request,
        activate: Annotated[bool, Query(description=ACTIVATE_IMPORT)] = False,
    ) -> dict[str, Any]:
        """Import a global adapter version (an adapter .npz) signed by a fleet key (--fleet-key): headers
        x-s2l-fleet-signature, x-s2l-fleet-key and x-s2l-fleet-sequence (409 for a sequence older than the newest
        imported). Stored as a new version; activated only on request and through the gate."""
        body = await request.body()
        signature, key_id, sequence = (request.headers.get(h) for h in (SIGNATURE_HEADER, KEY_HEADER, SEQUENCE_HEADER))
        return dict(await run_in_threadpool(import_version_of, service, body, signature, key_id, activate, sequence))

    @app.get("/v1/adapters/{version}", response_model=s.VersionInfoModel, tags=["adapters"])
    def version(version: Id) -> dict[str, Any]:
        serving = service.serving
        return store_call(lambda: serving.deployment.adapters.info(version).describe(serving.version))

    @app.get("/v1/adapters/{version}/download", tags=["adapters"], responses={200: {"content": {"application/octet-stream": {}}}})
    def download(version: Id) -> Response:
        """The version's adapter file (.npz, no pickle), usable with `s2rt eval/predict --adapters`."""
        store = service.serving.deployment.adapters
        store_call(lambda: store.info(version))
        if version == 0:
            raise not_found("version 0 is the bundle's initial head and has no file; download the bundle instead", "version")
        try:
            data = store.path(version).read_bytes()
        except FileNotFoundError:
            raise not_found(f"adapter version {version} has no file", "version") from None
        headers = {"content-disposition": f'attachment; filename="adapters-v{version}.npz"'}
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.post("/v1/adapters/{version}/activate", response_model=s.Activated, tags=["adapters"], responses=WRITES)
    def activate(version: Id) -> dict[str, int]:
        """Serve this version from now on (it is loaded and checked first)."""
        return {"active": service.activate(version)}

    @app.post("/v1/adapters/rollback", response_model=s.Activated, tags=["adapters"], responses=WRITES)
    def rollback() -> dict[str, int]:
        """Re-activate the version that was active before the current one."""
        return {"active": service.rollback()}


def _bundle(app: FastAPI, service: Service) -> None:
    @app.get("/v1/bundle", tags=["model"], responses={200: {"content": {"application/octet-stream": {}}}})
    def download() -> Response:
        """The served bundle file."""
        digest, data = service.bundle_file()
        headers = {"content-disposition": f'attachment; filename="{digest[:12]}.s2l"'}
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.put(UPLOADS, response_model=s.Deployed, tags=["model"], openapi_extra=RAW_BODY, responses=WRITES)
    async def deploy(request: Request) -> dict[str, Any]:
        """Deploy a new bundle (raw body, at most --max-bundle-bytes, else 413). It is verified and loaded
        before it replaces the served one; samples of the same input signature carry over, the Skip-Cache
        starts afresh. 409 while a job runs; 403 unless the daemon has a trusted key (uploads must be
        signed by it) or --allow-unsigned-deploy."""
        service.check_deploy_allowed()
        upload: FilePath = request.state.body_file  # BodyLimit streamed the body there

        def read_and_deploy() -> dict[str, Any]:
            return service.deploy(upload.read_bytes())

        return await run_in_threadpool(read_and_deploy)


def _online(app: FastAPI, service: Service) -> None:
    @app.get("/v1/online", response_model=s.OnlineStatus, tags=["online"])
    def status() -> dict[str, Any]:
        """The online learner (--online): samples learned, warm-up, samples since the last snapshot (409 without --online)."""
        learner = service.online_learner()
        with learner.lock:
            body = learner.status()
        o = learner.options
        schedule = {"snapshot_every": o.snapshot_every, "snapshot_seconds": o.snapshot_seconds}
        return {**body, **schedule, "adapter_version": service.serving.version}

    @app.post("/v1/online/snapshot", response_model=s.Snapshot, tags=["online"], responses=WRITES)
    def snapshot() -> dict[str, Any]:
        """Commit the online head as an adapter version now, if the accuracy gate accepts it on the held-out samples
        (then it is activated: the rollback point and what a restart resumes from); 409 while it warms up."""
        return service.snapshot()


def _fleet(app: FastAPI, service: Service) -> None:
    binary: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}}}

    @app.post("/v1/fleet/statistics", tags=["fleet"], responses=binary)
    def statistics(body: s.StatisticsRequest) -> Response:
        """This device's ridge sums for the fleet's closed-form round (--fleet-key; 403 without): an .npz of G = X^T X
        (upper triangle), X^T T, tr(T^T T) and the count over the samples jobs train on, and the same prefixed
        `held_out.` over the gate's held-out samples. 409 while a job runs, or when the bundle's fused taps exceed
        the width the sums allow."""
        return Response(fleet_statistics(service, body.kappa), media_type="application/octet-stream")


def _spool_dir(state_dir: FilePath) -> FilePath:
    """DIR/uploads for bundle uploads in progress, emptied of any a crash left behind."""
    uploads = state_dir / "uploads"
    uploads.mkdir(mode=0o700, exist_ok=True)
    for stale in uploads.glob("upload-*.part"):
        stale.unlink(missing_ok=True)
    return uploads


def _openapi_examples(app: FastAPI, service: Service) -> None:
    """Request examples made from the bundle served when the schema is asked for."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = copy.deepcopy(generate())
        bundle = service.serving.deployment.bundle
        sample = np.zeros(bundle.input.shape).tolist()
        examples = {
            ("/v1/predict", "post"): {"x": sample},
            ("/v1/samples", "post"): {"x": sample, "y": bundle.labels[0] if bundle.labels else 0},
            ("/v1/jobs", "post"): {"epochs": 5, "learning_rate": 0.01, "val_fraction": 0.2},
        }
        for (path, method), example in examples.items():
            schema["paths"][path][method]["requestBody"]["content"]["application/json"]["example"] = example
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
