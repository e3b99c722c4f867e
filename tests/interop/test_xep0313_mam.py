"""XEP-0313 Message Archive Management (urn:xmpp:mam:2 with #extended), XEP-0059
result set paging, XEP-0431 full-text search and XEP-0441 preferences, over the
inbox log: messages two online users exchange are in both archives.

Queries go through slixmpp's own xep_0313 plugin where it has an API for them
(paging with its RSM iterator, `with`, the form, metadata), and as hand-built
IQs for what it does not (full-text field, before-id/after-id/ids, flip-page,
bad input), so every byte the server sees is known.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest
from slixmpp.exceptions import IqError
from slixmpp.stanza import Message

from kithtest.xmpp import DEFAULT_PLUGINS, NS_SID, iq_error_condition

NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_FULLTEXT = "urn:xmpp:fulltext:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_XDATA = "jabber:x:data"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_CLIENT = "jabber:client"
FULLTEXT_FIELD = "{urn:xmpp:fulltext:0}fulltext"

PLUGINS = DEFAULT_PLUGINS + ("xep_0313",)


# ---- helpers ------------------------------------------------------------------------

@dataclass
class Item:
    """One archived message as a result delivered it."""
    id: str
    body: str | None
    frm: str
    to: str
    stamp: str


@dataclass
class Page:
    items: list[Item]
    complete: bool
    first: str | None
    last: str | None
    count: int | None

    @property
    def bodies(self) -> list[str | None]:
        return [i.body for i in self.items]


def item_of(result: ET.Element) -> Item:
    fwd = result.find(f"{{{NS_FORWARD}}}forwarded")
    assert fwd is not None, "result without <forwarded/>"
    delay = fwd.find(f"{{{NS_DELAY}}}delay")
    msg = fwd.find(f"{{{NS_CLIENT}}}message")
    assert delay is not None and msg is not None, ET.tostring(result)
    return Item(
        id=result.get("id"),
        body=msg.findtext(f"{{{NS_CLIENT}}}body"),
        frm=msg.get("from", ""),
        to=msg.get("to", ""),
        stamp=delay.get("stamp"),
    )


async def mam_query(c, fields: dict | None = None, rsm: dict | None = None, *,
                    flip: bool = False, to: str | None = None, raw_form=None) -> Page:
    """An archive query built by hand; returns the page its results and <fin/> describe.

    `rsm` maps RSM element names to text (None = an empty element)."""
    qid = secrets.token_hex(6)
    iq = c.Iq()
    iq["type"] = "set"
    if to:
        iq["to"] = to
    query = ET.SubElement(iq.xml, f"{{{NS_MAM}}}query", queryid=qid)
    if raw_form is not None:
        query.append(raw_form)
    elif fields is not None:
        x = ET.SubElement(query, f"{{{NS_XDATA}}}x", type="submit")
        ft = ET.SubElement(x, f"{{{NS_XDATA}}}field", var="FORM_TYPE", type="hidden")
        ET.SubElement(ft, f"{{{NS_XDATA}}}value").text = NS_MAM
        for var, values in fields.items():
            field = ET.SubElement(x, f"{{{NS_XDATA}}}field", var=var)
            for value in ([values] if isinstance(values, str) else values):
                ET.SubElement(field, f"{{{NS_XDATA}}}value").text = value
    if rsm:
        s = ET.SubElement(query, f"{{{NS_RSM}}}set")
        for name, text in rsm.items():
            ET.SubElement(s, f"{{{NS_RSM}}}{name}").text = text
    if flip:
        ET.SubElement(query, f"{{{NS_MAM}}}flip-page")
    res = await iq.send(timeout=15)
    # Results arrive before the IQ result (§4.2), so they are all recorded now.
    results = []
    for st in c.received:
        if not isinstance(st, Message):
            continue
        r = st.xml.find(f"{{{NS_MAM}}}result")
        if r is not None and r.get("queryid") == qid:
            assert st["from"].full in ("", c.boundjid.bare), f"result from {st['from']}"
            results.append(item_of(r))
    fin = res.xml.find(f"{{{NS_MAM}}}fin")
    assert fin is not None, f"no <fin/> in {res}"
    rset = fin.find(f"{{{NS_RSM}}}set")
    count = rset.findtext(f"{{{NS_RSM}}}count") if rset is not None else None
    return Page(
        items=results,
        complete=fin.get("complete") in ("true", "1"),
        first=rset.findtext(f"{{{NS_RSM}}}first") if rset is not None else None,
        last=rset.findtext(f"{{{NS_RSM}}}last") if rset is not None else None,
        count=int(count) if count is not None else None,
    )


async def query_error(c, **kwargs) -> str | None:
    with pytest.raises(IqError) as err:
        await mam_query(c, **kwargs)
    return iq_error_condition(err.value)


async def connect(xmpp, account, resource: str | None = None):
    kwargs = {"plugins": PLUGINS}
    if resource is not None:
        kwargs["resource"] = resource
    return await xmpp.connect(account, **kwargs)


async def chat(sender, receiver, body: str) -> Message:
    """Sends a chat message to the receiver's bare JID and waits until it arrives."""
    sender.send_message(mto=receiver.boundjid.bare, mbody=body, mtype="chat")
    return await receiver.wait_message(lambda m: m["body"] == body, what=f"message {body!r}")


