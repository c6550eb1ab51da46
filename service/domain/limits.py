"""The bounds on what callers may send, in one place: each is enforced where it applies and hit by a test."""

from __future__ import annotations

#: The longest callback body accepted over HTTP, in bytes (longer: 413).
MAX_BODY_BYTES = 64 * 1024
#: The longest HTTP request head (request line and headers, as nginx's large_client_header_buffers 4 x 8k would
#: hold it in two buffers) and the most header lines in it; past either: 431, and the connection is closed.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
#: The longest identifier accepted, in characters: a tracking id, a campaign tracking id, a status name. Routee's
#: are UUIDs (36); a callback with a longer ``trackingId`` cannot be identified (422), a request naming one is
#: refused (INVALID_ARGUMENT).
MAX_ID_LENGTH = 256
#: The most bodies the quarantine holds, whatever their size (beside --quarantine-max-mb): the oldest go first.
MAX_QUARANTINE_ENTRIES = 10_000
#: The most tracking ids one BatchGetMessageStatuses may ask for.
MAX_BATCH_IDS = 1000
#: The most status events and replies one message's answer carries (the latest ones; the answer counts them all).
MAX_EVENTS_PER_MESSAGE = 100
MAX_REPLIES_PER_MESSAGE = 100
#: The largest page ListMessageStatuses returns.
MAX_PAGE_SIZE = 1000
#: The largest gRPC request, in bytes: the largest valid request of every RPC fits (a batch of the most ids of the
#: longest length, each character up to 4 bytes of UTF-8 and 3 of framing), with room for the other fields.
MAX_GRPC_REQUEST_BYTES = MAX_BATCH_IDS * (4 * MAX_ID_LENGTH + 3) + 16 * 1024
#: The longest one retention transaction should hold the writer: chunks grow and shrink to stay near it, and the
#: writer rests as long after each, so pruning a million old rows leaves ingest most of its time.
PRUNE_TRANSACTION_SECONDS = 0.01
#: The fewest and the most rows a retention transaction deletes.
MIN_PRUNE_CHUNK, MAX_PRUNE_CHUNK = 50, 5000
#: The most parts of one SMS: a concatenated SMS's header counts them in one byte. A report of a part beyond it (or
#: below 1) cannot be identified (422); a ``parts`` beyond it is ignored. It bounds the parts one answer lists.
MAX_SMS_PARTS = 255
