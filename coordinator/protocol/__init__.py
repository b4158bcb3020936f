"""SGLang's bootstrap wire format, and nothing else: the ``PUT /route`` payload and its
field rules, the topology a decode instance reads back (:class:`PrefillInfo`), the
query of ``GET /route`` and its rank key, and where the bootstrap server is.

Everything that speaks to or as SGLang's bootstrap server (the drivers, our server,
the simulator, the CLI) takes these names from here.
"""

from coordinator.protocol._payload import (
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    PayloadError,
    encode_payload,
    example_payload,
    validate_payload,
)
from coordinator.protocol._prefill_info import (
    TOPOLOGY_FIELDS,
    Address,
    AnswerError,
    PrefillInfo,
    mismatch,
    parse_rank,
    parse_topology,
)
from coordinator.protocol._route import (
    EXTENSION_PREFIX,
    GENERATION_HEADER,
    HEALTH_PATH,
    LONG_POLL_HEADER,
    QUERY_FIELDS,
    ROUTE_PATH,
    SEEN_PARAM,
    TOPOLOGY_KEY,
    WAIT_PARAM,
    RankKey,
    base_url,
    bootstrap_url,
    dp_of,
    rank_key,
    route_query,
)

__all__ = [
    "EXTENSION_PREFIX", "GENERATION_HEADER", "LONG_POLL_HEADER", "SEEN_PARAM", "WAIT_PARAM",
    "HEALTH_PATH", "OPTIONAL_FIELDS", "QUERY_FIELDS", "REQUIRED_FIELDS", "ROUTE_PATH", "TOPOLOGY_FIELDS",
    "TOPOLOGY_KEY", "Address", "AnswerError", "PayloadError", "PrefillInfo", "RankKey", "base_url",
    "bootstrap_url", "dp_of", "encode_payload", "example_payload", "mismatch", "parse_rank", "parse_topology",
    "rank_key", "route_query", "validate_payload",
]
