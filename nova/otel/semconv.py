"""The OpenTelemetry attribute and metric names Nova emits, in one place of its own.

Every `gen_ai.*` name is still at the Development stability level and moved in semconv v1.42.0 to
open-telemetry/semantic-conventions-genai (schema `gen-ai-dev/1.42.0-dev`), which had no release
yet; the Python constants in `opentelemetry-semantic-conventions` are all marked deprecated and lack
the newest names. So Nova keeps literal strings here; tests/test_otel.py checks them against the
installed package where it still has them, so a rename shows up as a failing test.

Choices where the names churn (docs/observability.md):
- `gen_ai.provider.name`, not the older `gen_ai.system`.
- `gen_ai.usage.input_tokens` / `output_tokens`, not `prompt_tokens` / `completion_tokens`;
  input includes cached tokens, output includes reasoning tokens.
- `gen_ai.usage.cache_write.input_tokens` (semantic-conventions-genai#440, what
  opentelemetry-util-genai emits), not the older `gen_ai.usage.cache_creation.input_tokens`.
- cost is not standardised (semantic-conventions-genai#443 is open): Nova's own `nova.cost_usd`.
"""

from __future__ import annotations

__all__ = [
    "DURATION_BUCKETS",
    "ERROR_TYPE",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_TYPE",
    "GEN_AI_CLIENT_OPERATION_DURATION",
    "GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK",
    "GEN_AI_CLIENT_TOKEN_USAGE",
    "GEN_AI_INPUT_MESSAGES",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_OUTPUT_MESSAGES",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_REQUEST_MAX_TOKENS",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_REQUEST_SEED",
    "GEN_AI_REQUEST_STOP_SEQUENCES",
    "GEN_AI_REQUEST_STREAM",
    "GEN_AI_REQUEST_TEMPERATURE",
    "GEN_AI_REQUEST_TOP_P",
    "GEN_AI_RESPONSE_FINISH_REASONS",
    "GEN_AI_RESPONSE_ID",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK",
    "GEN_AI_TOKEN_TYPE",
    "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS",
    "GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS",
    "NOVA_ATTEMPT",
    "NOVA_CACHED",
    "NOVA_CLIENT_COST",
    "NOVA_COST_USD",
    "NOVA_DRIVER",
    "NOVA_REQUEST_ID",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "TOKEN_BUCKETS",
]

# span attributes
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS = "gen_ai.usage.cache_write.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"  # opt-in content
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"  # opt-in content
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"  # metric attribute: "input" | "output"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"

# Nova's own (not part of any convention)
NOVA_COST_USD = "nova.cost_usd"
NOVA_CACHED = "nova.cached"
NOVA_ATTEMPT = "nova.attempt"
NOVA_DRIVER = "nova.driver"
NOVA_REQUEST_ID = "nova.request_id"

# metrics
GEN_AI_CLIENT_OPERATION_DURATION = "gen_ai.client.operation.duration"  # s, required
GEN_AI_CLIENT_TOKEN_USAGE = "gen_ai.client.token.usage"  # {token}
GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"  # s, streams
NOVA_CLIENT_COST = "nova.client.cost"  # {USD}, Nova's own counter

# the recommended explicit bucket boundaries (gen-ai-metrics.md)
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS: tuple[float, ...] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
