"""A local OpenSearch stand-in and the official OpenSearch API spec, for wire-level tests.

`StandIn` is a threaded HTTP server on 127.0.0.1 that speaks the REST subset
`serve/backends/opensearch.py` uses: HEAD/PUT/DELETE /{index}, GET /{index}/_mapping,
POST /_bulk and /{index}/_bulk (NDJSON), POST /{index}/_search (a `knn` query answered by brute force
with the k-NN plugin's score translation and the filter evaluated, or match_all + sort + search_after),
GET|POST /{index}/_count and POST /{index}/_refresh. Nested fields behave as in OpenSearch: their
sub-fields are only visible inside a `nested` query. It records every exchange and injects faults:
per-document 400s, item-level 429s, whole-request 429s, slow searches.

`OpenSearchSpec` loads the OpenAPI 3.1 spec vendored in tests/schemas/opensearch-api (YAML over many files,
cross-file `$ref`s resolved with `referencing`) and validates request and response bodies of an
exchange against the operation the spec defines for its method and path.
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# --- the stand-in server -------------------------------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int
    response: Any  # the JSON payload sent back (None for HEAD)

    def json(self) -> Any:
        return json.loads(self.body)

    def ndjson(self) -> list[dict]:
        return [json.loads(line) for line in self.body.decode("utf-8").splitlines() if line.strip()]


class ApiError(Exception):
    def __init__(self, status: int, type_: str, reason: str):
        super().__init__(reason)
        self.status, self.type, self.reason = status, type_, reason

    def payload(self) -> dict:
        cause = {"type": self.type, "reason": self.reason}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


SHARDS = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
_INVALID_INDEX = re.compile(r'[A-Z\\/*?"<>| ,#:]|^[-_+]')


def _score(space: str, query: list[float], vector: list[float]) -> float:
    """The k-NN plugin's documented translation of a distance into `_score` (higher is better)."""
    if space == "innerproduct":
        ip = sum(q * v for q, v in zip(query, vector))
        return 1.0 + ip if ip >= 0 else 1.0 / (1.0 - ip)
    if space == "cosinesimil":
        norm = math.sqrt(sum(q * q for q in query)) * math.sqrt(sum(v * v for v in vector))
        return (1.0 + sum(q * v for q, v in zip(query, vector)) / norm) / 2.0
    if space == "l2":
        return 1.0 / (1.0 + sum((q - v) ** 2 for q, v in zip(query, vector)))
    raise ApiError(400, "illegal_argument_exception", f"space_type [{space}] is not supported by the stand-in")


