// OpenClaw conformance check for a BeamClaw gateway.
//
// Connects OpenClaw's reference client (@openclaw/gateway-client, pinned) twice: once with the
// gateway token, once as a device with a freshly generated Ed25519 identity (approving its
// pairing request when the gateway asks for one), then reconnects with the issued device token
// alone. On each it runs chat.send through to the final chat event, chat.history, and
// sessions.list/patch/reset/delete. Every frame the server sends is captured from the socket
// and validated against protocol.schema.json (pinned), frame envelope and payload.
//
// usage: node conformance.mjs <ws-url> <token>
// Prints a summary; exits 1 on any failure.

import { createPublicKey, createHash, generateKeyPairSync, randomUUID, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import Ajv from "ajv";
import { WebSocket } from "ws";
import { GatewayClient } from "@openclaw/gateway-client";

const STEP_TIMEOUT_MS = 60_000;
const DETAIL_CHARS_MAX = 600;

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node conformance.mjs <ws-url> <token>");
  process.exit(2);
}

// ---- schema ----------------------------------------------------------------------------
// The package's exports map does not expose the file; it sits beside its package.json.
const schemaPath = fileURLToPath(new URL("./node_modules/@openclaw/gateway-protocol/protocol.schema.json", import.meta.url));
const schema = JSON.parse(readFileSync(schemaPath, "utf8"));
// The schema uses OpenAPI's discriminator and its own x-* and methods keys: not JSON Schema
// keywords, so strict mode is off (validation of the standard keywords is unchanged).
const ajv = new Ajv({ strict: false, allErrors: true });
ajv.addSchema(schema, "protocol");
const frameValidator = ajv.compile({ $ref: "protocol#" });
const definition = (name) => {
  const validate = ajv.getSchema(`protocol#/definitions/${name}`);
  if (!validate) throw new Error(`protocol.schema.json has no definition ${name}`);
  return validate;
};

const EVENT_PAYLOADS = {
  chat: "ChatEvent",
  agent: "AgentEvent",
  tick: "TickEvent",
  shutdown: "ShutdownEvent",
  "device.pair.requested": "DevicePairRequestedEvent",
  "device.pair.resolved": "DevicePairResolvedEvent",
};
const RESULT_PAYLOADS = {
  connect: "HelloOk",
  "models.list": "ModelsListResult",
  "sessions.create": "SessionsCreateResult",
  "sessions.delete": "SessionsDeleteResult",
  "device.token.rotate": "DeviceTokenRotateResult",
};

// ---- bookkeeping -----------------------------------------------------------------------
const failures = [];
const passed = [];
const counts = { frames: 0, events: {}, results: {}, payloadChecks: 0 };
const check = (ok, what, detail) => {
  if (ok) passed.push(what);
  else failures.push(detail ? `${what}: ${String(detail).slice(0, DETAIL_CHARS_MAX)}` : what);
  return ok;
};
const errorsText = (validate) => ajv.errorsText(validate.errors, { separator: "; " });

// ---- raw frame capture -----------------------------------------------------------------
// The reference client talks through the `ws` package (the same hoisted copy imported here):
// wrapping `emit` and `send` on its prototype sees every frame on every socket it opens.
const methodsById = new Map();
const originalSend = WebSocket.prototype.send;
WebSocket.prototype.send = function (data, ...rest) {
  try {
    const frame = JSON.parse(typeof data === "string" ? data : data.toString());
    if (frame?.type === "req") methodsById.set(frame.id, frame.method);
  } catch {
    // not JSON: the server's answer to it is validated like any other frame
  }
  return originalSend.call(this, data, ...rest);
};
const originalEmit = WebSocket.prototype.emit;
WebSocket.prototype.emit = function (event, ...args) {
  if (event === "message") validateServerFrame(args[0]);
  return originalEmit.call(this, event, ...args);
};

