from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PartialFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTIAL_FAILURE_REPORT: _ClassVar[PartialFailure]
    PARTIAL_FAILURE_FAIL_CALL: _ClassVar[PartialFailure]

class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODE_OK: _ClassVar[Code]
    CODE_INVALID_ARGUMENT: _ClassVar[Code]
    CODE_RESOURCE_EXHAUSTED: _ClassVar[Code]
PARTIAL_FAILURE_REPORT: PartialFailure
PARTIAL_FAILURE_FAIL_CALL: PartialFailure
CODE_OK: Code
CODE_INVALID_ARGUMENT: Code
CODE_RESOURCE_EXHAUSTED: Code

class EmbedRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "model_id", "dimension", "distinct_texts", "queue_time_ns", "inference_time_ns")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_TEXTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    model_id: str
    dimension: int
    distinct_texts: int
    queue_time_ns: int
    inference_time_ns: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., model_id: _Optional[str] = ..., dimension: _Optional[int] = ..., distinct_texts: _Optional[int] = ..., queue_time_ns: _Optional[int] = ..., inference_time_ns: _Optional[int] = ...) -> None: ...

class GroupStatus(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: Code
    message: str
    def __init__(self, code: _Optional[_Union[Code, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("id", "texts")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreGroupsRequest(_message.Message):
    __slots__ = ("groups", "threshold", "partial_failure")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FAILURE_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[Group]
    threshold: float
    partial_failure: PartialFailure
    def __init__(self, groups: _Optional[_Iterable[_Union[Group, _Mapping]]] = ..., threshold: _Optional[float] = ..., partial_failure: _Optional[_Union[PartialFailure, str]] = ...) -> None: ...

class GroupResult(_message.Message):
    __slots__ = ("id", "status", "scores", "best_index", "best_score", "kept")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    BEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: GroupStatus
    scores: _containers.RepeatedScalarFieldContainer[float]
    best_index: int
    best_score: float
    kept: bool
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[GroupStatus, _Mapping]] = ..., scores: _Optional[_Iterable[float]] = ..., best_index: _Optional[int] = ..., best_score: _Optional[float] = ..., kept: _Optional[bool] = ...) -> None: ...

class ScoreGroupsResponse(_message.Message):
    __slots__ = ("results", "model_id", "failed_groups", "distinct_texts", "queue_time_ns", "inference_time_ns")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FAILED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_TEXTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GroupResult]
    model_id: str
    failed_groups: int
    distinct_texts: int
    queue_time_ns: int
    inference_time_ns: int
    def __init__(self, results: _Optional[_Iterable[_Union[GroupResult, _Mapping]]] = ..., model_id: _Optional[str] = ..., failed_groups: _Optional[int] = ..., distinct_texts: _Optional[int] = ..., queue_time_ns: _Optional[int] = ..., inference_time_ns: _Optional[int] = ...) -> None: ...

class ScoreGroupsStreamRequest(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: ScoreGroupsRequest
    def __init__(self, batch: _Optional[_Union[ScoreGroupsRequest, _Mapping]] = ...) -> None: ...

class ScoreGroupsStreamResponse(_message.Message):
    __slots__ = ("batch_index", "batch")
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch_index: int
    batch: ScoreGroupsResponse
    def __init__(self, batch_index: _Optional[int] = ..., batch: _Optional[_Union[ScoreGroupsResponse, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_id", "dimension", "max_request_texts", "max_group_texts", "max_text_chars", "max_seq_length_tokens", "max_batch_tokens", "max_message_bytes", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TEXTS_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUP_TEXTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    dimension: int
    max_request_texts: int
    max_group_texts: int
    max_text_chars: int
    max_seq_length_tokens: int
    max_batch_tokens: int
    max_message_bytes: int
    version: str
    def __init__(self, model_id: _Optional[str] = ..., dimension: _Optional[int] = ..., max_request_texts: _Optional[int] = ..., max_group_texts: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_seq_length_tokens: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...
