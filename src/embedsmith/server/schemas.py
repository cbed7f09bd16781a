"""Request and response bodies of the HTTP service (pydantic), which are also its OpenAPI spec."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape."""

    error: ErrorBody


# -- embeddings (OpenAI) ------------------------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="a text, or a list of texts (token arrays are not accepted)")
    model: str | None = Field(None, description="a served model (GET /v1/models); default: the first one")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes, as OpenAI sends them")
    dimensions: int | None = Field(None, ge=1, description="keep the first N dimensions, renormalised (Matryoshka)")
    user: str | None = Field(None, description="accepted and ignored")
    input_type: Literal["query", "document"] | None = Field(
        None, description="embedsmith extension: add the model's prompt for queries or documents")
    truncate: bool = Field(
        True, description="cut a text longer than the model reads (usage.truncated_tokens says how much); "
        "false: such a text is a 413 naming it")
    truncation_direction: Literal["right", "left"] = Field(
        "right", description="right: keep a long text's start; left: keep its end")


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="a text, or a list of texts")
    model: str | None = Field(None, description="a served model (GET /v1/models); default: the first one")
    add_special_tokens: bool = Field(True, description="include the model's [CLS]/[SEP]-style tokens")


class TokenizeResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    tokens: list[list[int]] = Field(description="token ids per input, as the model's tokenizer gives them")
    counts: list[int] = Field(description="tokens per input (before the model's max_tokens truncation)")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="tokens the model read, over all inputs")
    total_tokens: int
    truncated_tokens: list[int] = Field(description="tokens cut from each input (0: read whole)")


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# -- models -------------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embedsmith"
    type: Literal["embedding", "rerank"]
    dim: int | None = None
    max_tokens: int | None = None
    fingerprint: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- rerank (Cohere / Jina / TEI style) ----------------------------------------------------------------
class RerankDocument(BaseModel):
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str
    documents: list[str | RerankDocument] = Field(description="texts, or objects with a 'text'")
    model: str | None = Field(None, description="the served cross-encoder (default), or maxsim / maxsim:ENCODER: "
                                                "late interaction over a served encoder's token vectors")
    top_n: int | None = Field(None, ge=1, description="return the best N (default: all)")
    return_documents: bool = False


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(description="sigmoid of the cross-encoder's logit, 0..1; for a maxsim model, "
                                               "the MaxSim score, -1..1")
    relevance_logit: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]


# -- collections --------------------------------------------------------------------------------------
Metric = Literal["cosine", "dot", "l2", "manhattan"]
PrecisionName = Literal["float32", "float16", "int8", "binary"]


class CollectionCreate(BaseModel):
    name: str = Field(description="1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    model: str | None = Field(None, description="a served model; default: the first one")
    metric: Metric = "cosine"
    precision: PrecisionName = "float32"
    dims: int | None = Field(None, ge=1, description="index only the first N dimensions")


class CollectionInfo(BaseModel):
    object: Literal["collection"] = "collection"
    name: str
    count: int
    model: str | None
    fingerprint: str | None
    dim: int
    dims: int
    precision: str
    metric: str
    disk_bytes: int


class UnreadableCollection(BaseModel):
    """A collection in the store that cannot be opened (damaged, or from a newer format): listed, not hidden."""

    object: Literal["collection.unreadable"] = "collection.unreadable"
    name: str
    error: str


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CollectionInfo]
    unreadable: list[UnreadableCollection] = []


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


class Document(BaseModel):
    id: str | None = Field(None, description="default: a random id (add only; upsert needs ids)")
    text: str
    metadata: dict[str, Any] | None = None


class DocumentsRequest(BaseModel):
    documents: list[Document]


class DocumentsWritten(BaseModel):
    object: Literal["list"] = "list"
    ids: list[str]
    count: int = Field(description="records in the collection after the write")


class DocumentsDelete(BaseModel):
    ids: list[str] | None = None
    where: dict[str, Any] | None = Field(None, description="metadata filter, e.g. {\"lang\": \"en\"}")


class DocumentsDeleted(BaseModel):
    object: Literal["deleted"] = "deleted"
    deleted: int
    count: int


class StoredDocument(BaseModel):
    id: str
    text: str | None
    metadata: dict[str, Any]


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredDocument]


class SearchRequest(BaseModel):
    query: str
    k: int = Field(10, ge=1, le=1000)
    mode: Literal["dense", "bm25", "hybrid"] = "dense"
    where: dict[str, Any] | None = Field(None, description="metadata filter, e.g. {\"year\": {\"$gte\": 2000}}")
    rerank: bool = Field(False, description="rerank the candidates with the server's cross-encoder")
    candidates: int | None = Field(None, ge=1, le=1000, description="first-stage hits given to the reranker")
    fusion: Literal["rrf", "weighted"] = "rrf"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="dense weight for weighted fusion")
    group_by: str | None = Field(None, description="keep the best hit per value of this metadata field")
    diversity: float | None = Field(None, ge=0.0, le=1.0, description="MMR diversity (0 = relevance order)")
    dedup: bool | float | None = Field(None, description="true or a cosine threshold: merge overlapping chunks "
                                                         "of a document and drop near-copies")
    boost: dict[str, float] | None = Field(None, description="score boosts from numeric metadata, {field: weight}")
    decay: dict[str, Any] | list[dict[str, Any]] | None = Field(
        None, description="decay on a numeric or date field: {field, origin, scale, decay, function, offset}")
    min_relevance: float | None = Field(None, ge=0.0, le=1.0, description="drop hits whose calibrated "
                                        "P(relevant) is below this (needs embedsmith calibrate)")


class ContextRequest(BaseModel):
    query: str
    budget_tokens: int = Field(2000, ge=1, le=1_000_000)
    format: Literal["markdown", "json"] = "markdown"
    k: int | None = Field(None, ge=1, le=1000, description="chunks searched before widening (default budget / 40)")
    mode: Literal["dense", "bm25", "hybrid"] = "dense"
    where: dict[str, Any] | None = None
    rerank: bool = Field(False, description="rerank with the server's cross-encoder first")
    widen: bool = Field(True, description="add the neighbouring chunks of well-scored hits")


class ContextPassage(BaseModel):
    doc_id: str
    source: str | None
    title: str | None
    start: int | None
    end: int | None
    text: str
    score: float


class ContextResponse(BaseModel):
    object: Literal["context"] = "context"
    collection: str
    query: str
    tokens: int
    budget: int
    passages: list[ContextPassage]
    markdown: str | None = Field(None, description="the packed context as cited markdown (format=markdown)")


class SearchHit(BaseModel):
    id: str
    score: float
    text: str | None
    metadata: dict[str, Any]
    rerank_logit: float | None = None
    first_stage_score: float | None = None
    relevance: float | None = Field(None, description="calibrated P(relevant), when the collection is calibrated")


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    collection: str
    query: str
    mode: str
    data: list[SearchHit]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[str]
    reranker: str | None