def archive_id(msg: Message, owner: str) -> str | None:
    for el in msg.xml.findall(f"{{{NS_SID}}}stanza-id"):
        if el.get("by") == owner:
            return el.get("id")
    return None


async def all_items(c, fields=None, max_: int = 3) -> list[Item]:
    """Pages forwards through a whole result set by hand."""
    got: list[Item] = []
    after = None
    for _ in range(100):
        rsm = {"max": str(max_)}
        if after:
            rsm["after"] = after
        page = await mam_query(c, fields if fields is not None else {}, rsm)
        got.extend(page.items)
        if page.complete:
            return got
        assert page.items, "an empty page that is not complete"
        after = page.last
    raise AssertionError("paging did not end")


async def conversation(xmpp):
    """alice and bob, both online, exchange ten messages."""
    alice_acct, bob_acct = await xmpp.account("mama"), await xmpp.account("mamb")
    alice = await connect(xmpp, alice_acct, "phone")
    bob = await connect(xmpp, bob_acct, "laptop")
    script = [
        (alice, bob, "Hello Bob 👋"),
        (bob, alice, "hi alice"),
        (alice, bob, "Are we meeting at the café?"),
        (bob, alice, "yes, at noon"),
        (alice, bob, "Привет из Москвы"),
        (alice, bob, "日本語のテキスト"),
        (bob, alice, "see you there"),
        (alice, bob, "bring the NEAR report"),
        (bob, alice, "it's in the \"shared\" folder"),
        (alice, bob, "great, thanks"),
    ]
    received = []
    for sender, receiver, body in script:
        received.append(await chat(sender, receiver, body))
    return alice_acct, bob_acct, alice, bob, [b for _, _, b in script], received


# ---- discovery and form -----------------------------------------------------------

async def test_account_advertises_mam_and_fulltext(xmpp):
    acct = await xmpp.account("mamdisco")
    c = await connect(xmpp, acct)
    info = await c.plugin["xep_0030"].get_info(jid=acct.jid, timeout=10)
    features = set(info["disco_info"]["features"])
    assert {NS_MAM, NS_MAM_EXTENDED, NS_FULLTEXT} <= features, features


async def test_query_form_lists_the_fields(xmpp):
    acct = await xmpp.account("mamform")
    c = await connect(xmpp, acct)
    form = await c.plugin["xep_0313"].get_fields(timeout=10)
    fields = form.get_fields()
    for var in ("FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids", FULLTEXT_FIELD):
        assert var in fields, f"{var} missing from {list(fields)}"
    assert fields["FORM_TYPE"]["value"] in (NS_MAM, [NS_MAM])
    assert fields["with"]["type"] == "jid-single"
    for var in fields:
        assert not fields[var]["required"], f"{var} is marked required (§4.1)"


# ---- the conversation in both archives ---------------------------------------------

