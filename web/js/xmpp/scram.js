// SASL SCRAM-SHA-256 (RFC 5802, RFC 7677) on WebCrypto. The client keeps only
// the derived keys (ClientKey, ServerKey, with the salt and iteration count they
// belong to), never the password: they let this browser sign in again, but are
// useless on any other server and cannot be turned back into the password.

const enc = new TextEncoder();
const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)));
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

async function hmac(key, data) {
  const k = await crypto.subtle.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return new Uint8Array(await crypto.subtle.sign('HMAC', k, typeof data === 'string' ? enc.encode(data) : data));
}
const sha256 = async (data) => new Uint8Array(await crypto.subtle.digest('SHA-256', data));

/** RFC 5802 §5.1: '=' and ',' in the user name are escaped. */
const saslName = (name) => name.replace(/=/g, '=3D').replace(/,/g, '=2C');

/** Derives the keys for a password (RFC 5802 §3: Hi() is PBKDF2 with HMAC). */
export async function deriveKeys(password, saltB64, iterations) {
  const base = await crypto.subtle.importKey('raw', enc.encode(password.normalize('NFKC')), 'PBKDF2', false, ['deriveBits']);
  const salted = new Uint8Array(await crypto.subtle.deriveBits(
    { name: 'PBKDF2', hash: 'SHA-256', salt: unb64(saltB64), iterations }, base, 256));
  return {
    salt: saltB64,
    iterations,
    clientKey: b64(await hmac(salted, 'Client Key')),
    serverKey: b64(await hmac(salted, 'Server Key')),
  };
}

/**
 * One SCRAM exchange. `secret` is {password} or stored keys; `step()` is fed the
 * server's messages. After success, `keys` holds what may be stored.
 */
export class Scram {
  constructor(username, secret) {
    this.secret = secret;
    this.nonce = b64(crypto.getRandomValues(new Uint8Array(18)));
    this.firstBare = `n=${saslName(username)},r=${this.nonce}`;
    this.keys = null;
  }
  initial() { return btoa('n,,' + this.firstBare); }

  async challenge(serverFirstB64) {
    const serverFirst = atob(serverFirstB64);
    const attrs = Object.fromEntries(serverFirst.split(',').map((p) => [p[0], p.slice(2)]));
    if (!attrs.r || !attrs.r.startsWith(this.nonce) || !attrs.s || !(+attrs.i > 0)) {
      throw new Error('the server sent a malformed SCRAM challenge');
    }
    const iterations = +attrs.i;
    let keys = this.secret.keys;
    if (!keys || keys.salt !== attrs.s || keys.iterations !== iterations) {
      if (!this.secret.password) {
        const e = new Error('stored credentials no longer match the account; sign in again');
        e.condition = 'credentials-expired';
        throw e;
      }
      keys = await deriveKeys(this.secret.password, attrs.s, iterations);
    }
    const clientKey = unb64(keys.clientKey);
    const withoutProof = `c=biws,r=${attrs.r}`;
    this.authMessage = `${this.firstBare},${serverFirst},${withoutProof}`;
    const signature = await hmac(await sha256(clientKey), this.authMessage);
    const proof = clientKey.map((b, i) => b ^ signature[i]);
    this.pending = keys;
    return btoa(`${withoutProof},p=${b64(proof)}`);
  }

  /** RFC 5802 §3: the server proves it knows the ServerKey too. */
  async verify(serverFinalB64) {
    const final = atob(serverFinalB64 || '');
    const v = final.split(',').find((p) => p.startsWith('v='));
    const expected = b64(await hmac(unb64(this.pending.serverKey), this.authMessage));
    if (!v || v.slice(2) !== expected) throw new Error('the server could not prove it knows the password');
    this.keys = this.pending;
  }
}