class _Index:
    def __init__(self, name: str, body: dict):
        self.name, self.settings = name, body.get("settings", {})
        self.mappings = body.get("mappings", {})
        self.docs: dict[str, dict] = {}
        self.versions: dict[str, int] = {}
        self.nested: set[str] = set()
        self.vectors: dict[str, dict] = {}  # field -> knn_vector mapping
        self._walk(self.mappings.get("properties", {}), "")

    def _walk(self, properties: dict, prefix: str) -> None:
        for name, prop in properties.items():
            path = prefix + name
            if prop.get("type") == "nested":
                self.nested.add(path)
            if prop.get("type") == "knn_vector":
                if not isinstance(prop.get("dimension"), int):
                    raise ApiError(400, "mapper_parsing_exception", f"Dimension value missing for vector: {path}")
                self.vectors[path] = prop
            self._walk(prop.get("properties", {}), path + ".")

    def check(self, source: dict) -> None:
        for path, prop in self.vectors.items():
            vector = source.get(path)
            if not isinstance(vector, list) or len(vector) != prop["dimension"]:
                given = len(vector) if isinstance(vector, list) else type(vector).__name__
                raise ApiError(400, "mapper_parsing_exception",
                               f"failed to parse field [{path}] of type [knn_vector]: Vector dimension mismatch. "
                               f"Expected: {prop['dimension']}, Given: {given}")

    # --- query evaluation ---

    def values(self, source: dict, field: str, scope: tuple[str, dict] | None = None) -> list:
        """The values of a dotted field; sub-fields of nested objects only inside their nested scope."""
        if scope and field.startswith(scope[0] + "."):
            return _flatten(scope[1], field[len(scope[0]) + 1:].split("."))
        parts = field.split(".")
        if any(".".join(parts[:i]) in self.nested for i in range(1, len(parts))):
            return []  # a nested sub-field outside a nested query matches nothing, as in OpenSearch
        return _flatten(source, parts)

    def matches(self, query: dict, doc_id: str, source: dict, scope: tuple[str, dict] | None = None) -> bool:
        (kind, spec), = query.items()
        if kind == "match_all":
            return True
        if kind == "bool":
            sub = lambda key: [spec[key]] if isinstance(spec.get(key), dict) else spec.get(key, [])  # noqa: E731
            required = sub("must") + sub("filter")
            ok = all(self.matches(q, doc_id, source, scope) for q in required)
            ok = ok and not any(self.matches(q, doc_id, source, scope) for q in sub("must_not"))
            if sub("should") and not required:
                ok = ok and any(self.matches(q, doc_id, source, scope) for q in sub("should"))
            return ok
        if kind == "term":
            (field, value), = spec.items()
            value = value["value"] if isinstance(value, dict) else value
            return any(_same(v, value) for v in self.values(source, field, scope))
        if kind == "terms":
            (field, wanted), = spec.items()
            return any(_same(v, w) for v in self.values(source, field, scope) for w in wanted)
        if kind == "range":
            (field, bounds), = spec.items()
            ops = {"gte": float.__ge__, "gt": float.__gt__, "lte": float.__le__, "lt": float.__lt__}
            return any(all(ops[op](float(v), float(b)) for op, b in bounds.items()) for v in self.values(source, field, scope))
        if kind == "ids":
            return doc_id in spec["values"]
        if kind == "nested":
            path = spec["path"]
            if path not in self.nested:
                raise ApiError(400, "query_shard_exception", f"[nested] failed to find nested object under path [{path}]")
            return any(self.matches(spec["query"], doc_id, source, (path, element))
                       for element in _flatten(source, path.split(".")))
        raise ApiError(400, "parsing_exception", f"unknown query [{kind}] (not implemented by the stand-in)")


def _flatten(obj: Any, parts: list[str]) -> list:
    if isinstance(obj, list):
        return [v for item in obj for v in _flatten(item, parts)]
    if not parts:
        return [obj]
    if not isinstance(obj, dict) or parts[0] not in obj:
        return []
    return _flatten(obj[parts[0]], parts[1:])


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return stored is wanted  # True == 1 in Python, but a boolean field never matches a number
    return stored == wanted


def _select(source: dict, includes: Any) -> dict | None:
    if includes is False:
        return None
    if includes is True or includes is None:
        return source
    fields = includes if isinstance(includes, list) else [includes] if isinstance(includes, str) else includes.get("includes", [])
    return {k: v for k, v in source.items() if k in fields}


