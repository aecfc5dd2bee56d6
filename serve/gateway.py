"""Gateway deployment: the FastAPI ingress — validation, limits, routing by intent, SSE, errors.

Each chat request: classify -> (route by intent) -> embed -> retrieve -> rerank -> generate. The
reranker and generator are optional for an answer: when they fail or are late, the answer still
comes back, in retrieval order or from the in-process template, and `degraded` says so.
"""

import asyncio
import collections
import functools
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.pairs import profile
from monitoring.metrics import metric
from monitoring.tracing import stage_span

from .config import AppArgs
from .generator import INTERRUPTED, TemplateGenerator
from .index import FilterError, check_filters
from .routing import asks_for_similar, index_for, order_number, similarity, volume_number
from .schemas import (ChatRequest, ChatResponse, ClassifyResponse, EmbedResponse, ErrorResponse, RerankRequest,
                      RerankResponse, SearchRequest, SearchResponse, TextsRequest)
from .security import ApiKeys, AuthError, install_log_redaction

log = logging.getLogger("ray.serve")  # Serve's replica log, with the request id; records pass RedactingFilter

REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")


def _error(description: str, retry_after: bool = False) -> dict:
    headers = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
    # the media type said explicitly: a route whose answer is HTML still errs in JSON
    return {"model": ErrorResponse, "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            **({"headers": headers} if retry_after else {})}


# what any route may answer besides its own errors: API keys (when enabled), the request deadline, overload
COMMON_ERRORS = {401: _error("API keys are enabled and the request has no valid key"),
                 408: _error("the request did not finish within timeouts.request"),
                 413: _error("the body is over limits.max_body_bytes"),
                 429: _error("over the API key's rate limit", retry_after=True),
                 503: _error("overloaded, or a required stage failed or missed its deadline", retry_after=True)}
ERRORS = {**COMMON_ERRORS, 400: _error("empty query, invalid JSON or UTF-8"),
          413: _error("a query, text, document, list or the body is over its limit"),
          422: _error("wrong types, unknown fields, an inapplicable filter, top_k over its limit")}
CHAT_RESPONSES = {**ERRORS, 200: {"description": "the answer; with stream=true, Server-Sent Events (`token` "
                                                 "events, then one `final` event with the answer's fields)",
                                  "content": {"text/event-stream": {"schema": {
                                      "type": "object", "required": ["event", "data"],
                                      "properties": {"event": {"enum": ["token", "final"]},
                                                     "data": {"type": "string", "description": "JSON"}}}}}}}
DRIFT_ERRORS = {**COMMON_ERRORS, 404: _error("drift monitoring is disabled")}
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, retry_after: int | None = None):
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


def error_response(status: int, type_: str, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status, headers=headers)


app = FastAPI(
    title="MangaAssist Serve",
    version="1.0",
    description="The MangaAssist shopping assistant: intent classification, retrieval, reranking and grounded "
                "answers, served as one Ray Serve application.",
)


BODY_LIMIT = {"bytes": 256 * 1024}  # set from Limits by the replica's Gateway (configure)
API_KEYS: dict[str, ApiKeys | None] = {}  # {"keys": ...} set from AuthSettings by the replica's Gateway (configure)


def configure(args: AppArgs) -> None:
    """Set what the middleware reads. A module function on purpose: Serve ships the Gateway class by
    value, its methods with copies of the globals they use, so a method setting BODY_LIMIT itself would
    change a copy that the middleware (shipped by reference, reading this module) never sees."""
    BODY_LIMIT["bytes"] = args.limits.max_body_bytes
    API_KEYS["keys"] = ApiKeys(args.auth) if args.auth.enabled else None


ROUTES = frozenset({"/v1/chat", "/v1/classify", "/v1/embed", "/v1/search", "/v1/rerank", "/v1/drift",
                    "/v1/drift/report", "/healthz", "/readyz"})


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, size: int):
        super().__init__(413, f"request body is over {size} bytes so far; the limit is {BODY_LIMIT['bytes']}")


