// The demo console: the bridge URL and pairing token from the query string
// (?bridge=…&token=…&key=…&device=…) or the form; unlock, sign, show the
// envelope. `window.demo` is what the buttons call (and the tests).
import { KeybridgeClient, KeybridgeError } from "../keybridge.js";

const $ = (id) => document.getElementById(id);
$("origin").textContent = `(${location.origin})`;

// Take the settings from the query string, then drop it from the address
// bar and the history (the token is a secret).
const query = new URLSearchParams(location.search);
for (const name of ["bridge", "token", "key", "device", "command", "remember"]) {
  if (query.has(name)) $(name).value = query.get(name);
}
if (location.search) history.replaceState(null, "", location.pathname);

function client() {
  return new KeybridgeClient({ url: $("bridge").value.trim(), token: $("token").value.trim() });
}

function shown(error) {
  const e = error instanceof KeybridgeError ? error : new KeybridgeError("client_error", 0, String(error));
  $("error").textContent = `${e.code}: ${e.detail}`;
  return { ok: false, code: e.code, status: e.status, detail: e.detail, name: e.name };
}

async function run(what, step) {
  $("error").textContent = "";
  try {
    const value = await step();
    return { ok: true, value };
  } catch (e) {
    return shown(e);
  } finally {
    demo.last = what;
  }
}

const demo = {
  last: null,
  envelope: null,
  /** Status and keys. */
  connect: () =>
    run("connect", async () => {
      const c = client();
      const status = await c.status();
      const keys = await c.keys();
      const list = Array.isArray(keys) ? keys : keys.keys ?? [];
      $("status").textContent = `connected to ${c.url}: ${list.length} key(s): ${list
        .map((k) => `${k.label ?? k.kid} (${k.unlocked ? "unlocked" : "locked"})`)
        .join(", ")}`;
      return { status, keys };
    }),
  /** Unlocks the key with the passphrase field, which is cleared. */
  unlock: () => {
    const secret = $("secret").value;
    $("secret").value = "";
    return run("unlock", async () => {
      const state = await client().unlock($("key").value.trim(), secret, $("remember").value);
      $("status").textContent = `key ${state.kid.slice(0, 16)}… unlocked (${state.mode ?? "default"})`;
      return state;
    });
  },
  /** Signs the command for the device; shows the envelope. */
  sign: () =>
    run("sign", async () => {
      const signed = await client().sign({
        key: $("key").value.trim(),
        device: $("device").value.trim(),
        command: $("command").value.trim(),
      });
      demo.envelope = signed.envelope;
      $("envelope").textContent = signed.envelope;
      $("status").textContent = `signed by ${signed.kid.slice(0, 16)}… for ${$("device").value}`;
      $("verdict").textContent = "";
      return signed;
    }),
  /** Shows what the device said of the envelope (the test puts it here). */
  showVerdict(text, ok) {
    $("verdict").textContent = `device verdict: ${text}`;
    $("verdict").className = ok ? "ok" : "bad";
  },
};
window.demo = demo;
$("connect").addEventListener("click", demo.connect);
$("unlock").addEventListener("click", demo.unlock);
$("sign").addEventListener("click", demo.sign);
window.demoReady = true;