function validateServerFrame(raw) {
  counts.frames += 1;
  const text = Buffer.isBuffer(raw) ? raw.toString("utf8") : Array.isArray(raw) ? Buffer.concat(raw).toString("utf8") : String(raw);
  let frame;
  try {
    frame = JSON.parse(text);
  } catch (err) {
    check(false, "server frame is JSON", `${err.message}: ${text.slice(0, 200)}`);
    return;
  }
  if (!check(frameValidator(frame), "frame envelope", `${errorsText(frameValidator)} in ${text.slice(0, 300)}`)) return;
  if (frame.type === "event") {
    counts.events[frame.event] = (counts.events[frame.event] ?? 0) + 1;
    const name = EVENT_PAYLOADS[frame.event];
    if (name) payloadCheck(name, frame.payload, `event ${frame.event}`);
    if (frame.event === "presence") {
      for (const entry of frame.payload?.presence ?? []) payloadCheck("PresenceEntry", entry, "presence entry");
    }
    if (frame.event === "connect.challenge") {
      const p = frame.payload ?? {};
      check(typeof p.nonce === "string" && p.nonce.length > 0 && Number.isInteger(p.ts), "connect.challenge has nonce and ts", text);
    }
  } else if (frame.type === "res") {
    const method = methodsById.get(frame.id);
    if (method) counts.results[method] = (counts.results[method] ?? 0) + 1;
    const name = RESULT_PAYLOADS[method];
    if (frame.ok && name && frame.payload?.status !== "accepted") payloadCheck(name, frame.payload, `${method} result`);
    if (frame.ok && method === "sessions.list") {
      for (const row of frame.payload?.sessions ?? []) payloadCheck("SessionRow", row, "sessions.list row");
    }
  }
}

function payloadCheck(name, payload, what) {
  counts.payloadChecks += 1;
  const validate = definition(name);
  check(validate(payload), `${what} matches ${name}`, `${errorsText(validate)} in ${JSON.stringify(payload).slice(0, 300)}`);
}

// ---- helpers ---------------------------------------------------------------------------
const withTimeout = (promise, what, ms = STEP_TIMEOUT_MS) =>
  Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms).unref())]);

function startClient(options) {
  const events = [];
  const waiters = new Set();
  let resolveHello;
  let rejectHello;
  const hello = new Promise((resolve, reject) => {
    resolveHello = resolve;
    rejectHello = reject;
  });
  const client = new GatewayClient({
    url,
    requestTimeoutMs: STEP_TIMEOUT_MS,
    onHelloOk: (h) => resolveHello(h),
    onConnectError: (err) => rejectHello(err),
    onEvent: (event) => {
      events.push(event);
      for (const waiter of [...waiters]) {
        if (waiter.pred(event)) {
          waiters.delete(waiter);
          waiter.resolve(event);
        }
      }
    },
    ...options,
  });
  const waitEvent = (pred, what) => {
    const seen = events.find(pred);
    if (seen) return Promise.resolve(seen);
    return withTimeout(new Promise((resolve) => waiters.add({ pred, resolve })), what);
  };
  client.start();
  return { client, hello: withTimeout(hello, "hello-ok"), events, waitEvent };
}