class BodyLimit:
    """Counts the bytes of a body as they arrive, so that one without a Content-Length (chunked) cannot
    grow without bound either: past the limit, reading it raises BodyTooLarge (a 413)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > BODY_LIMIT["bytes"]:
                    raise BodyTooLarge(received)
            return message

        await self.app(scope, limited, send)


app.add_middleware(BodyLimit)


@app.middleware("http")
async def _body_limit_and_metrics(request: Request, call_next):
    started = time.perf_counter()
    length = request.headers.get("content-length")
    keys = API_KEYS.get("keys")
    path = _relative_path(request)
    try:
        if keys is not None and path not in OPEN_PATHS:
            keys.check(request.headers)  # before reading the body: an anonymous client costs nothing
        if length and length.isdigit() and int(length) > BODY_LIMIT["bytes"]:
            response = error_response(413, "body_too_large", f"request body is {length} bytes; the limit is {BODY_LIMIT['bytes']}")
        else:
            response = await call_next(request)
    except AuthError as exc:
        response = error_response(exc.status, exc.type, exc.message, exc.retry_after)
    route = path if path in ROUTES else "other"  # bounded label values
    tags = {"route": route, "intent": getattr(request.state, "intent", "none"), "status": str(response.status_code)}
    metric("mangaassist_requests").inc(tags=tags)
    metric("mangaassist_request_latency_seconds").observe(time.perf_counter() - started, tags={"route": route})
    return response


def _relative_path(request: Request) -> str:
    """The path inside this app (an app may be served under a route prefix)."""
    root = request.scope.get("root_path", "").rstrip("/")
    path = request.url.path
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def deadline(handler):
    """The end-to-end deadline (timeouts.request) of a route: past it, every stage still running is
    cancelled (down the graph: Serve cancels the handle calls) and the answer is a 408."""

    @functools.wraps(handler)
    async def bounded(self, *args, **kwargs):
        limit = self.args.timeouts.request
        try:
            async with asyncio.timeout(limit):
                return await handler(self, *args, **kwargs)
        except TimeoutError:
            raise ApiError(408, "request_timeout", f"the request did not finish within {limit:.1f} s", 1)

    return bounded


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError):
    return error_response(exc.status, exc.type, exc.message, exc.retry_after)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "invalid_json", "request body is not valid UTF-8 JSON")
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors[:5])
    return error_response(422, "validation_error", detail)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # FastAPI's undecodable body
        return error_response(400, "invalid_json", "request body is not valid UTF-8 JSON")
    if isinstance(exc, BodyTooLarge):
        return error_response(413, "body_too_large", str(exc.detail))
    return error_response(exc.status_code, "http_error", str(exc.detail))


class Timer:
    """Per-stage wall times (the x-stage-*-ms headers and timings_ms), one trace span per stage."""

    def __init__(self, request_id: str | None = None):
        self.started = time.perf_counter()
        self.stages: dict[str, float] = {}
        self.request_id = request_id or serve.context._get_serve_request_context().request_id

    @asynccontextmanager
    async def stage(self, name: str):
        t0 = time.perf_counter()
        with stage_span(name, self.request_id):
            try:
                yield
            finally:
                self.stages[name] = round((time.perf_counter() - t0) * 1000, 2)

    def total(self) -> dict[str, float]:
        return {**self.stages, "total": round((time.perf_counter() - self.started) * 1000, 2)}

    def headers(self) -> dict[str, str]:
        return {f"x-stage-{name}-ms": f"{ms:.2f}" for name, ms in self.total().items()}


@serve.deployment(ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=100)
@serve.ingress(app)
class Gateway:
    def __init__(self, classifier: DeploymentHandle, embedder: DeploymentHandle, retriever: DeploymentHandle,
                 reranker: DeploymentHandle, generator: DeploymentHandle, args: AppArgs,
                 drift: DeploymentHandle | None = None):
        self.classifier, self.embedder, self.retriever = classifier, embedder, retriever
        self.reranker, self.generator, self.drift = reranker, generator, drift
        # drift records wait here until the next flush; when the monitor lags, the oldest fall out
        self.drift_buffer: collections.deque[dict] = collections.deque(maxlen=args.drift.window_size)
        self.drift_flusher: asyncio.Task | None = None
        self.args = args
        self.limits = args.limits
        configure(args)
        install_log_redaction("ray.serve")
        self.fallback_generator = TemplateGenerator()
        self.embedder_name: str | None = None

    # --- plumbing -----------------------------------------------------------------------------

    async def _call(self, name: str, response, timeout: float):
        """Await a stage; a failure or deadline of a required stage is a 503 the client may retry."""
        try:
            return await asyncio.wait_for(response, timeout)
        except asyncio.TimeoutError:
            raise ApiError(503, f"{name}_timeout", f"the {name} stage did not answer within {timeout:.1f} s", 1)
        except ApiError:
            raise
        except BackPressureError:  # the stage's queue is full (max_queued_requests): shed, do not wait
            raise ApiError(503, "overloaded", f"the {name} stage is overloaded; retry shortly", 1)
        except Exception as exc:  # the deployment raised or is unavailable
            raise ApiError(503, f"{name}_unavailable", f"the {name} stage failed ({type(exc).__name__})", 2)

    @staticmethod
    def _unicode(text: str, what: str) -> None:
        """JSON may escape a lone surrogate (\\ud800); it is no text a model or an answer can hold: a 400."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "invalid_text", f"{what} is not valid Unicode text (a lone surrogate)")

    def _query(self, text: str) -> str:
        self._unicode(text, "query")
        if not text.strip():
            raise ApiError(400, "empty_query", "query must contain non-whitespace text")
        if len(text) > self.limits.max_query_chars:
            raise ApiError(413, "query_too_long", f"query is {len(text)} characters; the limit is {self.limits.max_query_chars}")
        return text.strip()

    def _top_k(self, k: int | None) -> None:
        if k is not None and k > self.limits.max_top_k:
            raise ApiError(422, "top_k_too_large", f"top_k is {k}; the limit is {self.limits.max_top_k}")

    def _texts(self, texts: list[str], limit: int, what: str, max_chars: int | None = None) -> list[str]:
        if len(texts) > limit:
            raise ApiError(413, f"too_many_{what}", f"{len(texts)} {what}; the limit is {limit}")
        max_chars = max_chars or self.limits.max_query_chars
        too_long = [i for i, t in enumerate(texts) if len(t) > max_chars]
        if too_long:
            raise ApiError(413, f"{what.rstrip('s')}_too_long", f"{what} {too_long[:5]} exceed {max_chars} characters")
        for t in texts:
            self._unicode(t, what)
        if any(not t.strip() for t in texts):
            raise ApiError(400, "empty_query", f"every one of the {what} must contain non-whitespace text")
        return [t.strip() for t in texts]

    @staticmethod
    def _filters(index: str, filters) -> dict:
        try:
            return check_filters(index, filters.model_dump() if filters else None)
        except FilterError as exc:
            raise ApiError(422, "invalid_filter", str(exc))

    @staticmethod
    def _request_id(request: Request) -> str:
        """Ray Serve's own request id: the client's `x-request-id` when it sent one, else generated;
        the proxy puts it on every response (and in Serve's access logs), so ours is the same."""
        rid = serve.context._get_serve_request_context().request_id
        if rid:
            return rid
        given = request.headers.get("x-request-id", "")
        return given if REQUEST_ID.match(given) else uuid.uuid4().hex

    @staticmethod
    def _json(body: dict, timer: Timer) -> JSONResponse:
        return JSONResponse(body, headers=timer.headers())

    # --- the chat pipeline --------------------------------------------------------------------

    async def _stage(self, timer: Timer, stage: str, name: str, call, timeout: float):
        """A timed, traced stage; `call` makes the handle call inside the stage's span (so the
        deployment's own spans hang below it)."""
        async with timer.stage(stage):
            return await self._call(name, call(), timeout)

    @staticmethod
    async def _drop(timer: Timer, early: dict[str, asyncio.Task], names) -> None:
        """Cancel early stages the answer does not use (down the graph) and forget their timings."""
        tasks = [early.pop(n) for n in list(names) if n in early]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for n in names:
            timer.stages.pop(n, None)

    async def _retrieve(self, query: str, intent: str, index: str, top_k: int, filters: dict, timer: Timer,
                        early: dict[str, asyncio.Task]):
        """`early` holds the embedding of the query and the title lookup, started beside the classifier."""
        t = self.args.timeouts
        degraded: list[str] = []
        context: dict = {"volume": volume_number(query), "order_number": order_number(query)}
        search_text, exclude, named, reference = query, [], [], None
        if index == "catalog":
            named = await early.pop("lookup")
            if intent == "recommendation" and named and asks_for_similar(query):
                reference = named[0]
                context["reference"] = reference["title"]
                meta = reference["metadata"]
                search_text = f"{query} {profile(meta['demographic'], meta['genres'])}"
                exclude, named = [d["id"] for d in named], []
        if search_text == query:
            vectors = await early.pop("embed")
        else:  # "like X": search with X's profile
            await self._drop(timer, early, ["embed"])
            vectors = await self._stage(timer, "embed", "embed", lambda: self.embedder.embed.remote([search_text]), t.embed)
        async with timer.stage("search"):
            k = max(self.args.candidates(index), top_k)  # never fewer than the shopper asked for
            hits = await self._call("search", self.retriever.search.remote(vectors[0], index, k, filters, exclude),
                                    t.search)
        signals = {"embedding": vectors[0], "retrieval_top_score": float(hits[0]["score"]) if hits else None}
        if hits:
            metric("mangaassist_retrieval_top_score").observe(float(hits[0]["score"]), tags={"index": index})
        seen = {d["id"] for d in named}
        candidates = named + [h for h in hits if h["id"] not in seen]
        if not candidates:
            return [], degraded, context, signals
        async with timer.stage("rerank"):
            try:
                scores = await asyncio.wait_for(
                    self.reranker.rerank.remote(search_text, [c["text"] for c in candidates]), t.rerank)
                for c, s in zip(candidates, scores):
                    # "like X": blend relevance with item-to-item similarity to X
                    c["score"] = float(s) if reference is None else \
                        0.5 * float(s) + 0.5 * similarity(reference["metadata"], c["metadata"])
                order = sorted(range(len(candidates)), key=lambda i: -candidates[i]["score"])
            except asyncio.TimeoutError:
                degraded.append("reranker_timeout")
                order = list(range(len(candidates)))
            except Exception:
                degraded.append("reranker_unavailable")
                order = list(range(len(candidates)))
        ranked = [candidates[i] for i in order]
        if named and intent != "recommendation":
            # the series the shopper named is what they asked about
            ranked = [c for c in ranked if c["id"] in seen] + [c for c in ranked if c["id"] not in seen]
        return ranked[:top_k], degraded, context, signals

    async def _prepare(self, req: ChatRequest, timer: Timer):
        query = self._query(req.query)
        self._top_k(req.top_k)
        t = self.args.timeouts
        # The query's embedding and title lookup do not depend on its intent: start them beside the
        # classifier (one round trip instead of three; chitchat, 1 in 8, wastes one small embedding).
        early = {"embed": asyncio.ensure_future(self._stage(timer, "embed", "embed", lambda: self.embedder.embed.remote([query]), t.embed)),
                 "lookup": asyncio.ensure_future(self._stage(timer, "lookup", "search", lambda: self.retriever.named_series.remote(query), t.search))}
        try:
            prediction = (await self._stage(timer, "intent", "intent", lambda: self.classifier.classify.remote([query]), t.intent))[0]
            label, confidence = prediction["label"], prediction["confidence"]
            low = confidence < self.args.low_confidence_threshold
            index = index_for(label)
            filters = self._filters(index, req.filters) if index else {}
            sources, degraded, context, signals = [], [], {}, {}
            if index:
                sources, degraded, context, signals = await self._retrieve(query, label, index, req.top_k, filters,
                                                                           timer, early)
        finally:  # what the answer did not use (chitchat, policy, an error): cancelled, and not in the timings
            await self._drop(timer, early, list(early))
        context["low_confidence"] = low
        intent = {"label": label, "confidence": round(confidence, 4), "low_confidence": low}
        reranked = bool(sources) and not {"reranker_timeout", "reranker_unavailable"} & set(degraded)
        self._record_drift({"intent": label, "confidence": confidence, "query_length": len(query),
                            "retrieval_top_score": signals.get("retrieval_top_score"),
                            "rerank_top_score": float(sources[0]["score"]) if reranked else None,
                            "embedding": signals.get("embedding")})
        return query, intent, sources, degraded, context

    # --- drift: off the request path -----------------------------------------------------------

    def _record_drift(self, record: dict) -> None:
        if self.drift is None:
            return
        self.drift_buffer.append(record)
        if self.drift_flusher is None or self.drift_flusher.done():
            self.drift_flusher = asyncio.get_running_loop().create_task(self._flush_drift())

    async def _flush_drift(self) -> None:
        """Send the buffered records every `flush_interval_s`; failures drop them (counted), never raise."""
        while self.drift_buffer:
            await asyncio.sleep(self.args.drift.flush_interval_s)
            batch = list(self.drift_buffer)
            self.drift_buffer.clear()
            try:
                await asyncio.wait_for(self.drift.record.remote(batch), self.args.timeouts.ready * 5)
            except Exception:
                metric("mangaassist_drift_records_dropped").inc(len(batch))

    @staticmethod
    def _observe(intent: dict, timer: Timer, degraded: list[str], sources: list[dict], usage: dict | None) -> None:
        """Per-answer metrics (labels bounded: stage, intent, reason, index, model)."""
        for stage, ms in timer.stages.items():
            metric("mangaassist_stage_latency_seconds").observe(ms / 1000, tags={"stage": stage})
        metric("mangaassist_intent_confidence").observe(intent["confidence"], tags={"intent": intent["label"]})
        if intent["low_confidence"]:
            metric("mangaassist_low_confidence").inc(tags={"intent": intent["label"]})
        for reason in degraded:
            metric("mangaassist_degraded").inc(tags={"reason": reason})
        if sources and "reranker_timeout" not in degraded and "reranker_unavailable" not in degraded:
            index = "policy" if "policy_id" in sources[0]["metadata"] else "catalog"
            metric("mangaassist_rerank_top_score").observe(float(sources[0]["score"]), tags={"index": index})
        if usage:
            model = usage["model"]
            metric("mangaassist_bedrock_tokens").inc(usage["input_tokens"], tags={"direction": "input", "model": model})
            metric("mangaassist_bedrock_tokens").inc(usage["output_tokens"], tags={"direction": "output", "model": model})
            if usage["cost_usd"] is not None:
                metric("mangaassist_bedrock_cost_usd").inc(usage["cost_usd"], tags={"model": model})

    @staticmethod
    def _public(sources: list[dict]) -> list[dict]:
        return [{"id": s["id"], "title": s["title"], "score": round(float(s["score"]), 4)} for s in sources]

    @app.post("/v1/chat", response_model=ChatResponse, responses=CHAT_RESPONSES,
              summary="Answer a shopper's message (JSON, or Server-Sent Events with stream=true)")
    @deadline
    async def chat(self, req: ChatRequest, request: Request):
        request_id = self._request_id(request)
        timer = Timer(request_id)
        query, intent, sources, degraded, context = await self._prepare(req, timer)
        request.state.intent = intent["label"]
        stream = req.stream or "text/event-stream" in request.headers.get("accept", "")
        log.info("chat intent=%s sources=%d degraded=%s stream=%s query=%r", intent["label"], len(sources),
                 degraded, stream, query)
        if stream:
            return StreamingResponse(self._sse(query, intent, sources, degraded, context, request_id, timer),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", **timer.headers()})
        usage = None
        async with timer.stage("generate"):
            try:
                result = await asyncio.wait_for(self.generator.generate.remote(intent["label"], query, sources, context),
                                                self.args.timeouts.generate)
                answer, usage = result["answer"], result["usage"]
                degraded += result["degraded"]
            except Exception as exc:
                degraded.append("generator_timeout" if isinstance(exc, asyncio.TimeoutError) else "generator_unavailable")
                answer = self.fallback_generator.compose(intent["label"], query, sources, context)
        body = {"answer": answer, "intent": intent, "sources": self._public(sources), "degraded": degraded,
                "timings_ms": timer.total(), "request_id": request_id, "usage": usage}
        self._observe(intent, timer, degraded, sources, usage)
        return self._json(body, timer)

    async def _sse(self, query, intent, sources, degraded, context, request_id, timer):
        parts: list[str] = []
        usage = None
        t0 = time.perf_counter()

        def token(delta: str) -> str:
            parts.append(delta)
            return f"event: token\ndata: {json.dumps({'delta': delta})}\n\n"

        with stage_span("generate", request_id, current=False):
            try:
                # a late generator is cut off (Serve cancels its stream) like the JSON path's
                async with asyncio.timeout(self.args.timeouts.generate):
                    async for item in self.generator.options(stream=True).stream.remote(intent["label"], query,
                                                                                        sources, context):
                        if "delta" in item:
                            yield token(item["delta"])
                        else:
                            degraded += item["degraded"]
                            usage = item["usage"]
            except Exception as exc:  # the generator failed or is late: continue with the in-process template
                degraded.append("generator_timeout" if isinstance(exc, TimeoutError) else "generator_unavailable")
                fallback = list(self.fallback_generator.stream(intent["label"], query, sources, context))
                if self.args.generator_backend == "template":  # the same words: carry on where it stopped
                    fallback = fallback[len(parts):]
                elif parts:
                    fallback.insert(0, INTERRUPTED)
                for delta in fallback:
                    yield token(delta)
        timer.stages["generate"] = round((time.perf_counter() - t0) * 1000, 2)
        final = {"answer": "".join(parts), "intent": intent, "sources": self._public(sources), "degraded": degraded,
                 "timings_ms": timer.total(), "request_id": request_id, "usage": usage}
        self._observe(intent, timer, degraded, sources, usage)
        yield f"event: final\ndata: {json.dumps(final)}\n\n"

    # --- the model routes ---------------------------------------------------------------------

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS, summary="Intent of each text")
    @deadline
    async def classify(self, req: TextsRequest):
        timer = Timer()
        texts = self._texts(req.texts, self.limits.max_texts, "texts")
        async with timer.stage("intent"):
            predictions = await self._call("intent", self.classifier.classify.remote(texts), self.args.timeouts.intent)
        return self._json({"predictions": predictions}, timer)

    @app.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS, summary="Normalized embedding of each text")
    @deadline
    async def embed(self, req: TextsRequest):
        timer = Timer()
        texts = self._texts(req.texts, self.limits.max_texts, "texts")
        async with timer.stage("embed"):
            vectors = await self._call("embed", self.embedder.embed.remote(texts), self.args.timeouts.embed)
        if self.embedder_name is None:  # the same for every replica of this app: ask once
            info = await self._call("embed", self.embedder.ready.remote(), self.args.timeouts.ready)
            self.embedder_name = f"{info['model']}:{info['version']}"
        return self._json({"embeddings": vectors.tolist(), "dimensions": int(vectors.shape[1]),
                           "model": self.embedder_name}, timer)

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS, summary="k-NN search with metadata filters")
    @deadline
    async def search(self, req: SearchRequest):
        timer = Timer()
        query = self._query(req.query)
        self._top_k(req.top_k)
        filters = self._filters(req.index, req.filters)
        async with timer.stage("embed"):
            vectors = await self._call("embed", self.embedder.embed.remote([query]), self.args.timeouts.embed)
        async with timer.stage("search"):
            hits = await self._call("search", self.retriever.search.remote(vectors[0], req.index, req.top_k, filters),
                                    self.args.timeouts.search)
        return self._json({"hits": [{k: h[k] for k in ("id", "title", "score", "metadata")} for h in hits]},
                          timer)

    @app.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS, summary="Cross-encoder relevance of documents")
    @deadline
    async def rerank(self, req: RerankRequest):
        timer = Timer()
        query = self._query(req.query)
        docs = self._texts(req.documents, self.limits.max_documents, "documents", self.limits.max_document_chars)
        async with timer.stage("rerank"):
            scores = await self._call("rerank", self.reranker.rerank.remote(query, docs), self.args.timeouts.rerank)
        results = sorted(({"index": i, "score": round(float(s), 6)} for i, s in enumerate(scores)), key=lambda r: -r["score"])
        return self._json({"results": results[: req.top_k or len(results)]}, timer)

    # --- drift ----------------------------------------------------------------------------------

    async def _drift_call(self, method: str):
        if self.drift is None:
            raise ApiError(404, "drift_disabled", "drift monitoring is disabled in this deployment (args.drift.enabled)")
        return await self._call("drift", getattr(self.drift, method).remote(), self.args.timeouts.ready * 15)

    @app.get("/v1/drift", responses=DRIFT_ERRORS,
             summary="Drift monitor: window, reference and the last per-feature drift result")
    @deadline
    async def drift_status(self):
        return await self._drift_call("status")

    @app.get("/v1/drift/report", response_class=HTMLResponse, responses=DRIFT_ERRORS,
             summary="Evidently's HTML data-drift report of the current window against the reference")
    @deadline
    async def drift_report(self):
        return HTMLResponse(await self._drift_call("report"))

    # --- health -------------------------------------------------------------------------------

    @app.get("/healthz", summary="Liveness")
    async def healthz(self):
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: every deployment has loaded its model or index",
             responses={503: {"description": "not ready: the deployments that did not answer, with Retry-After"}})
    async def readyz(self):
        names = ("classifier", "embedder", "retriever", "reranker", "generator")
        results = await asyncio.gather(*(asyncio.wait_for(getattr(self, n).ready.remote(), self.args.timeouts.ready)
                                         for n in names), return_exceptions=True)
        status = {n: (r if not isinstance(r, BaseException) else {"error": type(r).__name__}) for n, r in zip(names, results)}
        ready = not any(isinstance(r, BaseException) for r in results)
        return JSONResponse({"ready": ready, "deployments": status}, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": "5"})
