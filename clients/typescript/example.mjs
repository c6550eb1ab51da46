// Calls both RPCs with the generated client:
//   node example.mjs HOST:PORT TRACKING_ID                                  plain gRPC (a mesh, a local try)
//   node example.mjs HOST:PORT TRACKING_ID CA.crt                           TLS: the server's certificate is checked
//   node example.mjs HOST:PORT TRACKING_ID CA.crt CLIENT.crt CLIENT.key     mutual TLS (--grpc-client-ca)
// Prints one JSON line: the message's current status, then the first streamed update (replayed from sequence 0).
import { readFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { MessageStatus } from "./gen/routee/callbacks/v1/callback_pb.js";
import { MessageStatusService } from "./gen/routee/callbacks/v1/message_status_service_pb.js";

const [target, trackingId, ca, cert, key] = process.argv.slice(2);
const transport = ca
  ? createGrpcTransport({
      baseUrl: `https://${target}`,
      nodeOptions: {
        ca: readFileSync(ca),
        ...(cert && { cert: readFileSync(cert), key: readFileSync(key) }),
      },
    })
  : createGrpcTransport({ baseUrl: `http://${target}` });
const client = createClient(MessageStatusService, transport);

const status = await client.getMessageStatus({ trackingId }, { timeoutMs: 10_000 });
const abort = new AbortController();
let first;
try {
  for await (const item of client.streamStatusUpdates({ afterSequence: 0n }, { signal: abort.signal })) {
    if (item.item.case === "statusUpdate") {
      first = item.item.value;
      break;
    }
  }
} finally {
  abort.abort();
}
console.log(
  JSON.stringify({
    trackingId: status.trackingId,
    status: MessageStatus[status.status],
    statusName: status.statusName,
    events: status.events.length,
    firstSequence: Number(first.sequence),
    firstTrackingId: first.trackingId,
  }),
);