async function chatRoundTrip(label, session) {
  const { client, waitEvent } = session;
  const sessionKey = `agent:main:conformance-${label}-${randomUUID().slice(0, 8)}`;
  const sent = await client.request("chat.send", { sessionKey, message: `hello from the conformance suite (${label})`, idempotencyKey: randomUUID() });
  check(typeof sent.runId === "string" && sent.status === "started", `${label}: chat.send answers {runId, status: "started"}`, JSON.stringify(sent));
  const final = await waitEvent((e) => e.event === "chat" && e.payload?.runId === sent.runId && e.payload?.state === "final", `${label}: final chat event`);
  const finalText = (final.payload.message?.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("");
  check(finalText.length > 0, `${label}: the final chat event carries the reply`, JSON.stringify(final.payload));

  const history = await client.request("chat.history", { sessionKey });
  const roles = (history.messages ?? []).map((m) => m.role);
  check(roles.includes("user") && roles.includes("assistant"), `${label}: chat.history has the user message and the reply`, JSON.stringify(roles));

  const list = await client.request("sessions.list", {});
  check((list.sessions ?? []).some((row) => row.key === sessionKey), `${label}: sessions.list includes the session`);

  const patched = await client.request("sessions.patch", { key: sessionKey, label: `conformance ${label}` });
  check(patched.entry?.label === `conformance ${label}`, `${label}: sessions.patch sets the label`, JSON.stringify(patched));
  const cleared = await client.request("sessions.patch", { key: sessionKey, label: null });
  check(cleared.entry?.label === undefined, `${label}: sessions.patch with null clears the label`, JSON.stringify(cleared));

  const reset = await client.request("sessions.reset", { key: sessionKey });
  check(reset.ok === true, `${label}: sessions.reset`, JSON.stringify(reset));
  const deleted = await client.request("sessions.delete", { key: sessionKey });
  check(deleted.ok === true && deleted.deleted === true, `${label}: sessions.delete`, JSON.stringify(deleted));

  try {
    await client.request("cron.list", {});
    check(false, `${label}: an unsupported method is refused`);
  } catch (err) {
    check(err.gatewayCode === "INVALID_REQUEST" || /not supported/.test(err.message), `${label}: an unsupported method gets INVALID_REQUEST`, err.message);
  }
  const health = await client.request("health", {});
  check(health && typeof health === "object", `${label}: the connection survives the refusal`);
}

function newDevice() {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const publicKeyPem = publicKey.export({ type: "spki", format: "pem" });
  const privateKeyPem = privateKey.export({ type: "pkcs8", format: "pem" });
  const raw = Buffer.from(publicKey.export({ format: "jwk" }).x, "base64url");
  return { deviceId: createHash("sha256").update(raw).digest("hex"), publicKeyPem, privateKeyPem };
}

function hostDeps(store) {
  return {
    signDevicePayload: (pem, payload) => sign(null, Buffer.from(payload, "utf8"), pem).toString("base64url"),
    publicKeyRawBase64UrlFromPem: (pem) => createPublicKey(pem).export({ format: "jwk" }).x,
    loadDeviceAuthToken: ({ deviceId, role }) => store.get(`${deviceId}/${role}`) ?? null,
    storeDeviceAuthToken: ({ deviceId, role, token, scopes }) => store.set(`${deviceId}/${role}`, { token, scopes }),
    clearDeviceAuthToken: ({ deviceId, role }) => store.delete(`${deviceId}/${role}`),
  };
}

// ---- run -------------------------------------------------------------------------------
async function main() {
  // 1. Shared token.
  const tokenSession = startClient({ token, clientName: "gateway-client", mode: "backend" });
  const hello = await tokenSession.hello;
  check(hello.type === "hello-ok" && hello.protocol === 4, "token: hello-ok on protocol 4", JSON.stringify({ type: hello.type, protocol: hello.protocol }));
  await chatRoundTrip("token", tokenSession);

  // 2. A paired device.
  const device = newDevice();
  const tokens = new Map();
  const deviceOptions = { clientName: "cli", mode: "cli", deviceIdentity: device, hostDeps: hostDeps(tokens), scopes: ["operator.admin"] };
  let deviceSession = startClient({ token, ...deviceOptions });
  let deviceHello;
  try {
    deviceHello = await deviceSession.hello;
  } catch (err) {
    if (err.details?.code !== "PAIRING_REQUIRED") throw err;
    deviceSession.client.stop();
    // Not auto-approved: approve the pending request with the token client, then retry.
    await tokenSession.client.request("device.pair.approve", { requestId: err.details.requestId });
    check(true, "device: pairing request approved with device.pair.approve");
    console.log(`device pairing approved through device.pair.approve (request ${err.details.requestId})`);
    deviceSession = startClient({ token, ...deviceOptions });
    deviceHello = await deviceSession.hello;
  }
  check(typeof deviceHello.auth?.deviceToken === "string", "device: hello-ok issues a device token", JSON.stringify(deviceHello.auth));
  check(tokens.has(`${device.deviceId}/operator`), "device: the reference client stored its device token");
  await chatRoundTrip("device", deviceSession);
  await deviceSession.client.stopAndWait();

  // 3. The device again, with its device token alone.
  const again = startClient(deviceOptions);
  const againHello = await again.hello;
  check(againHello.type === "hello-ok", "device token: reconnects without the gateway token");
  const models = await again.client.request("models.list", {});
  check(Array.isArray(models.models), "device token: models.list answers", JSON.stringify(models));
  await again.client.stopAndWait();
  await tokenSession.client.stopAndWait();
}

let crashed = null;
try {
  await main();
} catch (err) {
  crashed = err;
  failures.push(`run stopped: ${err.stack ?? err}`);
}
check(counts.frames > 0, "frames were captured from the socket");

console.log(`conformance against ${url}`);
console.log(`  schema: ${schemaPath}`);
console.log(`  server frames validated: ${counts.frames}; payload schemas checked: ${counts.payloadChecks}`);
console.log(`  events: ${JSON.stringify(counts.events)}`);
console.log(`  results: ${JSON.stringify(counts.results)}`);
for (const failure of failures.slice(0, 50)) console.log(`  FAIL ${failure}`);
if (failures.length > 50) console.log(`  ... ${failures.length - 50} more failures`);
console.log(`${passed.length} passed, ${failures.length} failed`);
process.exit(failures.length === 0 && !crashed ? 0 : 1);