class StandIn:
    """The stand-in server. Use as a context manager; every server it starts is stopped on exit."""

    def __init__(self, basic_auth: tuple[str, str] | None = None):
        self.basic_auth = basic_auth
        self.indexes: dict[str, _Index] = {}
        self.exchanges: list[Exchange] = []
        self.lock = threading.RLock()
        # fault injection
        self.bulk_429_remaining = 0  # whole bulk requests answered 429 before normal service
        self.item_429_once: set[str] = set()  # ids whose next bulk item is rejected with 429
        self.fail_ids: dict[str, str] = {}  # id -> reason of a 400 mapper_parsing_exception
        self.search_delay_s = 0.0
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def _serve(self) -> None:
                if standin._stopping.is_set():  # stopped: a kept-alive connection is dropped unanswered, as by a crash
                    self.close_connection = True
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = standin.handle(self.command, self.path, headers, body)
                data = b"" if payload is None else json.dumps(payload).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    if status == 401:
                        self.send_header("WWW-Authenticate", 'Basic realm="OpenSearch Security"')
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="opensearch-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes a delayed search
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- inspection ---

    def requests_to(self, method: str, suffix: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == method and e.path.endswith(suffix)]

    # --- dispatch ---

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        try:
            self._authorize(headers)
            status, payload = self._route(method, [p for p in path.split("/") if p], body)
        except ApiError as e:
            status, payload = e.status, e.payload()
        except (ValueError, KeyError, TypeError) as e:  # a malformed body: what OpenSearch calls a parse error
            status, payload = 400, ApiError(400, "parse_exception", f"stand-in could not parse the request: {e!r}").payload()
        with self.lock:
            self.exchanges.append(Exchange(method, path, query, headers, body, status, None if method == "HEAD" else payload))
        return status, payload

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.basic_auth is None:
            return
        expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
        if headers.get("authorization") != expected:
            raise ApiError(401, "security_exception", "Unauthorized")

    def _route(self, method: str, segments: list[str], body: bytes) -> tuple[int, Any]:
        if segments and segments[-1] == "_bulk" and len(segments) <= 2 and method in ("POST", "PUT"):
            return self._bulk(segments[0] if len(segments) == 2 else None, body)
        if len(segments) == 1 and not segments[0].startswith("_"):
            index = segments[0]
            if method == "HEAD":
                return (200 if index in self.indexes else 404), None
            if method == "PUT":
                return self._create(index, json.loads(body) if body else {})
            if method == "DELETE":
                with self.lock:
                    self._index(index)
                    del self.indexes[index]
                return 200, {"acknowledged": True}
        if len(segments) == 2:
            index, action = segments
            if action == "_mapping" and method == "GET":
                return 200, {index: {"mappings": self._index(index).mappings}}
            if action == "_search" and method in ("GET", "POST"):
                return self._search(self._index(index), json.loads(body) if body else {})
            if action == "_count" and method in ("GET", "POST"):
                ix = self._index(index)
                query = (json.loads(body) if body else {}).get("query", {"match_all": {}})
                return 200, {"count": sum(ix.matches(query, i, s) for i, s in ix.docs.items()), "_shards": SHARDS}
            if action == "_refresh" and method in ("GET", "POST"):
                self._index(index)
                return 200, {"_shards": SHARDS}
        raise ApiError(400, "illegal_argument_exception", f"no handler found for uri [/{'/'.join(segments)}] and method [{method}]")

    def _index(self, name: str) -> _Index:
        if name not in self.indexes:
            raise ApiError(404, "index_not_found_exception", f"no such index [{name}]")
        return self.indexes[name]

    def _create(self, name: str, body: dict) -> tuple[int, Any]:
        if _INVALID_INDEX.search(name):
            raise ApiError(400, "invalid_index_name_exception", f"Invalid index name [{name}]")
        with self.lock:
            if name in self.indexes:
                raise ApiError(400, "resource_already_exists_exception", f"index [{name}] already exists")
            self.indexes[name] = _Index(name, body)
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _bulk(self, default_index: str | None, body: bytes) -> tuple[int, Any]:
        with self.lock:
            if self.bulk_429_remaining > 0:
                self.bulk_429_remaining -= 1
                raise ApiError(429, "rejected_execution_exception", "rejected execution of coordinating operation")
        lines = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        items, position = [], 0
        while position < len(lines):
            (op, meta), = lines[position].items()
            position += 1
            source = None
            if op in ("index", "create", "update"):
                source, position = lines[position], position + 1
            index = meta.get("_index", default_index)
            items.append({op: {"_index": index, "_id": meta.get("_id"), **self._bulk_item(op, index, meta.get("_id"), source)}})
        return 200, {"took": 1, "errors": any("error" in next(iter(i.values())) for i in items), "items": items}

    def _bulk_item(self, op: str, index: str, doc_id: str, source: dict | None) -> dict:
        try:
            with self.lock:
                if doc_id in self.item_429_once:
                    self.item_429_once.discard(doc_id)
                    raise ApiError(429, "rejected_execution_exception", "rejected execution of primary operation")
                if doc_id in self.fail_ids:
                    raise ApiError(400, "mapper_parsing_exception", self.fail_ids[doc_id])
                ix = self._index(index)
                if op == "delete":
                    if ix.docs.pop(doc_id, None) is None:
                        return {"_version": 1, "result": "not_found", "status": 404, "_shards": SHARDS}
                    return {"_version": ix.versions[doc_id] + 1, "result": "deleted", "status": 200, "_shards": SHARDS}
                if op not in ("index", "create"):
                    raise ApiError(400, "illegal_argument_exception", f"bulk op [{op}] is not implemented by the stand-in")
                if op == "create" and doc_id in ix.docs:
                    raise ApiError(409, "version_conflict_engine_exception", f"[{doc_id}]: version conflict, document already exists")
                ix.check(source)
                created = doc_id not in ix.docs
                ix.docs[doc_id] = source
                ix.versions[doc_id] = 1 if created else ix.versions[doc_id] + 1
                return {"_version": ix.versions[doc_id], "result": "created" if created else "updated",
                        "status": 201 if created else 200, "_shards": SHARDS, "_seq_no": 0, "_primary_term": 1}
        except ApiError as e:
            return {"status": e.status, "error": {"type": e.type, "reason": e.reason}}

    def _search(self, ix: _Index, body: dict) -> tuple[int, Any]:
        if self.search_delay_s:
            self._stopping.wait(self.search_delay_s)
        query = body.get("query", {"match_all": {}})
        size = body.get("size", 10)
        if "knn" in query:
            (field, knn), = query["knn"].items()
            if field not in ix.vectors:
                raise ApiError(400, "query_shard_exception", f"Field '{field}' is not knn_vector type.")
            if len(knn["vector"]) != ix.vectors[field]["dimension"]:
                raise ApiError(400, "illegal_argument_exception", "Query vector has invalid dimension")
            space = ix.vectors[field].get("method", {}).get("space_type", "l2")
            allowed = [(i, s) for i, s in ix.docs.items() if "filter" not in knn or ix.matches(knn["filter"], i, s)]
            ranked = sorted(((_score(space, knn["vector"], s[field]), i) for i, s in allowed), key=lambda t: (-t[0], t[1]))
            hits = [{"_index": ix.name, "_id": i, "_score": score, "_source": ix.docs[i]} for score, i in ranked[:knn["k"]]]
        else:
            matched = [i for i, s in ix.docs.items() if ix.matches(query, i, s)]
            hits = [{"_index": ix.name, "_id": i, "_score": 1.0, "_source": ix.docs[i]} for i in matched]
            if "sort" in body:
                hits = self._sorted(ix, hits, body["sort"], body.get("search_after"))
        total = len(hits)
        hits = hits[body.get("from", 0):body.get("from", 0) + size]
        for hit in hits:
            selected = _select(hit["_source"], body.get("_source"))
            if selected is None:
                del hit["_source"]
            else:
                hit["_source"] = selected
        scores = [h["_score"] for h in hits if h["_score"] is not None]
        return 200, {"took": 1, "timed_out": False, "_shards": SHARDS,
                     "hits": {"total": {"value": total, "relation": "eq"},
                              "max_score": max(scores) if scores else None, "hits": hits}}

    @staticmethod
    def _sorted(ix: _Index, hits: list[dict], sort: list, search_after: list | None) -> list[dict]:
        if len(sort) != 1:
            raise ApiError(400, "illegal_argument_exception", "the stand-in sorts on one field only")
        (field, order), = sort[0].items() if isinstance(sort[0], dict) else [(sort[0], "asc")]
        order = order.get("order", "asc") if isinstance(order, dict) else order
        for hit in hits:
            values = ix.values(hit["_source"], field)
            hit["sort"], hit["_score"] = [min(values) if values else None], None
        hits.sort(key=lambda h: h["sort"][0], reverse=order == "desc")
        if search_after is not None:
            after = search_after[0]
            hits = [h for h in hits if (h["sort"][0] > after if order == "asc" else h["sort"][0] < after)]
        return hits