async def test_two_users_page_through_their_archives(xmpp):
    alice_acct, bob_acct, alice, bob, bodies, received = await conversation(xmpp)

    # Each side pages forwards, three at a time, with slixmpp's RSM iterator.
    for c, peer in ((alice, bob_acct), (bob, alice_acct)):
        got = []
        async for msg in c.plugin["xep_0313"].iterate(with_jid=peer.jid, rsm={"max": 3}):
            got.append(msg["mam_result"]["forwarded"]["stanza"]["body"])
        assert got == bodies, f"{c.boundjid.bare} paged forwards: {got}"

    # ...and backwards from the newest page; slixmpp yields newest first.
    got = []
    async for msg in bob.plugin["xep_0313"].iterate(with_jid=alice_acct.jid, reverse=True, rsm={"max": 4}):
        got.append(msg["mam_result"]["forwarded"]["stanza"]["body"])
    assert got == list(reversed(bodies)), f"paged backwards: {got}"

    # The archive id of a received message is the stanza-id the server stamped for
    # its recipient (§3.5), and the result carries the original stanza and a stamp.
    bob_items = await all_items(bob)
    assert [i.body for i in bob_items] == bodies
    incoming = [m for m in received if m["to"].bare == bob_acct.jid]
    for msg in incoming:
        sid = archive_id(msg, bob_acct.jid)
        assert sid, "no stanza-id by the recipient"
        item = next(i for i in bob_items if i.body == msg["body"])
        assert item.id == sid
        assert item.frm.startswith(alice_acct.jid + "/")
        stamp = dt.datetime.fromisoformat(item.stamp.replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 300
    # Archive ids are unique within the archive.
    assert len({i.id for i in bob_items}) == len(bob_items)

    # The last page (empty <before/>), still oldest first, then the one before it.
    last = await mam_query(alice, {}, {"max": "4", "before": None})
    assert last.bodies == bodies[-4:]
    assert not last.complete
    assert last.count == len(bodies)
    assert (last.first, last.last) == (last.items[0].id, last.items[-1].id)
    prev = await mam_query(alice, {}, {"max": "4", "before": last.first})
    assert prev.bodies == bodies[2:6]
    first = await mam_query(alice, {}, {"max": "4", "before": prev.first})
    assert first.bodies == bodies[:2]
    assert first.complete

    # A flipped page holds the same items, newest first (§4.3.4).
    flipped = await mam_query(alice, {}, {"max": "4", "before": None}, flip=True)
    assert flipped.bodies == list(reversed(last.bodies))
    assert (flipped.first, flipped.last) == (last.first, last.last)


async def test_filter_by_with_and_time(xmpp):
    me, bob_acct, carol_acct = (await xmpp.account("mamw"), await xmpp.account("mamwb"),
                                await xmpp.account("mamwc"))
    a = await connect(xmpp, me)
    bob = await connect(xmpp, bob_acct, "desk")
    carol = await connect(xmpp, carol_acct, "pad")
    await chat(a, bob, "to bob 1")
    await chat(carol, a, "from carol 1")
    await chat(bob, a, "from bob 1")
    await chat(a, carol, "to carol 1")
    await chat(a, bob, "to bob 2")

    with_bob = await all_items(a, {"with": bob_acct.jid})
    assert [i.body for i in with_bob] == ["to bob 1", "from bob 1", "to bob 2"]
    # slixmpp's own `with` filter agrees.
    iq = await a.plugin["xep_0313"].retrieve(with_jid=carol_acct.jid, timeout=10)
    bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in iq["mam"]["results"]]
    assert bodies == ["from carol 1", "to carol 1"]
    # A full JID matches that resource only.
    page = await mam_query(a, {"with": f"{bob_acct.jid}/desk"}, {"max": "50"})
    assert page.bodies == ["from bob 1"]
    page = await mam_query(a, {"with": f"{bob_acct.jid}/elsewhere"}, {"max": "50"})
    assert page.bodies == [] and page.complete and page.count == 0

    now = dt.datetime.now(dt.timezone.utc)
    fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    later = await mam_query(a, {"start": fmt(now + dt.timedelta(hours=1))})
    assert later.items == [] and later.complete
    earlier = await mam_query(a, {"end": fmt(now - dt.timedelta(hours=1))})
    assert earlier.items == []
    window = await mam_query(a, {"start": fmt(now - dt.timedelta(hours=1)),
                                 "end": (now + dt.timedelta(hours=1)).isoformat()})
    assert len(window.items) == 5


async def test_ids_and_id_bounds(xmpp):
    alice_acct, bob_acct, alice, bob, bodies, received = await conversation(xmpp)
    everything = await all_items(alice, max_=50)
    ids = [i.id for i in everything]
    assert len(ids) == len(bodies)

    page = await mam_query(alice, {"ids": [ids[7], ids[2]]})
    assert page.bodies == [bodies[2], bodies[7]]

    page = await mam_query(alice, {"after-id": ids[1], "before-id": ids[6]}, {"max": "3"})
    assert page.bodies == bodies[2:5]
    assert page.count == 4 and not page.complete
    page = await mam_query(alice, {"after-id": ids[1], "before-id": ids[6]}, {"max": "3", "after": ids[4]})
    assert page.bodies == [bodies[5]] and page.complete


