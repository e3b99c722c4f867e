// One XMPP session over WebSocket (RFC 7395): SASL SCRAM-SHA-256, resource
// binding, XEP-0198 stream management with resumption, iq round trips, and
// reconnection with backoff. Events (EventTarget):
//   'status'   {state: 'connecting'|'online'|'offline'|'failed', error?}
//   'session'  {resumed: bool}             ready to send (after SM enable/resume)
//   'stanza'   {el}                        every incoming message/presence/iq
//   'acked'    {ids}                       ids of our stanzas the server handled
//   'unacked'  {items}                     what a failed resumption left unconfirmed
import { NS, x, parse, child, uid, errorCondition } from './xml.js';
import { Scram } from './scram.js';

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const IQ_TIMEOUT_MS = 20000;
const SILENCE_MS = 45000;

export class Connection extends EventTarget {
  /** @param {{url, jid, resource, secret: {password?, keys?}}} opts */
  constructor(opts) {
    super();
    this.url = opts.url;
    this.jid = opts.jid;
    [this.local, this.domain] = opts.jid.split('@');
    this.resource = opts.resource;
    this.secret = opts.secret;
    this.ws = null;
    this.state = 'offline';
    this.ready = false;
    this.stopped = false;
    this.attempt = 0;
    this.iqs = new Map();
    this.sm = null; // {id, inbound, outAcked, unacked: [{xml, id}]}
    this.onOnline = () => { if (!this.ws && !this.stopped) this.connect(); };
    this.onOffline = () => this.drop();
    addEventListener('online', this.onOnline);
    addEventListener('offline', this.onOffline);
  }

  emit(type, detail = {}) { this.dispatchEvent(new CustomEvent(type, { detail })); }
  setState(state, error) { this.state = state; this.emit('status', { state, error }); }

  /** Opens the socket and negotiates; resolves once the session is ready. */
  connect() {
    clearTimeout(this.retryTimer);
    if (this.ws) return;
    this.setState('connecting');
    this.ready = false;
    let ws;
    try {
      ws = new WebSocket(this.url, 'xmpp');
    } catch (e) {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    this.step = 'open';
    ws.onopen = () => this.open();
    ws.onmessage = (ev) => this.onFrame(ev.data);
    ws.onclose = () => { if (this.ws === ws) this.onClosed(); };
    ws.onerror = () => {}; // 'close' follows and handles it
  }

  open() {
    this.write(x('open', { xmlns: NS.FRAMING, to: this.domain, version: '1.0' }));
  }

  write(el) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(String(el));
  }

