"""Media and location messages: what a client composes after an upload, routed and
archived unchanged by the server.

- Stateless File Sharing (XEP-0447) with file metadata (XEP-0446), a XEP-0264
  thumbnail pointing at the server-made thumbnail, a BlurHash placeholder, and
  the plain `jabber:x:oob` URL (XEP-0066) for older clients.
- A location: XEP-0080 `<geoloc/>` plus a `geo:` URI body (RFC 5870).

Both are sent by one slixmpp client to another, then found intact in the
recipient's archive (XEP-0313).
"""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ET

from slixmpp.stanza import Message

from kithtest.media import UPLOAD_PLUGINS_EXTRA, https, image_bytes, upload, wait_meta
from kithtest.xmpp import DEFAULT_PLUGINS

PLUGINS = DEFAULT_PLUGINS + UPLOAD_PLUGINS_EXTRA + ("xep_0313",)
NS_CLIENT = "jabber:client"
NS_SFS = "urn:xmpp:sfs:0"
NS_FILE = "urn:xmpp:file:metadata:0"
NS_THUMBS = "urn:xmpp:thumbs:1"
NS_URL_DATA = "http://jabber.org/protocol/url-data"
NS_OOB = "jabber:x:oob"
NS_GEOLOC = "http://jabber.org/protocol/geoloc"
NS_MAM = "urn:xmpp:mam:2"


def sub(parent, ns, name, text=None, **attrs):
    el = ET.SubElement(parent, f"{{{ns}}}{name}", {k.replace("_", "-"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def file_sharing(meta: dict) -> ET.Element:
    """XEP-0447 §3 from the server's `?meta` document."""
    sfs = ET.Element(f"{{{NS_SFS}}}file-sharing", disposition="inline")
    f = sub(sfs, NS_FILE, "file")
    sub(f, NS_FILE, "media-type", meta["content_type"])
    sub(f, NS_FILE, "name", meta["name"])
    sub(f, NS_FILE, "size", str(meta["size"]))
    sub(f, NS_FILE, "width", str(meta["width"]))
    sub(f, NS_FILE, "height", str(meta["height"]))
    t = meta["thumbnail"]
    sub(f, NS_THUMBS, "thumbnail", uri=t["url"], media_type=t["media_type"],
        width=str(t["width"]), height=str(t["height"]))
    sub(f, NS_THUMBS, "thumbnail", uri="data:image/blurhash," + meta["blurhash"],
        media_type="image/blurhash", width=str(meta["width"]), height=str(meta["height"]))
    sources = sub(sfs, NS_SFS, "sources")
    sub(sources, NS_URL_DATA, "url-data", target=meta["url"])
    return sfs


async def mam_find(c, marker: str, timeout: float = 10) -> ET.Element:
    """The archived copy of the message whose body contains `marker`."""
    qid = secrets.token_hex(4)
    iq = c.Iq()
    iq["type"] = "set"
    ET.SubElement(iq.xml, f"{{{NS_MAM}}}query", queryid=qid)
    await iq.send(timeout=timeout)
    for st in c.received:
        if not isinstance(st, Message):
            continue
        result = st.xml.find(f"{{{NS_MAM}}}result")
        if result is None or result.get("queryid") != qid:
            continue
        msg = result.find("{urn:xmpp:forward:0}forwarded/{jabber:client}message")
        if msg is not None and marker in (msg.findtext(f"{{{NS_CLIENT}}}body") or ""):
            return msg
    raise AssertionError(f"no archived message with {marker!r}")


async def test_a_shared_photo_with_thumbnail_is_delivered_and_archived_intact(xmpp, server):
    alice_acct, bob_acct = await xmpp.account("sfsa"), await xmpp.account("sfsb")
    alice = await xmpp.connect(alice_acct, plugins=PLUGINS)
    bob = await xmpp.connect(bob_acct, plugins=PLUGINS)
    web = https(server)
    slot = await upload(alice, web, "beach.jpg", image_bytes("JPEG", (1024, 768)), "image/jpeg")
    meta = await asyncio.to_thread(wait_meta, web, slot.get_url)
    assert meta["status"] == "ready" and "thumbnail" in meta

    msg = alice.make_message(mto=bob_acct.jid, mbody=meta["url"], mtype="chat")
    msg.xml.append(file_sharing(meta))
    oob = ET.SubElement(msg.xml, f"{{{NS_OOB}}}x")
    sub(oob, NS_OOB, "url", meta["url"])
    msg.send()

    got = await bob.wait_message(lambda m: m.xml.find(f"{{{NS_SFS}}}file-sharing") is not None,
                                 what="file-sharing message")
    archived = await mam_find(bob, meta["url"])
    for copy in (got.xml, archived):
        f = copy.find(f"{{{NS_SFS}}}file-sharing/{{{NS_FILE}}}file")
        assert f.findtext(f"{{{NS_FILE}}}name") == "beach.jpg"
        assert f.findtext(f"{{{NS_FILE}}}size") == str(meta["size"])
        assert (f.findtext(f"{{{NS_FILE}}}width"), f.findtext(f"{{{NS_FILE}}}height")) == ("1024", "768")
        thumbs = f.findall(f"{{{NS_THUMBS}}}thumbnail")
        assert [t.get("uri") for t in thumbs] == [meta["thumbnail"]["url"],
                                                   "data:image/blurhash," + meta["blurhash"]]
        assert copy.find(f"{{{NS_SFS}}}file-sharing/{{{NS_SFS}}}sources/{{{NS_URL_DATA}}}url-data"
                         ).get("target") == meta["url"]
        assert copy.findtext(f"{{{NS_OOB}}}x/{{{NS_OOB}}}url") == meta["url"]
    # what the receiving client does next: fetch the thumbnail, then the file
    thumb = web.get(thumbs[0].get("uri"), timeout=10)
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"


async def test_a_location_is_delivered_and_archived_intact(xmpp):
    alice_acct, bob_acct = await xmpp.account("loca"), await xmpp.account("locb")
    alice = await xmpp.connect(alice_acct, plugins=PLUGINS)
    bob = await xmpp.connect(bob_acct, plugins=PLUGINS)
    body = "geo:52.516275,13.377704;u=35"
    msg = alice.make_message(mto=bob_acct.jid, mbody=body, mtype="chat")
    geo = ET.SubElement(msg.xml, f"{{{NS_GEOLOC}}}geoloc")
    for name, value in [("lat", "52.516275"), ("lon", "13.377704"), ("accuracy", "35"),
                        ("description", "Brandenburger Tor"),
                        ("timestamp", "2026-11-28T03:00:00Z")]:
        sub(geo, NS_GEOLOC, name, value)
    msg.send()

    got = await bob.wait_message(lambda m: m["body"] == body, what="location")
    archived = await mam_find(bob, body)
    for copy in (got.xml, archived):
        g = copy.find(f"{{{NS_GEOLOC}}}geoloc")
        assert g is not None
        assert g.findtext(f"{{{NS_GEOLOC}}}lat") == "52.516275"
        assert g.findtext(f"{{{NS_GEOLOC}}}lon") == "13.377704"
        assert g.findtext(f"{{{NS_GEOLOC}}}accuracy") == "35"
        assert g.findtext(f"{{{NS_GEOLOC}}}description") == "Brandenburger Tor"