async def test_fulltext_search(xmpp):
    alice_acct, bob_acct, alice, bob, bodies, received = await conversation(xmpp)

    async def search(c, text: str, **fields) -> list[str | None]:
        page = await mam_query(c, {FULLTEXT_FIELD: text, **fields}, {"max": "50"})
        assert page.count == len(page.items)
        return page.bodies

    assert await search(alice, "café") == ["Are we meeting at the café?"]
    assert await search(bob, "CAFÉ meeting") == ["Are we meeting at the café?"]
    assert await search(alice, "привет") == ["Привет из Москвы"]
    assert await search(alice, "日本語のテキスト") == ["日本語のテキスト"]
    assert await search(alice, "see there") == ["see you there"]
    assert await search(alice, "noon") == ["yes, at noon"]
    assert await search(alice, "absent") == []
    # Combined with `with`.
    assert await search(bob, "noon", **{"with": alice_acct.jid}) == ["yes, at noon"]
    assert await search(bob, "noon", **{"with": "nobody@localhost"}) == []
    # Search syntax from users is plain text, never an error.
    assert await search(alice, "NEAR") == ["bring the NEAR report"]
    assert await search(alice, "\"shared\"") == ["it's in the \"shared\" folder"]
    assert await search(alice, "it's") == ["it's in the \"shared\" folder"]
    for hostile in ['"', "*", "'", "NEAR(", "a OR", "') OR 1=1 --", "body:x", "^", "(((", "\\"]:
        await search(alice, hostile)
    # An empty search filters nothing (XEP-0431 §2.2).
    assert await search(alice, "") == bodies


async def test_offline_messages_are_archived_and_found_from_a_new_device(xmpp):
    alice_acct, bob_acct = await xmpp.account("mamoa"), await xmpp.account("mamob")
    alice = await connect(xmpp, alice_acct)
    # bob's phone has logged in before; now nobody of bob's is online.
    phone = await connect(xmpp, bob_acct, "phone")
    await phone.close()
    for i in range(3):
        alice.send_message(mto=bob_acct.jid, mbody=f"while away {i}", mtype="chat")
    # The phone gets them as missed messages...
    phone = await connect(xmpp, bob_acct, "phone")
    for i in range(3):
        await phone.wait_message(lambda m, i=i: m["body"] == f"while away {i}")
    # (Logging out saves how far the phone got.)
    await phone.close()
    await asyncio.sleep(1.0)
    # ...a device that never logged in before does not, but finds them in the archive.
    tablet = await connect(xmpp, bob_acct, "tablet")
    await asyncio.sleep(0.5)
    assert not tablet.matching(lambda m: isinstance(m, Message) and (m["body"] or "").startswith("while away")
                               and m.xml.find(f"{{{NS_MAM}}}result") is None)
    page = await mam_query(tablet, {"with": alice_acct.jid}, {"max": "10"})
    assert page.bodies == [f"while away {i}" for i in range(3)]
    # And alice's archive has what she sent.
    page = await mam_query(alice, {"with": bob_acct.jid})
    assert page.bodies == [f"while away {i}" for i in range(3)]


async def test_metadata(xmpp):
    alice_acct, bob_acct, alice, bob, bodies, received = await conversation(xmpp)
    iq = await alice.plugin["xep_0313"].get_archive_metadata(timeout=10)
    md = iq.xml.find(f"{{{NS_MAM}}}metadata")
    start, end = md.find(f"{{{NS_MAM}}}start"), md.find(f"{{{NS_MAM}}}end")
    items = await all_items(alice, max_=50)
    assert start.get("id") == items[0].id and end.get("id") == items[-1].id
    assert start.get("timestamp") == items[0].stamp and end.get("timestamp") == items[-1].stamp

    empty_acct = await xmpp.account("mamempty")
    empty = await connect(xmpp, empty_acct)
    iq = await empty.plugin["xep_0313"].get_archive_metadata(timeout=10)
    md = iq.xml.find(f"{{{NS_MAM}}}metadata")
    assert md is not None and len(list(md)) == 0


# ---- errors -------------------------------------------------------------------------

