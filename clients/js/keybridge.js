// keybridge.js: a web console's client of the keybridge daemon's loopback
// listener (`keybridge serve --http 127.0.0.1:PORT --allow-origin ORIGIN`).
// An ES module, no build step, no dependency: `import {KeybridgeClient}
// from "./keybridge.js"`. See README.md next to it.

/** Every error this client throws. `code` is a stable string (below),
 * `status` the HTTP status (0 when there was no readable answer), `detail`
 * a sentence for people, `problem` the daemon's RFC 9457 answer if any. */
export class KeybridgeError extends Error {
  constructor(code, status, detail, problem) {
    super(`keybridge: ${code}: ${detail}`);
    this.name = "KeybridgeError";
    this.code = code;
    this.status = status;
    this.detail = detail;
    this.problem = problem ?? null;
  }
}

/** Nothing answered at the URL: the daemon is not running, or without
 * `--http` on that port. */
export class BridgeNotRunningError extends KeybridgeError {
  constructor(detail) {
    super("bridge_not_running", 0, detail);
    this.name = "BridgeNotRunningError";
  }
}

/** Chrome's Local Network Access: the user (or a policy) did not let this
 * site reach the loopback address space, so the request never left the
 * browser. */
export class LocalNetworkPermissionDeniedError extends KeybridgeError {
  constructor(detail) {
    super("local_network_permission_denied", 0, detail);
    this.name = "LocalNetworkPermissionDeniedError";
  }
}

/** The daemon answered, but not to this origin: `origin_not_allowed`
 * (start it with `--allow-origin ORIGIN`) or `bad_host`. Such answers have
 * no CORS headers, so the page cannot read them: the client tells them
 * from "not running" with a `no-cors` probe (README.md). */
export class OriginNotAllowedError extends KeybridgeError {
  constructor(detail, problem, status = 0) {
    super("origin_not_allowed", status, detail, problem);
    this.name = "OriginNotAllowedError";
  }
}

/** `not_paired`: no token, an unknown one, or a revoked one. The agent runs
 * `keybridge pair --origin ORIGIN` and gives the console the token. */
export class OriginNotPairedError extends KeybridgeError {
  constructor(status, detail, problem) {
    super("origin_not_paired", status, detail, problem);
    this.name = "OriginNotPairedError";
  }
}

/** `token_other_origin`: the token was issued to another console. */
export class TokenOtherOriginError extends KeybridgeError {
  constructor(status, detail, problem) {
    super("token_other_origin", status, detail, problem);
    this.name = "TokenOtherOriginError";
  }
}

/** `wrong_pin` (with `retriesLeft` when the token says), `last_attempt`,
 * `pin_blocked`: the secret given to unlock was not accepted. */
export class UnlockRefusedError extends KeybridgeError {
  constructor(code, status, detail, problem) {
    super(code, status, detail, problem);
    this.name = "UnlockRefusedError";
    this.retriesLeft = problem?.retries_left ?? null;
  }
}

/** `locked`: the key must be unlocked first (`kid` says which). */
export class KeyLockedError extends KeybridgeError {
  constructor(status, detail, problem) {
    super("locked", status, detail, problem);
    this.name = "KeyLockedError";
    this.kid = problem?.kid ?? null;
  }
}

/** The daemon's problem codes (RFC 9457 `code`), and the client's own. */
export const CODES = Object.freeze([
  // the client's
  "bridge_not_running",
  "local_network_permission_denied",
  "origin_not_paired", // the daemon's not_paired
  "bad_response",
  // the loopback listener's gates
  "bad_host",
  "origin_not_allowed",
  "token_other_origin",
  // the signing interface
  "locked",
  "wrong_pin",
  "last_attempt",
  "pin_blocked",
  "token_absent",
  "touch_timeout",
  "token_not_answering",
  "policy_denied",
  "unknown_key",
  "ambiguous",
  "not_found",
  "already_exists",
  "too_many_attempts",
  "wrong_code",
  "log_invalid",
  "log_refused",
  "request_timeout",
  "bad_request",
  "method_not_allowed",
  "forbidden",
  "internal",
]);

const LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"];

