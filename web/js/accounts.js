// Phone-number accounts and linked devices over the HTTP API (/api/v1, the
// accounts issue): sign up or in with an SMS code, link this browser to an
// account with a code shown here and approved on a signed-in device, list and
// revoke devices. The device credential the API returns is this browser's XMPP
// password and its API bearer token; it is kept (store.js) because the device
// list needs it, and it can be revoked from any other device.

async function call(method, path, body, token) {
  const headers = { Accept: 'application/json' };
  if (body) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(`/api/v1${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  } catch {
    throw new Error('The server cannot be reached.');
  }
  let data = {};
  try { data = await res.json(); } catch { data = {}; }
  if (!res.ok) {
    const why = data.error?.message || data.message || data.error || `HTTP ${res.status}`;
    throw Object.assign(new Error(res.status === 404 ? 'This server does not offer phone sign-in.' : String(why)), { status: res.status });
  }
  return data;
}

export const deviceName = () => {
  const ua = navigator.userAgent;
  const browser = /Firefox\//.test(ua) ? 'Firefox' : /Edg\//.test(ua) ? 'Edge' : /Chrom/.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  return `Web (${browser})`;
};

/** Sends the code; resolves with {phone (E.164), expires_in}. */
export const startPhone = (phone) => call('POST', '/register/start', { phone });
/** Checks the code; resolves with {jid, device_id, credential, new_account}. */
export const verifyPhone = (phone, code) => call('POST', '/register/verify', { phone, code, device_name: deviceName() });

/** Asks for a link code for this browser: {link_id, poll_token, code, qr_svg, expires_in}. */
export const startLink = () => call('POST', '/link/start', { device_name: deviceName() });
/** {status: 'pending'} or {status: 'approved', jid, device_id, credential}. */
export const pollLink = (linkId, pollToken) => call('POST', '/link/poll', { link_id: linkId, poll_token: pollToken });
/** Approves a code another device shows (signed-in side). */
export const approveLink = (token, code) => call('POST', '/link/approve', { code }, token);

export const devices = (token) => call('GET', '/devices', null, token);
export const revoke = (token, id) => call('DELETE', `/devices/${encodeURIComponent(id)}`, null, token);

/** The QR code as an <img> source: the SVG goes in as an image, never as markup. */
export const qrImage = (svg) => `data:image/svg+xml;base64,${btoa(unescape(encodeURIComponent(svg)))}`;