async def test_unknown_ids_get_item_not_found(xmpp):
    alice_acct, bob_acct, alice, bob, bodies, received = await conversation(xmpp)
    bogus = "no-such-id-" + secrets.token_hex(4)
    assert await query_error(alice, fields={}, rsm={"max": "5", "after": bogus}) == "item-not-found"
    assert await query_error(alice, fields={}, rsm={"max": "5", "before": bogus}) == "item-not-found"
    assert await query_error(alice, fields={"after-id": bogus}) == "item-not-found"
    assert await query_error(alice, fields={"before-id": bogus}) == "item-not-found"
    assert await query_error(alice, fields={"ids": [bogus]}) == "item-not-found"
    # One archive's ids mean nothing in another's.
    bob_items = await all_items(bob, max_=50)
    assert await query_error(alice, fields={}, rsm={"after": bob_items[0].id}) == "item-not-found"


async def test_bad_queries_are_refused(xmpp):
    me, other = await xmpp.account("mambad"), await xmpp.account("mamother")
    a = await connect(xmpp, me)
    b = await connect(xmpp, other)
    await chat(b, a, "one message")
    cases = [
        ({"fields": {"start": "yesterday"}}, "bad-request"),
        ({"fields": {"end": "2024-02-30T00:00:00Z"}}, "bad-request"),
        ({"fields": {"with": "@@bad@@"}}, "bad-request"),
        ({"fields": {"with": ["a@localhost", "b@localhost"]}}, "bad-request"),
        ({"fields": {"x-unknown-field": "1"}}, "feature-not-implemented"),
        ({"fields": {}, "rsm": {"max": "-1"}}, "bad-request"),
        ({"fields": {}, "rsm": {"max": "many"}}, "bad-request"),
        ({"fields": {}, "rsm": {"after": "x", "before": "y"}}, "bad-request"),
        ({"raw_form": ET.Element(f"{{{NS_XDATA}}}x", type="cancel")}, "bad-request"),
    ]
    for kwargs, expected in cases:
        assert await query_error(a, **kwargs) == expected, kwargs
    # A wrong FORM_TYPE.
    x = ET.Element(f"{{{NS_XDATA}}}x", type="submit")
    ft = ET.SubElement(x, f"{{{NS_XDATA}}}field", var="FORM_TYPE")
    ET.SubElement(ft, f"{{{NS_XDATA}}}value").text = "urn:xmpp:mam:1"
    assert await query_error(a, raw_form=x) == "bad-request"
    # A huge max is capped, not refused.
    page = await mam_query(a, {}, {"max": "1000000000000000000000"})
    assert page.bodies == ["one message"] and page.complete
    # Someone else's archive is forbidden (§8.1), the server has none.
    assert await query_error(a, fields={}, to=other.jid) == "forbidden"
    assert await query_error(a, fields={}, to="localhost") == "service-unavailable"
    # The session survived all of it.
    page = await mam_query(a, {})
    assert page.bodies == ["one message"]


# ---- preferences (XEP-0441) -------------------------------------------------------

async def test_preferences_round_trip(xmpp):
    acct = await xmpp.account("mamprefs")
    c = await connect(xmpp, acct)

    async def prefs(kind: str, payload: ET.Element | None = None) -> ET.Element:
        iq = c.Iq()
        iq["type"] = kind
        iq.xml.append(payload if payload is not None else ET.Element(f"{{{NS_MAM}}}prefs"))
        res = await iq.send(timeout=10)
        return res.xml.find(f"{{{NS_MAM}}}prefs")

    def jids(p: ET.Element, name: str) -> list[str]:
        holder = p.find(f"{{{NS_MAM}}}{name}")
        assert holder is not None, f"<{name}/> missing (XEP-0441 §2.1)"
        return [j.text for j in holder.findall(f"{{{NS_MAM}}}jid")]

    got = await prefs("get")
    assert got.get("default") == "always"
    assert jids(got, "always") == [] and jids(got, "never") == []

    new = ET.Element(f"{{{NS_MAM}}}prefs", default="roster")
    always = ET.SubElement(new, f"{{{NS_MAM}}}always")
    ET.SubElement(always, f"{{{NS_MAM}}}jid").text = "romeo@montague.lit"
    never = ET.SubElement(new, f"{{{NS_MAM}}}never")
    ET.SubElement(never, f"{{{NS_MAM}}}jid").text = "montague@montague.lit"
    applied = await prefs("set", new)
    assert applied.get("default") == "roster"
    got = await prefs("get")
    assert got.get("default") == "roster"
    assert jids(got, "always") == ["romeo@montague.lit"]
    assert jids(got, "never") == ["montague@montague.lit"]

    with pytest.raises(IqError) as err:
        await prefs("set", ET.Element(f"{{{NS_MAM}}}prefs", default="sometimes"))
    assert iq_error_condition(err.value) == "bad-request"