  /** A network blip: close the socket, keep the session for resumption. */
  drop() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(); } catch { /* already closed */ }
      this.onClosed();
    }
  }

  onClosed() {
    this.ws = null;
    this.ready = false;
    clearInterval(this.keepalive);
    if (!this.sm?.id) this.failIqs('remote-server-timeout');
    if (this.stopped) return;
    this.setState('offline');
    this.scheduleRetry();
  }

  scheduleRetry() {
    if (this.stopped || this.fatal) return;
    const delay = BACKOFF_MS[Math.min(this.attempt++, BACKOFF_MS.length - 1)];
    this.retryTimer = setTimeout(() => { if (navigator.onLine !== false) this.connect(); }, delay);
  }

  /** Ends the session for good (sign-out). */
  async close() {
    this.stopped = true;
    removeEventListener('online', this.onOnline);
    removeEventListener('offline', this.onOffline);
    clearTimeout(this.retryTimer);
    clearInterval(this.keepalive);
    if (this.ws) {
      this.write(x('close', { xmlns: NS.FRAMING }));
      const ws = this.ws;
      this.ws = null;
      setTimeout(() => ws.close(), 200);
    }
    this.sm = null;
  }

  async onFrame(data) {
    this.lastHeard = Date.now();
    const el = parse(data);
    if (!el) return;
    const name = el.localName;
    const ns = el.namespaceURI;
    try {
      if (ns === NS.FRAMING) {
        if (name === 'close') this.drop();
        return;
      }
      if (name === 'features') return await this.onFeatures(el);
      if (ns === NS.SASL) return await this.onSasl(el);
      if (ns === NS.SM) return this.onSm(el);
      if (name === 'error' && ns === 'http://etherx.jabber.org/streams') {
        const cond = [...el.children].find((c) => c.namespaceURI === NS.STREAMS)?.localName;
        if (cond === 'conflict' || cond === 'not-authorized') this.fail(cond);
        return;
      }
      if (this.sm?.enabled) this.sm.inbound = (this.sm.inbound + 1) >>> 0;
      if (name === 'iq' && (el.getAttribute('type') === 'result' || el.getAttribute('type') === 'error')) {
        const pending = this.iqs.get(el.getAttribute('id'));
        if (pending) {
          this.iqs.delete(el.getAttribute('id'));
          clearTimeout(pending.timer);
          if (el.getAttribute('type') === 'result') pending.resolve(el);
          else pending.reject(Object.assign(new Error(errorCondition(el)), { condition: errorCondition(el) }));
          return;
        }
      }
      if (name === 'iq' && (el.getAttribute('type') === 'get' || el.getAttribute('type') === 'set')) {
        // RFC 6120 §8.2.3: an iq we do not understand gets an error.
        if (!this.dispatchIq(el)) {
          this.sendNow(x('iq', { type: 'error', id: el.getAttribute('id'), to: el.getAttribute('from') },
            x('error', { type: 'cancel' }, x('service-unavailable', { xmlns: NS.STANZAS }))));
        }
        return;
      }
      this.emit('stanza', { el });
    } catch (e) {
      console.warn('kith: handling a frame failed', e);
    }
  }

  dispatchIq(el) {
    const q = el.firstElementChild;
    if (q?.namespaceURI === NS.ROSTER && el.getAttribute('type') === 'set') {
      this.emit('stanza', { el });
      this.sendNow(x('iq', { type: 'result', id: el.getAttribute('id') }));
      return true;
    }
    if (q?.localName === 'ping') {
      this.sendNow(x('iq', { type: 'result', id: el.getAttribute('id'), to: el.getAttribute('from') }));
      return true;
    }
    return false;
  }

  async onFeatures(el) {
    if (this.step === 'open') {
      const mechs = [...(child(el, 'mechanisms', NS.SASL)?.children || [])].map((m) => m.textContent);
      if (!mechs.includes('SCRAM-SHA-256')) return this.fail('no SCRAM-SHA-256 offered');
      this.scram = new Scram(this.local, this.secret);
      this.step = 'sasl';
      this.write(x('auth', { xmlns: NS.SASL, mechanism: 'SCRAM-SHA-256' }, this.scram.initial()));
      return;
    }
    // After SASL: resume if we can, else bind a fresh session.
    this.csi = !!child(el, 'csi', NS.CSI);
    if (this.sm?.id && child(el, 'sm', NS.SM)) {
      this.step = 'resume';
      this.write(x('resume', { xmlns: NS.SM, h: this.sm.inbound, previd: this.sm.id }));
      return;
    }
    await this.bind(!!child(el, 'sm', NS.SM));
  }

  async onSasl(el) {
    if (el.localName === 'challenge') {
      this.write(x('response', { xmlns: NS.SASL }, await this.scram.challenge(el.textContent)));
    } else if (el.localName === 'success') {
      await this.scram.verify(el.textContent);
      this.secret = { keys: this.scram.keys };
      this.emit('credentials', { keys: this.scram.keys });
      this.step = 'bound';
      this.open();
    } else if (el.localName === 'failure') {
      const cond = el.firstElementChild?.localName || 'not-authorized';
      this.fail(cond === 'not-authorized' ? 'Wrong user name or password' : cond);
    }
  }

  async bind(smOffered) {
    this.step = 'bind';
    const lost = this.sm?.unacked || [];
    this.sm = null;
    this.failIqs('remote-server-timeout');
    if (lost.length) this.emit('unacked', { items: lost });
    const res = await this.iq(x('iq', { type: 'set' }, x('bind', { xmlns: NS.BIND }, x('resource', {}, this.resource))), true);
    this.fullJid = child(res, 'bind', NS.BIND)?.textContent || `${this.jid}/${this.resource}`;
    if (smOffered) {
      this.step = 'enable';
      this.write(x('enable', { xmlns: NS.SM, resume: 'true' }));
    } else {
      this.sessionReady(false);
    }
  }

  onSm(el) {
    switch (el.localName) {
      case 'enabled':
        this.sm = { id: el.getAttribute('resume') === 'true' || el.getAttribute('resume') === '1' ? el.getAttribute('id') : null,
          enabled: true, inbound: 0, outAcked: 0, unacked: [] };
        this.sessionReady(false);
        break;
      case 'resumed': {
        this.sm.enabled = true;
        this.handleAck(+el.getAttribute('h'));
        const again = this.sm.unacked;
        this.sm.unacked = [];
        this.attempt = 0;
        this.ready = true;
        this.setState('online');
        for (const item of again) this.sendNow(item.xml, item.id);
        if (again.length) this.write(x('r', { xmlns: NS.SM }));
        this.startKeepalive();
        this.emit('session', { resumed: true });
        break;
      }
      case 'failed':
        if (this.step === 'resume') this.bind(true).catch((e) => this.fail(e.message));
        else this.sessionReady(false); // enable refused: carry on without SM
        break;
      case 'r':
        this.write(x('a', { xmlns: NS.SM, h: this.sm?.inbound ?? 0 }));
        break;
      case 'a':
        this.handleAck(+el.getAttribute('h'));
        break;
      default:
    }
  }

  /** XEP-0198 §4: h counts handled stanzas modulo 2^32. */
  handleAck(h) {
    if (!this.sm || !Number.isFinite(h)) return;
    const count = ((h - this.sm.outAcked) >>> 0);
    if (count > this.sm.unacked.length) return; // a count beyond what we sent: ignore
    const done = this.sm.unacked.splice(0, count);
    this.sm.outAcked = h >>> 0;
    const ids = done.map((d) => d.id).filter(Boolean);
    if (ids.length) this.emit('acked', { ids });
    // The server counts a message only once it is durable, so an answer may
    // come before our latest message is counted: ask again shortly.
    if (this.sm.unacked.some((u) => u.id)) this.requestAck(300);
  }

  sessionReady(resumed) {
    this.attempt = 0;
    this.ready = true;
    this.setState('online');
    this.startKeepalive();
    this.emit('session', { resumed });
  }

  startKeepalive() {
    clearInterval(this.keepalive);
    this.lastHeard = Date.now();
    this.keepalive = setInterval(() => {
      if (!this.ws) return;
      const silent = Date.now() - this.lastHeard;
      if (silent > SILENCE_MS * 2) this.drop();
      else if (silent > SILENCE_MS) this.write(this.sm ? x('r', { xmlns: NS.SM }) : ' ');
    }, 10000);
  }

  fail(reason) {
    this.fatal = true;
    this.stopped = true;
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
    this.setState('failed', reason);
  }

  failIqs(condition) {
    for (const [id, p] of this.iqs) {
      clearTimeout(p.timer);
      p.reject(Object.assign(new Error(condition), { condition }));
      this.iqs.delete(id);
    }
  }

  /**
   * Sends a stanza now. Every stanza after <enabled/> is counted by the server
   * (XEP-0198 §4), answers to its iqs included, so each one joins the queue.
   * `trackId` reports its ack.
   */
  sendNow(el, trackId) {
    const xml = String(el);
    this.write(xml);
    if (this.sm?.enabled) this.sm.unacked.push({ xml, id: trackId });
  }

  send(el, trackId) {
    if (!this.ready) return false;
    this.sendNow(el, trackId);
    if (trackId && this.sm?.enabled) this.requestAck();
    return true;
  }

  /** XEP-0352: a nonza, not a stanza, so not counted by stream management. */
  setActive(active) {
    if (this.ready && this.csi) this.write(x(active ? 'active' : 'inactive', { xmlns: NS.CSI }));
  }

  requestAck(delay = 30) {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => { this.ackTimer = null; this.write(x('r', { xmlns: NS.SM })); }, delay);
  }

  /** Whether a tracked stanza is still waiting for the server's ack. */
  pending(id) { return !!this.sm?.unacked.some((u) => u.id === id); }

  /** Resolves when the session is (again) ready to send. */
  whenReady() {
    if (this.ready) return Promise.resolve();
    return new Promise((resolve) => this.addEventListener('session', () => resolve(), { once: true }));
  }

  /** An iq round trip: resolves with the result element, rejects with {condition}. */
  iq(el, duringBind = false) {
    const id = el.attrs.id || (el.attrs.id = uid());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.iqs.delete(id);
        reject(Object.assign(new Error('timeout'), { condition: 'remote-server-timeout' }));
      }, IQ_TIMEOUT_MS);
      this.iqs.set(id, { resolve, reject, timer });
      if (duringBind) this.write(el);
      else if (!this.send(el)) {
        clearTimeout(timer);
        this.iqs.delete(id);
        reject(Object.assign(new Error('offline'), { condition: 'remote-server-timeout' }));
      }
    });
  }
}