# --- the official API spec ----------------------------------------------------------------------

SPEC_DIR = Path(os.environ.get("OPENSEARCH_API_SPEC", Path(__file__).resolve().parent / "schemas/opensearch-api/spec"))
# The namespaces whose operations our code calls (loading all 36 files would only cost time).
NAMESPACES = ("_core.yaml", "indices.yaml")


class _SpecLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):
    """YAML 1.2 scalars, as OpenAPI means them: YAML 1.1 would turn the enum values `yes`/`no`/`on`/`off`
    (e.g. in TermVectorOption) into booleans and ISO dates into datetimes."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _discriminated_one_of(validator, one_of: list, instance: Any, schema: dict):
    """`oneOf` with an OpenAPI `discriminator`: only the variants whose discriminator property admits the
    instance's value (or `x-default` when absent) are tried. Plain JSON Schema ignores `discriminator` and
    tries all variants; for mappings (Property: 47 variants, recursive through `properties`/`fields`) that
    is correct but takes minutes, and its errors name no variant."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

    plain_one_of = Draft202012Validator.VALIDATORS["oneOf"]
    discriminator = schema.get("discriminator")
    if not discriminator or not isinstance(instance, dict):
        yield from plain_one_of(validator, one_of, instance, schema)
        return
    name = discriminator["propertyName"]
    value = instance.get(name, discriminator.get("x-default"))
    # validator._resolver: the resolver at this schema's base URI (jsonschema has no public accessor)
    candidates = [branch for branch in one_of if value in _admitted(validator._resolver, branch, name)]
    if not candidates:
        yield ValidationError(f"{name} {value!r} matches no variant of the discriminator")
        return
    yield from plain_one_of(validator, candidates, instance, schema)


