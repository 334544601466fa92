"""The self-consistency scorer as a gRPC service (`sicog serve scorer`) and its client.

Layers: `server` (process, health, reflection, metrics, drain) -> `servicer` (protobuf conversion,
status codes) -> `core` (request checks, one embedding call per request) -> `Embedder.encode` and
`sicog.curate.consistency` (the math, shared with the in-process path). `client` needs no torch.
The contract is `proto/sicog/scorer/v1/scorer.proto`; its generated modules live in `v1/`.
"""
