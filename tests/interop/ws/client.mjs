// Drives the third-party XMPP client @xmpp/client (xmpp.js) over XMPP-over-WebSocket
// (RFC 7395) for the kith interop tests.
//
// Usage: node [--experimental-websocket] client.mjs '<json config>'
//   config: { service, domain, username, password, resource,
//             peer, send_body, expect_body, timeout_ms,
//             user_agent_id (XEP-0388), token (a FAST token from an earlier run) }
// It logs in, sends initial presence, sends `send_body` to `peer` and waits for a
// message whose body is `expect_body`. It prints one JSON line on stdout:
//   { ok, jid, sent_id, received: [{from, to, type, body}], errors: [...], phase,
//     nonzas: ["name ns", ...], sm: {enabled, id}, token (a FAST token the server issued) }
// and exits 0 when the expected message arrived, 1 otherwise. It never waits
// longer than timeout_ms.

import { client, xml } from "@xmpp/client";

const cfg = JSON.parse(process.argv[2] ?? "{}");
const timeoutMs = cfg.timeout_ms ?? 20000;
const out = {
  ok: false,
  jid: null,
  sent_id: null,
  received: [],
  errors: [],
  phase: "start",
  nonzas: [],
  sm: null,
  token: null,
};

let finish;
const finished = new Promise((resolve) => {
  finish = resolve;
});
const timer = setTimeout(() => {
  out.errors.push(`timeout after ${timeoutMs} ms in phase ${out.phase}`);
  finish();
}, timeoutMs);

const xmpp = client({
  service: cfg.service,
  domain: cfg.domain,
  credentials: { username: cfg.username, password: cfg.password, token: cfg.token ?? undefined },
  resource: cfg.resource,
  ...(cfg.user_agent_id && { userAgent: xml("user-agent", { id: cfg.user_agent_id }) }),
});
// XEP-0484: keep the token the server hands out, for the caller's next run.
xmpp.fast.saveToken = async (token) => {
  out.token = token;
};
xmpp.on("nonza", (el) => {
  out.nonzas.push(`${el.name} ${el.attrs.xmlns ?? ""}`);
});
// A failed login must fail the run, not loop forever.
xmpp.reconnect.stop();

xmpp.on("error", (err) => {
  out.errors.push(`${err.name ?? "Error"}: ${err.condition ?? ""} ${err.message ?? err}`);
  if (out.phase !== "online") finish();
});

xmpp.on("offline", () => {
  if (!out.ok) out.errors.push("went offline");
  finish();
});

xmpp.on("stanza", (stanza) => {
  if (!stanza.is("message")) return;
  const body = stanza.getChildText("body");
  out.received.push({
    from: stanza.attrs.from ?? null,
    to: stanza.attrs.to ?? null,
    type: stanza.attrs.type ?? null,
    body,
  });
  if (body === cfg.expect_body) {
    out.ok = true;
    finish();
  }
});

xmpp.on("online", async (address) => {
  out.phase = "online";
  out.jid = address.toString();
  try {
    await xmpp.send(xml("presence"));
    const id = `ws-${Date.now()}-${Math.random().toString(16).slice(2)}`;
    out.sent_id = id;
    await xmpp.send(
      xml("message", { to: cfg.peer, type: "chat", id }, xml("body", {}, cfg.send_body)),
    );
    out.phase = "sent";
  } catch (err) {
    out.errors.push(`send failed: ${err.message ?? err}`);
    finish();
  }
});

try {
  out.phase = "connecting";
  await xmpp.start();
} catch (err) {
  out.errors.push(`start failed: ${err.name ?? "Error"}: ${err.condition ?? ""} ${err.message ?? err}`);
  finish();
}

await finished;
clearTimeout(timer);
// Read once the login is over: inline results are applied after "online".
out.sm = { enabled: xmpp.streamManagement.enabled, id: xmpp.streamManagement.id };
try {
  await Promise.race([xmpp.stop(), new Promise((r) => setTimeout(r, 3000))]);
} catch (err) {
  // closing errors do not change the verdict
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(out.ok ? 0 : 1);