def _admitted(resolver, schema: dict, name: str) -> set:
    """Values a schema's property `name` admits (enum/const), through $ref and allOf."""
    values: set = set()
    if "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        values |= _admitted(resolved.resolver, resolved.contents, name)
    declared = schema.get("properties", {}).get(name, {})
    values |= set(declared.get("enum", [])) | ({declared["const"]} if "const" in declared else set())
    for sub in schema.get("allOf", []):
        values |= _admitted(resolver, sub, name)
    return values


def _openapi_validator():
    from jsonschema import Draft202012Validator, validators

    return validators.extend(Draft202012Validator, {"oneOf": _discriminated_one_of})


@cache
def _load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_SpecLoader)


class OpenSearchSpec:
    def __init__(self, root: Path = SPEC_DIR):
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.root = Path(root).resolve()
        if not (self.root / "namespaces").is_dir():
            raise FileNotFoundError(f"OpenSearch API spec not found under {self.root}")
        # OpenAPI 3.1 schemas are JSON Schema 2020-12; each YAML file is one resource, fetched on first $ref.
        self.registry = Registry(retrieve=lambda uri: Resource.from_contents(
            _load_yaml(Path(unquote(urlsplit(uri).path))), default_specification=DRAFT202012))
        self._validators: dict[str, Any] = {}

    def uri(self, relative: str, pointer: str = "") -> str:
        return (self.root / relative).as_uri() + (f"#{pointer}" if pointer else "")

    def validator(self, uri: str):
        if uri not in self._validators:
            self._validators[uri] = _openapi_validator()({"$ref": uri}, registry=self.registry)
        return self._validators[uri]

    def schema_uri(self, relative: str, name: str) -> str:
        """A named schema, e.g. ("schemas/_core.bulk.yaml", "OperationContainer")."""
        return self.uri(relative, f"/components/schemas/{name}")

    def errors(self, uri: str, instance: Any) -> list[str]:
        """Validation errors of `instance` against the schema at `uri`, best first ([] = valid)."""
        from jsonschema.exceptions import relevance

        found = sorted(self.validator(uri).iter_errors(instance), key=relevance)
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in found]

    # --- operations: which schema applies to an exchange ---

    def operation(self, method: str, path: str) -> tuple[str, str]:
        """(namespace file, JSON pointer) of the operation for a concrete method and path."""
        best: tuple[int, str, str] | None = None
        segments = [s for s in path.split("/") if s]
        for namespace in NAMESPACES:
            paths = _load_yaml(self.root / "namespaces" / namespace)["paths"]
            for template, operations in paths.items():
                parts = [s for s in template.split("/") if s]
                if len(parts) != len(segments) or method.lower() not in operations:
                    continue
                if all(p.startswith("{") or p == s for p, s in zip(parts, segments)):
                    literal = sum(not p.startswith("{") for p in parts)
                    pointer = "/paths/" + template.replace("~", "~0").replace("/", "~1") + "/" + method.lower()
                    if best is None or literal > best[0]:
                        best = (literal, f"namespaces/{namespace}", pointer)
        if best is None:
            raise LookupError(f"{method} {path}: no such operation in the OpenSearch API spec")
        return best[1], best[2]

    def at(self, relative: str, pointer: str) -> Any:
        """The object at a JSON pointer in one spec file."""
        node = _load_yaml(self.root / relative)
        for part in [p for p in pointer.split("/") if p]:
            key = part.replace("~1", "/").replace("~0", "~")
            node = node[int(key)] if isinstance(node, list) else node[key]
        return node

    def _follow(self, relative: str, pointer: str) -> tuple[str, str, Any]:
        """Follow $refs from a location to (file, pointer, object) of what it finally names."""
        node = self.at(relative, pointer)
        while isinstance(node, dict) and "$ref" in node:
            target, _, pointer = node["$ref"].partition("#")
            if target:
                relative = os.path.normpath((Path(relative).parent / target).as_posix())
            node = self.at(relative, pointer)
        return relative, pointer, node

    def check_exchange(self, exchange: Exchange) -> list[str]:
        """Spec errors of an exchange's request body and (documented) response body."""
        relative, pointer = self.operation(exchange.method, exchange.path)
        operation = self.at(relative, pointer)
        problems: list[str] = []
        if exchange.body:
            if "requestBody" not in operation:
                return [f"{exchange.method} {exchange.path}: the spec defines no request body"]
            file, body_pointer, body = self._follow(relative, f"{pointer}/requestBody")
            media = "application/x-ndjson" if "application/x-ndjson" in body["content"] else "application/json"
            instance = exchange.ndjson() if media == "application/x-ndjson" else exchange.json()
            uri = self.uri(file, f"{body_pointer}/content/{media.replace('/', '~1')}/schema")
            problems += [f"request {m}" for m in self.errors(uri, instance)]
        if str(exchange.status) in operation.get("responses", {}) and exchange.response is not None:
            file, response_pointer, response = self._follow(relative, f"{pointer}/responses/{exchange.status}")
            if "schema" in response.get("content", {}).get("application/json", {}):
                uri = self.uri(file, f"{response_pointer}/content/application~1json/schema")
                problems += [f"response {m}" for m in self.errors(uri, exchange.response)]
        return [f"{exchange.method} {exchange.path}: {p}" for p in problems]

    def declared_properties(self, relative: str, pointer: str) -> set[str]:
        """Property names a schema declares through $ref/allOf. The spec never sets
        additionalProperties: false, so a misspelt key would otherwise pass validation."""
        file, pointer, node = self._follow(relative, pointer)
        names = set(node.get("properties", {}))
        for i, _ in enumerate(node.get("allOf", [])):
            names |= self.declared_properties(file, f"{pointer}/allOf/{i}")
        return names