/** The typed error for a problem answer. */
/** The answer's body as JSON, or null (empty, or not JSON). */
async function readJson(response) {
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function problemError(status, problem) {
  const code = typeof problem?.code === "string" ? problem.code : "bad_response";
  const detail =
    typeof problem?.detail === "string" ? problem.detail : `HTTP ${status}`;
  switch (code) {
    case "not_paired":
      return new OriginNotPairedError(status, detail, problem);
    case "token_other_origin":
      return new TokenOtherOriginError(status, detail, problem);
    case "origin_not_allowed":
    case "bad_host": {
      const e = new OriginNotAllowedError(detail, problem, status);
      e.code = code;
      return e;
    }
    case "wrong_pin":
    case "last_attempt":
    case "pin_blocked":
      return new UnlockRefusedError(code, status, detail, problem);
    case "locked":
      return new KeyLockedError(status, detail, problem);
    default:
      return new KeybridgeError(code, status, detail, problem);
  }
}

/** The state of Chrome's permission for the loopback address space
 * (`granted`, `denied`, `prompt`), or null where the browser has no such
 * permission (Firefox, Safari: there is only CORS). */
export async function loopbackPermission() {
  if (!globalThis.navigator?.permissions?.query) return null;
  // Chrome 142-144 named it local-network-access; later ones split it into
  // loopback-network and local-network. The first one known wins.
  for (const name of ["loopback-network", "local-network-access"]) {
    try {
      return (await navigator.permissions.query({ name })).state;
    } catch {
      // not a permission this browser knows
    }
  }
  return null;
}

/** A client of one daemon's loopback listener, with one pairing token. */
export class KeybridgeClient {
  #url;
  #token;

  /** `url`: `http://127.0.0.1:PORT` (or localhost, [::1]); `token`: the
   * `kbp_…` token of `keybridge pair --origin THIS_ORIGIN`. */
  constructor({ url, token } = {}) {
    const u = new URL(url);
    if (u.protocol !== "http:" || !LOOPBACK_HOSTS.includes(u.hostname)) {
      throw new TypeError(
        "the bridge URL is http://127.0.0.1:PORT (localhost, [::1]): the listener is loopback only",
      );
    }
    this.#url = u.origin;
    this.#token = token ? String(token) : null;
  }

  /** The bridge's origin. */
  get url() {
    return this.#url;
  }

  /** `GET /v1/status`: the daemon's state. */
  status() {
    return this.#call("GET", "/v1/status");
  }

  /** `GET /v1/keys`: the keys (kid, label, backend, lock state …). */
  keys() {
    return this.#call("GET", "/v1/keys");
  }

  /** `POST /v1/keys/{kid}/unlock`: `secret` is the PIN or passphrase;
   * `remember`: "each-task", "daily" or "weekly" (the daemon's default
   * when omitted). The secret goes into the request body and nowhere else:
   * not kept, not in any error. */
  unlock(kid, secret, remember) {
    const body = { secret: String(secret) };
    if (remember) body.remember = remember;
    return this.#call("POST", `/v1/keys/${encodeURIComponent(kid)}/unlock`, body);
  }

  /** `POST /v1/sign`: `{key, device | devices, command, args?, ttl?}` →
   * `{kid, envelope}` (base64 COSE), or `{kid, root, envelopes}` for a
   * batch. */
  sign(request) {
    return this.#call("POST", "/v1/sign", request);
  }

  /** `POST /v1/sign/batch`: one command for a fleet, one signature.
   * `request`: as for `sign`, without `device`/`devices`; `devices`: the
   * ids (strings, each once); `onEnvelope(device, envelope)` gets every
   * envelope (base64 COSE) as the answer streams in, sorted by id.
   * Resolves to the answer's last line, `{complete: true, size, root, kid,
   * audit: {time, cti}, backend, label, fallback}`. A stream that ends
   * without it (or with a line that is not an envelope, or too few) is a
   * `KeybridgeError` with code `cut_short`: the envelopes seen are not the
   * batch. */
  async signBatch(request, devices, onEnvelope) {
    const body = `${JSON.stringify(request)}\n${devices.map(String).join("\n")}\n`;
    const response = await this.#fetch("POST", "/v1/sign/batch", body, "application/x-ndjson");
    if (!response.ok) throw problemError(response.status, await readJson(response));
    const cut = (why) =>
      new KeybridgeError("cut_short", response.status, `the batch answer ${why}: it is not the batch`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let partial = "";
    let trailer = null;
    let count = 0;
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch {
        throw cut("was cut short");
      }
      if (chunk.done) break;
      const lines = (partial + chunk.value).split("\n");
      partial = lines.pop();
      for (const line of lines) {
        if (trailer) throw cut("goes on after its last line");
        let v;
        try {
          v = JSON.parse(line);
        } catch {
          throw cut("has a line that is not JSON");
        }
        if (v?.complete === true) {
          trailer = v;
        } else if (typeof v?.device === "string" && typeof v?.envelope === "string") {
          count += 1;
          onEnvelope?.(v.device, v.envelope);
        } else {
          throw cut("has a line that is neither an envelope nor the end");
        }
      }
    }
    if (partial !== "") throw cut("ends in the middle of a line");
    if (trailer === null) throw cut("ended without its last line");
    if (trailer.size !== count) throw cut(`has ${count} envelopes for a batch of ${trailer.size}`);
    return trailer;
  }

  async #call(method, path, body) {
    const response = await this.#fetch(
      method,
      path,
      body === undefined ? undefined : JSON.stringify(body),
      "application/json",
    );
    const answer = await readJson(response);
    if (!response.ok) throw problemError(response.status, answer);
    if (answer === null) {
      throw new KeybridgeError("bad_response", response.status, "the bridge's answer is not JSON");
    }
    return answer;
  }

  /** One request to the bridge: the answer whatever its status, or the
   * diagnosed reason there is none. */
  async #fetch(method, path, body, contentType) {
    const headers = { accept: "application/json" };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    const init = {
      method,
      headers,
      mode: "cors",
      credentials: "omit",
      cache: "no-store",
      redirect: "error",
      referrerPolicy: "no-referrer",
      // Chrome's Local Network Access: say up front that this request is
      // for the loopback address space (other browsers ignore it).
      targetAddressSpace: "loopback",
    };
    if (body !== undefined) {
      headers["content-type"] = contentType;
      init.body = body;
    }
    try {
      return await fetch(this.#url + path, init);
    } catch (e) {
      // Deliberately not chaining `e`: nothing of the request (its body
      // carries the secret on unlock) travels with the error.
      throw await this.#diagnose(e);
    }
  }

  /** Why a fetch failed without an answer the page may read (a TypeError:
   * the browser says no more, on purpose). The heuristic (README.md):
   *
   * 1. A `no-cors` probe of `/v1/status`: if it gets an (opaque) answer,
   *    the daemon runs and refused this origin without CORS headers →
   *    `origin_not_allowed`.
   * 2. Otherwise the loopback permission: `denied` → Local Network Access
   *    blocked the request → `local_network_permission_denied`. Also when
   *    it is `prompt` (a prompt dismissed) and this page is not itself on
   *    loopback (a loopback page needs no permission).
   * 3. Otherwise → `bridge_not_running`. */
  async #diagnose(error) {
    const here = globalThis.location?.origin ?? "this page";
    const why = error?.name === "TypeError" ? String(error.message) : "fetch failed";
    let answered = false;
    try {
      await fetch(`${this.#url}/v1/status`, {
        mode: "no-cors",
        credentials: "omit",
        cache: "no-store",
        referrerPolicy: "no-referrer",
        targetAddressSpace: "loopback",
      });
      answered = true;
    } catch {
      // no answer either
    }
    if (answered) {
      return new OriginNotAllowedError(
        `the bridge at ${this.#url} answered but not to ${here}: start it with --allow-origin ${here} (${why})`,
      );
    }
    const permission = await loopbackPermission();
    const pageOnLoopback = LOOPBACK_HOSTS.includes(globalThis.location?.hostname);
    if (permission === "denied" || (permission === "prompt" && !pageOnLoopback)) {
      return new LocalNetworkPermissionDeniedError(
        `the browser did not let ${here} reach ${this.#url} (local network access permission: ${permission}); allow it in the site settings and try again (${why})`,
      );
    }
    return new BridgeNotRunningError(
      `nothing answers at ${this.#url}: is \`keybridge serve --http ${this.#url.replace("http://", "")}\` running? (${why})`,
    );
  }
}
